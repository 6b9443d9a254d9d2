"""Curate step `assemble`: one join of the wide per-prompt rows (cached once, by exact_dedup) with the
langid and near-dedup outcomes -> kept prompts and rejected representatives."""

from __future__ import annotations

from dataclasses import replace

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from instructlake.jobs.curate.common import Steps, detail, rejects
from instructlake.jobs.curate.state import AssembleOutput, Curation
from instructlake.jobs.runs import Context


def run(ctx: Context, steps: Steps, state: Curation) -> Curation:
    """Both outputs are checkpointed."""
    deduped = state.exact_dedup
    with steps.step("assemble", deduped.distinct_prompts):
        langs = state.langid.prompts.drop("text", "dup_count", "node", "cross_lingual")
        outcome = deduped.groups.join(langs, "prompt_id").join(state.near_dedup.clusters, "prompt_id", "left")
        selected = F.col("lang_reason").isNull()
        outcome = outcome.withColumn("cluster_id", F.when(selected, F.coalesce("cluster_id", "prompt_id"))).withColumn(
            "cluster_size", F.when(selected, F.coalesce("cluster_size", F.lit(1)))
        )
        outcome, _ = steps.keep(outcome)
        kept, n_kept = steps.keep(_prompts(outcome.where(F.col("cluster_id") == F.col("prompt_id")), ctx.run_id), cut=True)
        removed = ~selected | (F.col("cluster_id") != F.col("prompt_id"))
        reps = outcome.where(removed).select(
            "rep.*", F.coalesce("raw_text", "text").alias("text"), "prompt_id", "lang", "lang_score", "lang_reason", "cluster_id", "cluster_size"
        )
        rejected, _ = steps.keep(
            rejects(
                reps,
                F.coalesce("lang_reason", F.concat(F.lit("near_duplicate_of:"), "cluster_id")),
                F.when(
                    F.col("lang_reason").isNotNull(),
                    detail(prompt_id=F.col("prompt_id"), lang=F.col("lang"), lang_score=F.col("lang_score"), source_lang=F.col("source_lang")),
                ).otherwise(
                    detail(prompt_id=F.col("prompt_id"), cluster_id=F.col("cluster_id"), cluster_size=F.col("cluster_size"))
                ),
            ),
            cut=True,
        )
        steps.release(outcome)
    return replace(state, assemble=AssembleOutput(prompts=kept, kept=n_kept, rejected=rejected))


def _prompts(kept: DataFrame, run_id: str) -> DataFrame:
    return kept.select(
        "prompt_id",
        "text",
        "lang",
        F.col("lang_score").cast("float").alias("lang_score"),
        "lang2",
        F.col("lang2_score").cast("float").alias("lang2_score"),
        F.col("rep.source_lang").alias("source_lang"),
        F.col("rep.n_chars").alias("n_chars"),
        "dup_count",
        "cluster_id",
        "cluster_size",
        F.col("members.source").alias("sources"),
        F.col("members.source_id").alias("source_ids"),
        F.col("members.turn").alias("turns"),
        F.col("rep.template_id").alias("template_id"),
        # decontaminate.action flag: the benchmark item is named in the flags (drop: the prompt is not kept).
        F.when(F.col("contaminated").isNotNull(), F.concat("flags", F.array("contaminated"))).otherwise(F.col("flags")).alias("flags"),
        "moderation_flagged",
        "redacted",
        F.lit(run_id).alias("run_id"),
        F.current_timestamp().alias("created_at"),
    )
