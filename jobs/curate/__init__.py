"""Curate: `prompts_raw` -> `prompts` (one row per kept distinct prompt) + `prompts_rejected` (every
removed raw row with its reason). Nothing is removed silently and the driver collects only aggregates.

Steps, each materialized once and timed (stats["steps"], seconds; stats["step_rows"], rows in). read and
write are run() below; every other step is the module of its name in this package, with one signature,
`run(ctx, steps, state) -> state`: `state` (state.Curation) holds the output of each step run so far, one
frozen dataclass per step, and the step returns it with its own output added; `steps` (common.Steps)
times the step and persists or releases its DataFrames.
  read           prompts_raw (one pinned snapshot), spread over curate.partitions tasks
  filters        row filters (empty, length, tokens, moderation, PII) in one pandas UDF, then template
                 skeletons counted across the table (more than max_count distinct prompts: a template)
  exact_dedup    group by prompt_id = hash(normalized text); representative = smallest (source,
                 source_id, turn); the others -> duplicate_of:<prompt_id>
  decontaminate  distinct prompts (and their translations) containing a benchmark item ->
                 contaminated:<benchmark>:<item id> (udfs.decontam; only with curate.decontaminate.benchmarks)
  langid         fastText on each distinct prompt (a narrow projection: id, text, language); languages
                 outside curate.langid.langs or `und` rejected
  near_dedup     MinHash-LSH candidates, verified pairs, connected components (jobs.dedup); the member with
                 the largest dup_count (then the smallest prompt_id) represents its cluster; the others ->
                 near_duplicate_of:<cluster_id>
  assemble       one join of the wide per-prompt rows with the langid and near-dedup outcomes -> kept
                 prompts and rejected representatives (the wide rows are cached once, by exact_dedup)
  write          upsert both tables on their keys and delete what an earlier run wrote that no longer
                 holds

Every outcome is a function of prompts_raw, the config (benchmark files included) and, with
curate.decontaminate.translations, the translations table, so a re-run writes nothing and a run on a
grown prompts_raw leaves the tables exactly as a first run on it would (representatives may move, and
rows that an earlier run kept or rejected are updated or removed accordingly).
"""

from __future__ import annotations

import time

from pyspark.sql import functions as F

from instructlake.jobs.curate import assemble, decontaminate, exact_dedup, filters, langid, near_dedup
from instructlake.jobs.curate.common import KEY, RAW, STAGE, Steps
from instructlake.jobs.curate.state import Curation, ReadOutput
from instructlake.jobs.runs import Context, StageResult
from instructlake.udfs import curate as U

# Each step persists its main output (released as soon as the next step has materialized its own) and
# checkpoints its rejects (`cut`), which are small and feed the final write.
PIPELINE = (filters, exact_dedup, decontaminate, langid, near_dedup, assemble)


def run(ctx: Context) -> StageResult:
    c, store = ctx.conf.curate, ctx.store
    steps = Steps()
    stats: dict = {}
    try:
        start = time.perf_counter()
        raw, n_raw = steps.keep(store.read("prompts_raw").select(*RAW).repartition(c.partitions or ctx.conf.spark.shuffle_partitions))
        steps.record("read", time.perf_counter() - start, n_raw)
        state = Curation(read=ReadOutput(raw=raw, rows=n_raw))
        for step in PIPELINE:
            state = step.run(ctx, steps, state)
        stats.update(
            filters=state.filters.stats, exact_dedup=state.exact_dedup.stats, decontaminate=state.decontaminate.stats,
            langs=state.langid.stats, near_dedup=state.near_dedup.stats,
        )  # fmt: skip
        prompts, n_kept = state.assemble.prompts, state.assemble.kept

        with steps.step("write", n_raw):
            steps.release_all()
            rejected = state.filters.rejected.unionByName(state.exact_dedup.duplicates).unionByName(state.assemble.rejected)
            rejected = rejected.withColumn("run_id", F.lit(ctx.run_id)).withColumn("created_at", F.current_timestamp())
            rejected, n_rejected = steps.keep(rejected.coalesce(ctx.conf.spark.shuffle_partitions), cut=True)
            if n_raw != n_kept + n_rejected:  # every raw row has exactly one outcome; anything else is a bug
                raise AssertionError(f"curate lost rows: {n_raw} in, {n_kept} kept + {n_rejected} rejected")
            written = {
                "prompts": store.merge(prompts, "prompts", run_id=ctx.run_id, stage=STAGE),
                "prompts_rejected": store.merge(rejected, "prompts_rejected", run_id=ctx.run_id, stage=STAGE),
            }
            # What an earlier run kept or rejected and this one does not: representatives that moved, prompts
            # that became templates or near duplicates on a grown table, a changed config.
            stale_prompts = store.read("prompts").select("prompt_id").join(prompts, "prompt_id", "left_anti")
            stale_rejects = (
                store.read("prompts_rejected").where(F.col("stage") == STAGE).select(*KEY).join(rejected, KEY, "left_anti")
            )
            deleted = {
                "prompts": store.delete(stale_prompts, "prompts", run_id=ctx.run_id, stage=STAGE),
                "prompts_rejected": store.delete(stale_rejects, "prompts_rejected", run_id=ctx.run_id, stage=STAGE),
            }
        by_reason = rejected.groupBy(F.regexp_replace("reason", U.PER_ITEM_REASON, "$1").alias("r")).count().collect()
        kept_langs = prompts.groupBy("lang").count().collect()
        flag = F.regexp_replace(F.col("f"), U.PER_ITEM_REASON, "$1")
        flags = prompts.select(F.explode("flags").alias("f")).groupBy(flag.alias("f")).count().collect()
        stats["rejected_by_reason"] = {r["r"]: r["count"] for r in sorted(by_reason, key=lambda r: r["r"])}
        stats["langs"]["kept"] = {r["lang"]: r["count"] for r in sorted(kept_langs, key=lambda r: r["lang"])}
        stats["flags"] = {r["f"]: r["count"] for r in sorted(flags, key=lambda r: r["f"])}
        stats["steps"], stats["step_rows"] = steps.seconds, steps.rows
        for table, merged in written.items():
            stats[table] = {"inserted": merged.inserted, "updated": merged.updated, "deleted": deleted[table]}
    finally:
        steps.release_all()
    return StageResult(
        stage=STAGE,
        rows_in=n_raw,
        rows_out=n_kept,
        rows_rejected=n_rejected,
        stats=stats,
        tables=["prompts", "prompts_rejected"],
    )
