"""Curate step `langid`: fastText on each distinct prompt (a narrow projection: id, text, language);
languages outside curate.langid.langs or `und` rejected, and with curate.decontaminate.action drop, the
decontaminate step's hits."""

from __future__ import annotations

from dataclasses import replace

import pandas as pd
from pyspark.sql import functions as F

from instructlake.jobs.curate.common import Steps, lang_options
from instructlake.jobs.curate.state import Curation, LangidOutput
from instructlake.jobs.runs import Context
from instructlake.udfs import curate as U


def run(ctx: Context, steps: Steps, state: Curation) -> Curation:
    """The wide rows of the exact_dedup groups are not copied: the assemble step joins them back once, with
    every step's outcome."""
    opts = lang_options(ctx.conf.curate)
    deduped, hits = state.exact_dedup, state.decontaminate.hits

    @F.pandas_udf(U.LANG_DDL)  # type: ignore[call-overload]
    def languages(text: pd.Series) -> pd.DataFrame:
        return U.languages(text, opts)

    with steps.step("langid", deduped.distinct_prompts):
        langs = deduped.groups.select("prompt_id", "text", "dup_count", languages("text").alias("l")).select("prompt_id", "text", "dup_count", "l.*")
        if hits is None:
            langs = langs.withColumn("contaminated", F.lit(None).cast("string")).withColumn("cross_lingual", F.lit(False))
        else:
            langs = langs.join(F.broadcast(hits), "prompt_id", "left")
            if ctx.conf.curate.decontaminate.action == "drop":  # contamination names the outcome before a language reason: it is what a reader must know
                langs = langs.withColumn("lang_reason", F.coalesce("contaminated", "lang_reason"))
        # node: a long id for the near-dedup shuffles (a prompt_id is 32 characters); fixed by the persist.
        langs, _ = steps.keep(langs.withColumn("node", F.monotonically_increasing_id()))
        counts = langs.groupBy("lang", F.col("lang_reason").isNotNull().alias("rejected")).count().collect()
    detected: dict[str, int] = {}
    for r in counts:
        detected[r["lang"]] = detected.get(r["lang"], 0) + r["count"]
    n_rejected = sum(r["count"] for r in counts if r["rejected"])
    return replace(state, langid=LangidOutput(prompts=langs, rejected_prompts=n_rejected, stats={"detected": dict(sorted(detected.items()))}))
