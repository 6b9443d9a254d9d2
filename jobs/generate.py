"""Generate: prompts (and/or their translations) -> `responses` (n samples per prompt) + `generation_errors`.

Selects prompts (languages, seeded fraction, limit: `jobs.llm.select.select_prompts`), leaves out those already
answered with the same model and generation config (anti-join on responses by prompt_id + gen_config_id)
and those that failed for good or too often (generation_errors), then runs the engine job
(`jobs.llm.job.LLMJob`): `tasks` engine tasks, one engine per Spark Python worker, chunks committed during
the task. A re-run after a crash answers exactly the prompts still missing; a re-run after a complete run
writes nothing.

Several models (`generate.models`, the seed paper's setting): one engine job per model over the same
selection, in order, so a Spark Python worker holds one model at a time (udfs.engine keeps one engine per
worker); resume is per model, and responses, judge, export and report tell models apart by name. The run's
stats then hold one record per model under `models`.

response_id = hash(prompt_id, model, gen_config_id, sample_index); gen_config_id hashes the model name,
sampling (n, temperature, top_p, max_tokens, seed), system prompt, chat template and task. A request's
seed is derived from the configured seed and the prompt id (udfs.generation.request_seed).
"""

from __future__ import annotations

import logging

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from instructlake.jobs.config import GenerateConf
from instructlake.jobs.llm.job import LLMJob
from instructlake.jobs.llm.models import ResolvedModel, base_gen_config, llm_task, resolve_model
from instructlake.jobs.llm.select import prior_errors, sample, select_prompts
from instructlake.jobs.runs import Context, StageResult
from instructlake.udfs.generation import LLMTask
from instructlake.udfs.kinds import RESPOND, RESPOND_TRANSLATED

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


def build_task(ctx: Context, conf: GenerateConf | None = None) -> tuple[ResolvedModel, LLMTask]:
    """A model's engine task, which every Spark task of its job runs; `conf`: one of
    `generate.per_model()` (default: the stage's block, one model)."""
    conf = conf or ctx.conf.generate
    model = resolve_model(conf, ctx.conf)
    return model, llm_task(
        ctx, conf, model, RESPOND,
        gen_config=base_gen_config(model, system_prompt=conf.system_prompt),
        system_prompt=conf.system_prompt,
    )  # fmt: skip


def build_tasks(ctx: Context) -> list[tuple[GenerateConf, ResolvedModel, LLMTask]]:
    """(block, model, task) per configured model, in order; two models recording one name are an error,
    since responses, resume and export tell models apart by name."""
    out = [(conf, *build_task(ctx, conf)) for conf in ctx.conf.generate.per_model()]
    names = [model.name for _, model, _ in out]
    if dupes := sorted({n for n in names if names.count(n) > 1}):
        raise ValueError(f"generate.models: several entries record the model name {dupes}; give each its own `model` or model file `name`")
    return out


def select_inputs(ctx: Context, conf: GenerateConf) -> tuple[DataFrame, list[str]]:
    """The rows to answer (prompts and/or translations, with their task) and the tasks among them."""
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
    return (parts[0] if len(parts) == 1 else parts[0].unionByName(parts[1])), kinds


def run(ctx: Context) -> StageResult:
    """The stage: one engine job per model, in order (a worker holds one model at a time)."""
    conf = ctx.conf.generate
    models = build_tasks(ctx)
    first = LLMJob(ctx, "generate", conf, models[0][2])
    recovered = first.recover()  # one staging dir for every model
    selected, kinds = select_inputs(ctx, conf)
    if len(models) > 1:  # every model answers the same selection: compute it once
        selected = selected.persist()
    try:
        per_model = [_run_model(ctx, mconf, model, t, selected, kinds) for mconf, model, t in models]
    finally:
        selected.unpersist()
    if len(per_model) == 1:
        stats = {**per_model[0], "recovered": recovered}
    else:
        stats = {
            "models": per_model, "source": conf.source, "recovered": recovered,
            **{k: sum(s[k] for s in per_model) for k in ("selected", "done_before", "given_up", "todo", "rows_written", "errors")},
        }  # fmt: skip
    return first.result(stats)


def _run_model(ctx: Context, conf: GenerateConf, model: ResolvedModel, task: LLMTask, selected: DataFrame, kinds: list[str]) -> dict:
    """One model's engine job over the selection: what this model already answered with this config, or
    gave up on, is left out (resume is per model); its stats."""
    job = LLMJob(ctx, "generate", conf, task)
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
    )  # fmt: skip
    log.info(
        "generate (%s): %d selected, %d already answered, %d given up; %d responses, %d errors, %.0f tok/s (%s)",
        model.name, stats["selected"], counts["done"], counts["given_up"], stats["rows_written"], stats["errors"],
        stats["tokens_per_s"], stats.get("engine_version"),
    )  # fmt: skip
    return stats
