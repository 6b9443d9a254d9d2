"""Export: `responses` -> SFT-ready chat data (JSON Lines, gzip, or Parquet), one folder per language.

Each record is `{"messages": [system?, user, assistant], "prompt_id", "response_id", "lang", "model", "task"}`,
the shape TRL/axolotl-style SFT loaders read. The export is a pure function of the responses table at one
version (and of response_checks / judgements where used), written with overwrite, so re-running it
reproduces the same files and never duplicates records. `export.path/README.md` is a Hugging Face
dataset card of the latest export, with the figures behind it (jobs/card.py). select=best keeps the best-judged usable sample
per prompt, model and task (best-of-n); min_score leaves out responses the judge scored low.
"""

from __future__ import annotations

from pathlib import Path

import fsspec
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from instructlake.jobs import card
from instructlake.jobs.runs import Context, StageResult


def select_responses(
    responses: DataFrame,
    *,
    tasks: list[str],
    select: str,
    drop_truncated: bool,
    checks: DataFrame | None = None,
    scores: DataFrame | None = None,
    min_score: float | None = None,
) -> DataFrame:
    """Rows to export, each with `reason` null (exported) or why it was left out. With `checks`
    (response_checks), only responses whose checks passed are exported. `scores` (response_id, score:
    `judge_scores`) feed `min_score` (a scored response below it: low_score) and select=best."""
    reason = F.when(~F.col("task").isin(tasks), F.lit("task_not_selected"))
    reason = reason.when(F.col("text").isNull() | (F.length(F.trim("text")) == 0), F.lit("empty_response"))
    if drop_truncated:
        reason = reason.when(F.col("finish_reason") == "length", F.lit("truncated"))
    if checks is not None:
        responses = responses.join(checks.select("response_id", "passed"), "response_id", "left")
        reason = reason.when(F.col("passed").isNull(), F.lit("unchecked")).when(~F.col("passed"), F.lit("failed_checks"))
    if select == "best" and scores is None:
        raise ValueError("select=best needs judge scores")
    if scores is not None:
        responses = responses.join(scores.select("response_id", "score"), "response_id", "left")
        if min_score is not None:
            reason = reason.when(F.col("score") < F.lit(float(min_score)), F.lit("low_score"))
    df = responses.withColumn("reason", reason)
    if select in ("first_ok", "best"):
        # One response per (prompt, model, task) among the usable ones: first_ok the lowest sample index,
        # best the highest score first (unscored after scored), then the lowest sample index.
        order = [F.col("reason").isNotNull(), *([F.col("score").desc_nulls_last()] if select == "best" else [])]
        w = Window.partitionBy("prompt_id", "model", "task").orderBy(*order, "sample_index", "response_id")
        df = df.withColumn("_rank", F.row_number().over(w)).withColumn(
            "reason", F.when(F.col("reason").isNull() & (F.col("_rank") > 1), F.lit("not_selected")).otherwise(F.col("reason"))
        ).drop("_rank")
    return df


def chat_records(df: DataFrame, include_system_prompt: bool) -> DataFrame:
    system = F.when(
        F.lit(include_system_prompt) & F.col("system_prompt").isNotNull() & (F.length("system_prompt") > 0),
        F.array(F.struct(F.lit("system").alias("role"), F.col("system_prompt").alias("content"))),
    ).otherwise(F.array().cast("array<struct<role:string,content:string>>"))
    turns = F.array(
        F.struct(F.lit("user").alias("role"), F.col("prompt_text").alias("content")),
        F.struct(F.lit("assistant").alias("role"), F.col("text").alias("content")),
    )
    return df.select(
        F.concat(system, turns).alias("messages"),
        "prompt_id", "response_id", F.coalesce("lang", F.lit("und")).alias("lang"), "model", "task",
    )  # fmt: skip


def run(ctx: Context) -> StageResult:
    conf = ctx.conf.export
    version = ctx.store.version("responses")
    checks = ctx.store.read("response_checks") if conf.require_checks_passed and ctx.store.exists("response_checks") else None
    scores = judge_scores(ctx, conf.judge_model) if conf.select == "best" or conf.min_score is not None else None
    chosen = select_responses(
        ctx.store.read("responses"), tasks=conf.tasks, select=conf.select, drop_truncated=conf.drop_truncated, checks=checks,
        scores=scores, min_score=conf.min_score,
    ).persist()  # fmt: skip
    try:
        counts = {r["reason"]: r["count"] for r in chosen.groupBy("reason").count().collect()}
        records = chat_records(chosen.filter(F.col("reason").isNull()), conf.include_system_prompt)
        per_model_lang: dict[str, dict[str, int]] = {}
        for r in records.groupBy("model", "lang").count().collect():
            per_model_lang.setdefault(r["model"], {})[r["lang"]] = r["count"]
        per_lang: dict[str, int] = {}
        for langs in per_model_lang.values():
            for lang, n in langs.items():
                per_lang[lang] = per_lang.get(lang, 0) + n
        target = export_location(ctx)
        writer = records.repartition(max(1, conf.files_per_lang), "lang").sortWithinPartitions("prompt_id", "response_id")
        writer = writer.write.mode("overwrite").partitionBy("lang")
        if conf.format == "jsonl":
            writer.option("compression", "gzip").json(target)
        else:
            writer.parquet(target)
        if conf.card.enabled:
            # One level above the data: a README.md among the Parquet files would break spark.read.parquet.
            data_glob = f"{conf.format}/lang={{lang}}/*." + ("json.gz" if conf.format == "jsonl" else "parquet")
            left_out = {k: v for k, v in counts.items() if k is not None}
            facts = card.card_facts(ctx, chosen.filter(F.col("reason").isNull()), left_out, data_glob)
            with fsspec.open(f"{target.rsplit('/', 1)[0]}/{card.FILE}", "w", encoding="utf-8") as fh:
                fh.write(card.render(facts, conf.card.pretty_name))
    finally:
        chosen.unpersist()
    exported = counts.pop(None, 0)
    return StageResult(
        stage="export",
        rows_in=exported + sum(counts.values()),
        rows_out=exported,
        rows_rejected=sum(counts.values()),
        stats={"path": target, "format": conf.format, "card": conf.card.enabled, "responses_version": version, "per_lang": per_lang, "per_model_lang": per_model_lang, "left_out": counts},
    )


def judge_scores(ctx: Context, judge_model: str | None) -> DataFrame:
    """(response_id, score): the score of `judge_model`, or the mean over every judge model (null scores
    ignored); no rows when nothing was judged."""
    if not ctx.store.exists("judgements"):
        return ctx.spark.createDataFrame([], "response_id string, score double")
    df = ctx.store.read("judgements")
    if judge_model:
        df = df.filter(F.col("judge_model") == judge_model)
    return df.groupBy("response_id").agg(F.avg("score").alias("score"))


def export_location(ctx: Context) -> str:
    """`export.path/<format>`; a relative path is taken from the working directory, as run.lake_root is."""
    path = ctx.conf.export.path
    base = path.rstrip("/") if "://" in path else str(Path(path).resolve())
    return f"{base}/{ctx.conf.export.format}"
