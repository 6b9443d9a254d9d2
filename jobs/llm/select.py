"""What an LLM stage works on: prompt selection (seeded, stable across re-runs), earlier failures, whether
a failed request was later resolved, and the triage of selected rows into done / given up / to do."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any, Literal

import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from instructlake.jobs.config import LLMStageConf
from instructlake.jobs.store import TableStore
from instructlake.udfs import generation as G
from instructlake.udfs import kinds as K
from instructlake.udfs.engine import PROMPT_TOO_LONG
from instructlake.udfs.generation import ERRORS
from instructlake.udfs.text import prompt_id


def _prompt_ids(texts: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
    for b in texts:
        yield b.assign(prompt_id=[prompt_id(t) for t in b["text"]])


def prompt_table(ctx: Any, llm: LLMStageConf) -> str:
    """`prompts` (curated) or `prompts_raw` (straight from ingest); auto: prompts when curate is a stage of
    the configured pipeline."""
    if llm.input != "auto":
        return llm.input
    return "prompts" if "curate" in ctx.conf.pipeline.stages else "prompts_raw"


def select_prompts(ctx: Any, llm: LLMStageConf, corpora: Literal["exclude", "only"] = "exclude") -> DataFrame:
    """(prompt_id, text, lang) of the selected prompts: sources, language filter, then a seeded fraction,
    then the first `limit` in a seeded hash order. The selection depends only on the table and these
    settings, never on partitioning, so a re-run selects the same prompts and only completes what is
    missing. Rows from a corpus source (`reverse.sources`) are fragments, not prompts: excluded, or with
    `corpora="only"` the only rows selected (a prompt found in both kinds of source counts as both)."""
    table = prompt_table(ctx, llm)
    if table == "prompts":
        df = ctx.store.read("prompts").select("prompt_id", "text", "lang", "sources")
    else:
        raw = ctx.store.read("prompts_raw").select("text", F.col("source_lang").alias("lang"), "source")
        raw = raw.filter(F.col("text").isNotNull() & (F.length("text") > 0))
        df = raw.mapInPandas(_prompt_ids, "text string, lang string, source string, prompt_id string")
        df = df.groupBy("prompt_id").agg(
            F.min("text").alias("text"), F.min("lang").alias("lang"), F.collect_set("source").alias("sources")
        )
    corpus = ctx.conf.reverse.sources
    if corpus:
        in_corpus = F.arrays_overlap("sources", F.array(*[F.lit(s) for s in corpus]))
        if corpora == "only":
            df = df.filter(in_corpus)
        else:  # a prompt that also came from a prompt source stays a prompt
            df = df.filter(~in_corpus | F.exists("sources", lambda s: ~s.isin(corpus)))
    elif corpora == "only":
        raise ValueError("reverse.sources is empty: name the ingest sources whose rows are corpus fragments")
    return sample(df.drop("sources"), llm.langs, llm.fraction, llm.limit, llm.sample_seed)


def sample(df: DataFrame, langs: list[str], fraction: float, limit: int | None, seed: int) -> DataFrame:
    if langs:
        df = df.filter(F.col("lang").isin(langs))
    rank = F.xxhash64(F.lit(seed), F.col("prompt_id"))
    if fraction < 1:
        df = df.filter(F.pmod(rank, F.lit(1_000_000_007)) < F.lit(int(fraction * 1_000_000_007)))
    if limit is not None:
        df = df.orderBy(rank, "prompt_id").limit(limit)
    return df


def prior_errors(store: TableStore, task: G.LLMTask, gen_config_ids: list[str]) -> DataFrame:
    """Per (prompt_id, task) of the job's input rows (generation_errors.input_id): attempts so far and whether an error is permanent for this run: a prompt too
    long for the context it failed in, unless the task's configured max_model_len is larger than that."""
    too_long = F.col("error_class") == PROMPT_TOO_LONG
    context = task.engine["engine_args"].get("max_model_len")
    if context is not None:
        # Rows written before the column existed have no max_model_len: still permanent.
        too_long &= F.coalesce(F.col("max_model_len") >= F.lit(int(context)), F.lit(True))
    return (
        store.read(ERRORS)
        .filter((F.col("model") == task.model) & F.col("gen_config_id").isin(gen_config_ids))
        .groupBy(F.col("input_id").alias("prompt_id"), "task")
        .agg(F.max("attempt").alias("prev_attempts"), F.max(too_long.cast("int")).alias("permanent"))
    )


def error_status(store: TableStore) -> DataFrame:
    """generation_errors with `resolved`: a later run produced the output the failed request was for (an
    output row of some kind with its request key, model and gen_config_id). The error row stays as the
    history of that request."""
    outputs = [
        store.read(table).select(F.col(id_col).alias("input_id"), F.col(model_col).alias("model"), "gen_config_id")
        for table, (id_col, model_col) in K.output_keys().items()
        if store.exists(table)
    ]
    errors = store.read(ERRORS)
    if not outputs:
        return errors.withColumn("resolved", F.lit(False))
    done = functools.reduce(DataFrame.unionByName, outputs).distinct().withColumn("resolved", F.lit(True))
    keys = ["input_id", "model", "gen_config_id"]
    return errors.join(done, keys, "left").withColumn("resolved", F.coalesce("resolved", F.lit(False)))


def triage(
    selected: DataFrame, done: DataFrame, errors: DataFrame, max_attempts: int
) -> tuple[DataFrame, dict[str, int]]:
    """Tag every selected prompt in one pass: `done` (its key is in `done`), `given_up` (failed for good:
    prompt too long, or max_attempts runs), or `todo` with this run's `attempt`. Returns the tagged rows,
    persisted (unpersist them when finished), and the count per tag."""
    keys = list(done.columns)
    done = done.distinct().withColumn("_done", F.lit(True))
    df = selected.join(done, keys, "left").join(errors, ["prompt_id", "task"], "left")
    prev = F.coalesce("prev_attempts", F.lit(0))
    state = (
        F.when(F.col("_done").isNotNull(), F.lit("done"))
        .when((F.coalesce("permanent", F.lit(0)) == 1) | (prev >= max_attempts), F.lit("given_up"))
        .otherwise(F.lit("todo"))
    )
    df = (
        df.withColumn("_state", state)
        .withColumn("attempt", (prev + 1).cast("int"))
        .drop("_done", "prev_attempts", "permanent")
        .persist()
    )
    counts = {"done": 0, "given_up": 0, "todo": 0}
    counts.update({r["_state"]: r["count"] for r in df.groupBy("_state").count().collect()})
    return df, counts
