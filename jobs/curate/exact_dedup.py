"""Curate step `exact_dedup`: the filters' survivors grouped by prompt_id = hash(normalized text); the
representative is the smallest (source, source_id, turn), the others -> duplicate_of:<prompt_id>."""

from __future__ import annotations

from dataclasses import replace

from pyspark.sql import Window
from pyspark.sql import functions as F

from instructlake.jobs.curate.common import KEY, RAW, Steps, detail, histogram, rejects
from instructlake.jobs.curate.state import Curation, ExactDedupOutput
from instructlake.jobs.runs import Context


def run(ctx: Context, steps: Steps, state: Curation) -> Curation:
    """Releases the filters' `annotated`, the persisted DataFrame under their `rows`."""
    cap = ctx.conf.curate.dedup.max_source_ids
    filtered = state.filters
    with steps.step("exact_dedup", state.read.rows - filtered.rejected_rows):
        survivors = filtered.rows.where(F.col("reason").isNull()).drop("reason", "template_count")
        order = Window.partitionBy("prompt_id").orderBy(*KEY)
        ranked, _ = steps.keep(survivors.withColumn("_rn", F.row_number().over(order)))
        steps.release(filtered.annotated)
        # The texts stay top-level columns: the in-memory cache reads columns, not struct fields, so the
        # langid and near-dedup steps read the text without decoding the rest of the representative.
        rep = F.struct(*[c for c in RAW if c != "text"], "n_chars", "template_id")
        groups, n_groups = steps.keep(
            ranked.groupBy("prompt_id")
            .agg(
                F.count("*").cast("int").alias("dup_count"),
                F.min_by(F.struct(F.coalesce("norm_text", "text").alias("text"), F.col("text").alias("raw"), rep.alias("rep")), F.col("_rn")).alias("r"),
                F.slice(F.sort_array(F.collect_list(F.struct(*KEY))), 1, cap).alias("members"),
                F.array_sort(F.array_distinct(F.flatten(F.collect_list("flags")))).alias("flags"),
                F.bool_or(F.coalesce("moderation_flagged", F.lit(False))).alias("moderation_flagged"),
                F.bool_or(F.coalesce("redacted", F.lit(False))).alias("redacted"),
            )
            .select(
                "prompt_id",
                F.col("r.text").alias("text"),
                F.when(F.col("r.raw") != F.col("r.text"), F.col("r.raw")).alias("raw_text"),
                F.col("r.rep").alias("rep"),
                *["dup_count", "members", "flags", "moderation_flagged", "redacted"],
            )
        )
        dups, n_dups = steps.keep(
            rejects(
                ranked.where(F.col("_rn") > 1),
                F.concat(F.lit("duplicate_of:"), "prompt_id"),
                detail(prompt_id=F.col("prompt_id")),
            ),
            cut=True,
        )
        steps.release(ranked)
    multi = groups.where(F.col("dup_count") > 1)
    agg = multi.agg(F.count("*"), F.max("dup_count")).first()
    stats = {
        "distinct_prompts": n_groups,
        "duplicate_groups": agg[0],
        "duplicates": n_dups,
        "largest_group": agg[1] or 1,
        "group_sizes": histogram(multi.select(F.col("dup_count").alias("size"))),
    }
    return replace(state, exact_dedup=ExactDedupOutput(groups=groups, duplicates=dups, distinct_prompts=n_groups, stats=stats))
