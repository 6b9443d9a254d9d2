"""Generate: prompts (and/or their translations) -> `responses` (n samples per prompt) + `generation_errors`.

Selects prompts (languages, seeded fraction, limit: `jobs.llm.select_prompts`), leaves out those already
answered with the same model and generation config (anti-join on responses by prompt_id + gen_config_id)
and those that failed for good or too often (generation_errors), then runs the engine job
(`jobs.llm.LLMJob`): `tasks` engine tasks, one engine per Spark Python worker, chunks committed during
the task. A re-run after a crash answers exactly the prompts still missing; a re-run after a complete run
writes nothing.

response_id = hash(prompt_id, model, gen_config_id, sample_index); gen_config_id hashes the model name,
sampling (n, temperature, top_p, max_tokens, seed), system prompt, chat template and task. A request's
seed is derived from the configured seed and the prompt id (udfs.generation.request_seed).
"""

from __future__ import annotations

import logging

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from instructlake.jobs.llm import (
    LLMJob,
    ResolvedModel,
    base_gen_config,
    llm_task,
    prior_errors,
    resolve_model,
    sample,
    select_prompts,
)
from instructlake.jobs.runs import Context, StageResult
from instructlake.udfs.generation import RESPOND, RESPOND_TRANSLATED, LLMTask

log = logging.getLogger(__name__)


def select_translations(ctx: Context, conf) -> DataFrame:
    """Translated prompts as (prompt_id = translated_prompt_id, origin_prompt_id, text, lang = target_lang)."""
    df = ctx.store.read("translations").filter(F.col("text").isNotNull() & (F.length(F.trim("text")) > 0))
    if conf.translation_model:
        df = df.filter(F.col("model") == conf.translation_model)
    if conf.translation_finish_reasons:
        df = df.filter(F.col("finish_reason").isin(conf.translation_finish_reasons))
    df = df.select(
        F.col("translated_prompt_id").alias("prompt_id"),
        F.col("prompt_id").alias("origin_prompt_id"),
        "text",
        F.col("target_lang").alias("lang"),
    )
    # Two translations with the same text (two source prompts, or two translators) are one prompt.
    df = df.groupBy("prompt_id").agg(
        F.min("origin_prompt_id").alias("origin_prompt_id"), F.min("text").alias("text"), F.min("lang").alias("lang")
    )
    return sample(df, conf.langs, conf.fraction, conf.limit, conf.sample_seed)


def build_task(ctx: Context) -> tuple[ResolvedModel, LLMTask]:
    """The stage's model and the engine task every Spark task runs."""
    conf = ctx.conf.generate
    model = resolve_model(conf, ctx.conf)
    return model, llm_task(
        ctx, conf, model, "respond",
        gen_config=base_gen_config(model, system_prompt=conf.system_prompt),
        system_prompt=conf.system_prompt,
    )  # fmt: skip


def run(ctx: Context, task: LLMTask | None = None) -> StageResult:
    """The stage; `task` replaces the configured engine task (tests inject per-request faults so)."""
    conf = ctx.conf.generate
    model, configured = build_task(ctx)
    task = task or configured
    job = LLMJob(ctx, "generate", conf, task, "responses")
    recovered = job.recover()

    parts, kinds = [], []
    if conf.source in ("prompts", "both"):
        kinds.append(RESPOND)
        parts.append(
            select_prompts(ctx, conf).select(
                "prompt_id", F.col("prompt_id").alias("origin_prompt_id"), "text", "lang", F.lit(RESPOND).alias("task")
            )
        )
    if conf.source in ("translations", "both"):
        kinds.append(RESPOND_TRANSLATED)
        parts.append(select_translations(ctx, conf).withColumn("task", F.lit(RESPOND_TRANSLATED)))
    selected = parts[0] if len(parts) == 1 else parts[0].unionByName(parts[1])

    gids = {kind: task.config_id(kind) for kind in kinds}
    gid = F.lit(None).cast("string")
    for kind, value in gids.items():
        gid = F.when(F.col("task") == kind, F.lit(value)).otherwise(gid)
    answered = (
        ctx.store.read("responses")
        .filter((F.col("model") == model.name) & F.col("gen_config_id").isin(list(gids.values())))
        .select("prompt_id", "gen_config_id")
    )
    errors = prior_errors(ctx.store, task, list(gids.values()))
    stats, counts = job.run_pending(selected.withColumn("gen_config_id", gid), answered, errors)
    stats.update(
        model=model.name,
        source=conf.source,
        gen_config_ids=gids,
        sampling={"n": model.sampling.n, "temperature": model.sampling.temperature, "top_p": model.sampling.top_p,
                  "max_tokens": model.sampling.max_tokens, "seed": model.sampling.seed},
        recovered=recovered,
    )  # fmt: skip
    log.info(
        "generate: %d selected, %d already answered, %d given up; %d responses, %d errors, %.0f tok/s (%s)",
        stats["selected"], counts["done"], counts["given_up"], stats["rows_written"], stats["errors"],
        stats["tokens_per_s"], stats.get("engine_version"),
    )  # fmt: skip
    return job.result(stats)
