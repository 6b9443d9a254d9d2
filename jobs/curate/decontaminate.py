"""Curate step `decontaminate`: distinct prompts (and their translations) containing a benchmark item ->
contaminated:<benchmark>:<item id> (udfs.decontam; only with curate.decontaminate.benchmarks). The langid
step joins the hits to its rows and, with action drop, rejects them."""

from __future__ import annotations

from dataclasses import replace

import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from instructlake.jobs.curate.common import Steps
from instructlake.jobs.curate.state import Curation, DecontaminateOutput
from instructlake.jobs.runs import Context
from instructlake.udfs import decontam


def benchmark_index(ctx: Context) -> tuple[decontam.Index, dict[str, int]]:
    """The decontamination index of curate.decontaminate.benchmarks (read with Spark, so any filesystem
    Spark reads works; benchmarks are small and collected to the driver) and the items per benchmark."""
    d = ctx.conf.curate.decontaminate
    index = decontam.Index(
        d.ngram, d.char_ngram, d.min_ngrams, d.near_max_tokens, d.near_containment, d.char_near_containment, d.max_postings
    )
    items: dict[str, int] = {}
    for b in d.benchmarks:
        reader = ctx.spark.read.parquet if b.format == "parquet" else ctx.spark.read.json
        df = reader(b.path)
        missing = [f for f in (b.id_field, b.text_field) if f not in df.columns]
        if missing:
            raise ValueError(f"curate.decontaminate.benchmarks {b.name!r}: {b.path!r} has no field(s) {missing} (id_field, text_field)")
        # Distinct items (a file of answers, Rakuda's, repeats each question once per model), in id order:
        # a prompt containing two items is attributed to the first loaded, the same one on every run.
        rows = df.select(F.col(b.id_field).cast("string").alias("id"), F.col(b.text_field).cast("string").alias("text")).distinct().orderBy("id", "text").collect()
        for r in rows:
            index.add(b.name, r["id"], r["text"] or "")
        items[b.name] = len(rows)
    return index, items


def _contamination(ctx: Context, groups: DataFrame) -> tuple[DataFrame, dict]:
    """(prompt_id, contaminated: contaminated:<benchmark>:<item id>, cross_lingual) of every distinct prompt
    that contains a benchmark item, itself or in one of its translations; stats."""
    d = ctx.conf.curate.decontaminate
    index, items = benchmark_index(ctx)

    @F.pandas_udf("string")  # type: ignore[call-overload]
    def contaminated(text: pd.Series) -> pd.Series:
        return decontam.contamination(text, index)

    hits = groups.select("prompt_id", contaminated("text").alias("contaminated"), F.lit(False).alias("cross_lingual"))
    if d.translations and ctx.store.exists("translations"):
        translated = ctx.store.read("translations").where(F.col("text").isNotNull()).select("prompt_id", contaminated("text").alias("hit"))
        # A prompt's own text decides first; its translations only where the text itself is clean.
        cross = translated.where(F.col("hit").isNotNull()).groupBy("prompt_id").agg(F.min("hit").alias("hit"))
        hits = hits.join(cross, "prompt_id", "left").select(
            "prompt_id", F.coalesce("contaminated", "hit").alias("contaminated"), (F.col("contaminated").isNull() & F.col("hit").isNotNull()).alias("cross_lingual")
        )  # fmt: skip
    return hits.where(F.col("contaminated").isNotNull()), {"enabled": True, "action": d.action, "items": items}


def run(ctx: Context, steps: Steps, state: Curation) -> Curation:
    d = ctx.conf.curate.decontaminate
    if d.action == "off" or not d.benchmarks:
        return replace(state, decontaminate=DecontaminateOutput(hits=None, stats={"enabled": False}))
    deduped = state.exact_dedup
    with steps.step("decontaminate", deduped.distinct_prompts):
        hits, stats = _contamination(ctx, deduped.groups)
        hits, _ = steps.keep(hits, cut=True)
        found = hits.groupBy(F.regexp_extract("contaminated", r"^contaminated:([^:]+):", 1).alias("benchmark"), "cross_lingual").count().collect()
    stats["prompts"] = {b: sum(r["count"] for r in found if r["benchmark"] == b) for b in stats["items"]}
    stats["cross_lingual"] = sum(r["count"] for r in found if r["cross_lingual"])
    return replace(state, decontaminate=DecontaminateOutput(hits=hits, stats=stats))
