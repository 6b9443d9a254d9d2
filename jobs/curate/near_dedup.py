"""Curate step `near_dedup`: MinHash-LSH candidates, verified pairs, connected components (jobs.dedup) over
the prompts langid selected; the member with the largest dup_count (then the smallest prompt_id)
represents its cluster, and names it."""

from __future__ import annotations

from dataclasses import replace

import pandas as pd
from pyspark.sql import Window
from pyspark.sql import functions as F

from instructlake.jobs.curate.common import Steps, bands_rows, histogram, near_options
from instructlake.jobs.curate.state import Curation, NearDedupOutput
from instructlake.jobs.dedup import candidate_pairs, connected_components, local_checkpoint, shared_buckets
from instructlake.jobs.runs import Context
from instructlake.udfs import curate as U
from instructlake.udfs.minhash import minhash_batch


def run(ctx: Context, steps: Steps, state: Curation) -> Curation:
    n = ctx.conf.curate.near_dedup
    none = ctx.spark.createDataFrame([], "prompt_id string, cluster_id string, cluster_size int")
    if not n.enabled:
        return replace(state, near_dedup=NearDedupOutput(clusters=none, stats={"enabled": False}))
    bands, rows = bands_rows(ctx.conf.curate)
    lsh = {"ngram": n.ngram, "char_ngram": n.char_ngram, "mode": n.shingle_mode, "char_bands": n.char_bands, "char_rows": n.char_rows}
    near = near_options(ctx.conf.curate)
    checkpoint = local_checkpoint
    if n.checkpoint_dir:
        ctx.spark.sparkContext.setCheckpointDir(n.checkpoint_dir)
        checkpoint = lambda df: df.checkpoint(eager=True)  # noqa: E731
    stats: dict = {
        "enabled": True, "bands": bands, "rows": rows, "char_bands": n.char_bands, "char_rows": n.char_rows,
        "char_min_bands": n.char_min_bands,
        "threshold": n.threshold, "verify": n.verify,
    }  # fmt: skip
    nodes = state.langid.prompts.where(F.col("lang_reason").isNull())

    with steps.step("near_dedup", state.exact_dedup.distinct_prompts - state.langid.rejected_prompts):
        params = {"bands": bands, "rows": rows, "num_perm": n.num_perm, "seed": n.seed, **lsh, "id_col": "node"}
        if n.verify == "signature":
            sig_ddl = "node bigint, signature array<int>, band_keys array<bigint>"
            sigs, _ = steps.keep(
                nodes.select("node", "text").mapInPandas(lambda it: (minhash_batch(b, **params) for b in it), sig_ddl)
            )
            band_rows = sigs.select("node", F.posexplode("band_keys").alias("band", "band_key"))
            payload = sigs.select("node", F.col("signature").alias("value"))
        else:
            band_ddl = "node bigint, band int, band_key bigint"
            band_rows = nodes.select("node", "text").mapInPandas(
                lambda it: (minhash_batch(b, explode=True, **params) for b in it), band_ddl
            )
            payload = nodes.select("node", F.col("text").alias("value"))
        shared, _ = steps.keep(shared_buckets(band_rows), cut=True)
        pairs, n_pairs = steps.keep(candidate_pairs(shared, n.max_bucket_pairs, n.char_min_bands), cut=True)

        if n.verify == "signature":

            @F.pandas_udf("boolean")  # type: ignore[call-overload]
            def similar(x: pd.Series, y: pd.Series) -> pd.Series:
                return U.signature_similarity(x, y) >= near.threshold

        else:

            @F.pandas_udf("boolean")  # type: ignore[call-overload]
            def similar(x: pd.Series, y: pd.Series) -> pd.Series:
                return U.near_duplicates(x, y, near)

        a = payload.select(F.col("node").alias("a"), F.col("value").alias("va"))
        b = payload.select(F.col("node").alias("b"), F.col("value").alias("vb"))
        scored = pairs.join(a, "a").join(b, "b").select("a", "b", similar("va", "vb").alias("near"))
        edges, n_edges = steps.keep(scored.where("near").select("a", "b"), cut=True)
        stats.update(candidate_pairs=n_pairs, verified_pairs=n_edges, rounds=0)
        clusters, n_clustered = none, 0
        if n_edges:
            labels, stats["rounds"] = connected_components(edges, max_iterations=n.max_iterations, checkpoint=checkpoint)
            # Representative: most raw copies, then the smallest prompt_id; its id names the cluster.
            members = labels.join(nodes.select("node", "prompt_id", "dup_count"), "node")
            best = Window.partitionBy("component").orderBy(F.desc("dup_count"), "prompt_id")
            clusters, n_clustered = steps.keep(
                members.select(
                    "prompt_id",
                    F.first("prompt_id").over(best.rowsBetween(Window.unboundedPreceding, Window.unboundedFollowing)).alias("cluster_id"),
                    F.count("*").over(Window.partitionBy("component")).cast("int").alias("cluster_size"),
                ),
                cut=True,
            )
    sizes = clusters.where(F.col("cluster_id") == F.col("prompt_id")).select(F.col("cluster_size").alias("size"))
    agg = sizes.agg(F.count("*"), F.max("size")).first()
    capped = shared.where((F.col("rank") == 1) & (F.col("size") > n.max_bucket_pairs + 1)).count()
    stats.update(
        clusters=agg[0], clustered_prompts=n_clustered, largest_cluster=agg[1] or 1, removed=n_clustered - agg[0],
        capped_buckets=capped, cluster_sizes=histogram(sizes),
    )  # fmt: skip
    return replace(state, near_dedup=NearDedupOutput(clusters=clusters, stats=stats))
