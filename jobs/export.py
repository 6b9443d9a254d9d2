"""Export: `responses` -> SFT-ready chat data (JSON Lines, gzip, or Parquet), one folder per language.

Each record is `{"messages": [system?, user, assistant], "prompt_id", "response_id", "lang", "model", "task"}`,
the shape TRL/axolotl-style SFT loaders read. The export is a pure function of the responses table at one
version, written with overwrite, so re-running it reproduces the same files and never duplicates records.
"""

from __future__ import annotations

from pathlib import Path

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from instructlake.jobs.runs import Context, StageResult


def select_responses(responses: DataFrame, *, tasks: list[str], select: str, drop_truncated: bool) -> DataFrame:
    """Rows to export, each with `reason` null (exported) or why it was left out."""
    reason = F.when(~F.col("task").isin(tasks), F.lit("task_not_selected"))
    reason = reason.when(F.col("text").isNull() | (F.length(F.trim("text")) == 0), F.lit("empty_response"))
    if drop_truncated:
        reason = reason.when(F.col("finish_reason") == "length", F.lit("truncated"))
    df = responses.withColumn("reason", reason)
    if select == "first_ok":
        # One response per (prompt, model, task): the lowest sample index among the usable ones.
        w = Window.partitionBy("prompt_id", "model", "task").orderBy(F.col("reason").isNotNull(), "sample_index", "response_id")
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
    chosen = select_responses(
        ctx.store.read("responses"), tasks=conf.tasks, select=conf.select, drop_truncated=conf.drop_truncated
    ).persist()
    try:
        counts = {r["reason"]: r["count"] for r in chosen.groupBy("reason").count().collect()}
        records = chat_records(chosen.filter(F.col("reason").isNull()), conf.include_system_prompt)
        per_lang = {r["lang"]: r["count"] for r in records.groupBy("lang").count().collect()}
        target = export_location(ctx)
        writer = records.repartition(max(1, conf.files_per_lang), "lang").sortWithinPartitions("prompt_id", "response_id")
        writer = writer.write.mode("overwrite").partitionBy("lang")
        if conf.format == "jsonl":
            writer.option("compression", "gzip").json(target)
        else:
            writer.parquet(target)
    finally:
        chosen.unpersist()
    exported = counts.pop(None, 0)
    return StageResult(
        stage="export",
        rows_in=exported + sum(counts.values()),
        rows_out=exported,
        rows_rejected=sum(counts.values()),
        stats={"path": target, "format": conf.format, "responses_version": version, "per_lang": per_lang, "left_out": counts},
    )


def export_location(ctx: Context) -> str:
    """`export.path/<format>`; a relative path is taken from the working directory, as run.lake_root is."""
    path = ctx.conf.export.path
    base = path.rstrip("/") if "://" in path else str(Path(path).resolve())
    return f"{base}/{ctx.conf.export.format}"
