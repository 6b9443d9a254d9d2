"""Curate step `filters`: row filters (empty, length, tokens, moderation, PII) in one pandas UDF, then
template skeletons counted across the table (more than max_count distinct prompts: a template)."""

from __future__ import annotations

from dataclasses import replace

import pandas as pd
from pyspark.sql import functions as F

from instructlake.jobs.curate.common import RAW, Steps, detail, filter_options, rejects
from instructlake.jobs.curate.state import Curation, FiltersOutput
from instructlake.jobs.runs import Context
from instructlake.udfs import curate as U


def run(ctx: Context, steps: Steps, state: Curation) -> Curation:
    """Releases the read step's `raw`."""
    c = ctx.conf.curate
    opts = filter_options(c)
    raw = state.read.raw

    @F.pandas_udf(U.ANNOTATE_DDL)  # type: ignore[call-overload]
    def annotate(text: pd.Series, moderation: pd.Series, redacted: pd.Series) -> pd.DataFrame:
        return U.annotate(pd.DataFrame({"text": text, "moderation_flagged": moderation, "redacted": redacted}), opts)

    stats: dict = {}
    with steps.step("filters", state.read.rows):
        ann, _ = steps.keep(
            raw.select(*RAW, annotate("text", "moderation_flagged", "redacted").alias("a")).select(
                *RAW, "a.*", F.lit(None).cast("long").alias("template_count")
            )
        )
        steps.release(raw)
        t = c.filters.template
        rows = ann
        if t.action != "off":
            # Distinct prompts per skeleton, over every non-empty row: exact copies do not make a template.
            per_template, stats["templates"] = steps.keep(
                ann.where(F.col("template_id").isNotNull())
                .select("template_id", "prompt_id")
                .distinct()
                .groupBy("template_id")
                .agg(F.count("*").alias("template_count"))
                .where(F.col("template_count") > t.max_count),
                cut=True,
            )
            is_template = F.col("template_count").isNotNull()
            if t.action == "drop":
                reason = F.coalesce("reason", F.when(is_template, F.concat(F.lit("template:"), "template_id")))
                flags = F.col("flags")
            else:
                reason = F.col("reason")
                flags = F.when(is_template, F.array_union("flags", F.array(F.lit("template")))).otherwise(F.col("flags"))
            # Not persisted: a broadcast join over the cached rows costs less than caching them twice.
            rows = ann.drop("template_count").join(F.broadcast(per_template), "template_id", "left").select(
                *RAW,
                "prompt_id",
                "norm_text",
                "n_chars",
                reason.alias("reason"),
                flags.alias("flags"),
                F.when(is_template, F.col("template_id")).alias("template_id"),
                "template_count",
            )
        rejected, n_rejected = steps.keep(
            rejects(
                rows.where(F.col("reason").isNotNull()),
                F.col("reason"),
                detail(prompt_id=F.col("prompt_id"), n_chars=F.col("n_chars"), template_count=F.col("template_count")),
            ),
            cut=True,
        )
    return replace(state, filters=FiltersOutput(rows=rows, annotated=ann, rejected=rejected, rejected_rows=n_rejected, stats=stats))
