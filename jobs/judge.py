"""Judge: responses -> `judgements` (a 0-10 score per response from an LLM judge) + `generation_errors`.

MT-Bench single-answer grading (udfs.prompts.judge_messages, greedy by default): the judge explains, then
rates "[[n]]"; the score is the last [[n]] in 0-10 (udfs.prompts.parse_judge_score), null when there is
none, and the row is kept either way with the judge's output as `rationale`. Same machinery as generate
and translate (jobs.llm): seeded selection, the engine job with chunked commits during the task, per-row
errors. In that job a row is one response: its `prompt_id` column carries the response id (the request
key, and the input_id of its generation_errors row, task `judge`), origin_prompt_id the prompt's id.

Selection: responses of `response_tasks` and `response_models`, in `langs`, then a seeded fraction and the
first `limit` in a seeded hash order of response ids. A response already judged by the same judge model
and config (gen_config_id: model, sampling, chat template, judge template, system prompt) is skipped; a
new config judges again and replaces the row (key response_id, judge_model).
"""

from __future__ import annotations

import logging

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from instructlake.jobs.config import JudgeConf
from instructlake.jobs.llm.job import LLMJob
from instructlake.jobs.llm.models import base_gen_config, digest, llm_task, resolve_model
from instructlake.jobs.llm.select import prior_errors, sample
from instructlake.jobs.runs import Context, StageResult
from instructlake.udfs.generation import LLMTask
from instructlake.udfs.kinds import JUDGE
from instructlake.udfs.prompts import JUDGE_TEMPLATE, check_template

log = logging.getLogger(__name__)


def select_responses(ctx: Context, conf: JudgeConf) -> DataFrame:
    """The responses to judge, as engine-job rows (the judge kind's input columns without task/attempt)."""
    df = ctx.store.read("responses")
    if conf.response_tasks:
        df = df.filter(F.col("task").isin(conf.response_tasks))
    if conf.response_models:
        df = df.filter(F.col("model").isin(conf.response_models))
    df = df.select(
        F.col("response_id").alias("prompt_id"),
        F.col("prompt_id").alias("origin_prompt_id"),
        "lang",
        F.coalesce("prompt_text", F.lit("")).alias("text"),
        F.coalesce("text", F.lit("")).alias("answer"),
    )
    return sample(df, conf.langs, conf.fraction, conf.limit, conf.sample_seed)


def build_task(ctx: Context) -> LLMTask:
    conf = ctx.conf.judge
    model = resolve_model(conf, ctx.conf)
    template = check_template(conf.template or JUDGE_TEMPLATE, "judge.template", "question", "answer")
    return llm_task(
        ctx, conf, model, JUDGE,
        gen_config=base_gen_config(model, system_prompt=conf.system_prompt, template=digest(template)),
        system_prompt=conf.system_prompt,
        template=template,
    )  # fmt: skip


def run(ctx: Context) -> StageResult:
    """The stage: judge the selected responses not yet judged with this judge model and config."""
    conf = ctx.conf.judge
    task = build_task(ctx)
    job = LLMJob(ctx, "judge", conf, task)
    recovered = job.recover()
    gid = task.config_id(JUDGE)

    selected = select_responses(ctx, conf).withColumn("task", F.lit(JUDGE))
    done = (
        ctx.store.read("judgements")
        .filter((F.col("judge_model") == task.model) & (F.col("gen_config_id") == gid))
        .select(F.col("response_id").alias("prompt_id"))
    )
    stats, counts = job.run_pending(selected, done, prior_errors(ctx.store, task, [gid]))
    # Per answering model (several models in one run): how each one's responses scored in this run.
    models = ctx.store.read("responses").select("response_id", "model")
    per_model = (
        ctx.store.read("judgements")
        .filter((F.col("run_id") == ctx.run_id) & (F.col("gen_config_id") == gid))
        .join(models, "response_id", "left")
        .groupBy(F.coalesce("model", F.lit("unknown")).alias("model"))
        .agg(F.count("*").alias("rows"), F.count("score").alias("scored"), F.avg("score").alias("mean"))
        .collect()
    )
    by_model = {
        r["model"]: {"judged": r["rows"], "scored": r["scored"], "mean_score": round(r["mean"], 3) if r["mean"] is not None else None}
        for r in per_model
    }  # fmt: skip
    rows, scored = sum(r["rows"] for r in per_model), sum(r["scored"] for r in per_model)
    total = sum(r["mean"] * r["scored"] for r in per_model if r["mean"] is not None)
    stats.update(
        judge_model=task.model,
        gen_config_id=gid,
        sampling={"temperature": task.sampling.temperature, "max_tokens": task.sampling.max_tokens},
        scored=scored,
        unscored=rows - scored,
        mean_score=round(total / scored, 3) if scored else None,
        by_response_model=by_model,
        recovered=recovered,
    )
    log.info(
        "judge (%s): %d selected, %d already judged, %d given up; %d judgements (%d scored, mean %s), %d errors",
        task.model, stats["selected"], counts["done"], counts["given_up"], stats["rows_written"], stats["scored"],
        stats["mean_score"], stats["errors"],
    )  # fmt: skip
    return job.result(stats)
