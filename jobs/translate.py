"""Translate: selected prompts -> `translations` (the paper's Japanese instruction sets), + `generation_errors`.

Same machinery as generate (jobs.llm, kind udfs.kinds.Translate): prompt selection (languages, seeded fraction, limit), the engine job
with chunked commits during the task, per-row errors. A prompt is translated once per (target language,
model, generation config); a new config (template, sampling) re-translates and replaces the row, whose key
is (prompt_id, target_lang, model). translated_prompt_id = prompt_id(normalized translated text), the id
under which `generate` (source: translations) answers it, with origin_prompt_id = the original prompt.
"""

from __future__ import annotations

import logging

from pyspark.sql import functions as F

from instructlake.jobs.llm.job import LLMJob
from instructlake.jobs.llm.models import base_gen_config, digest, llm_task, resolve_model
from instructlake.jobs.llm.select import prior_errors, select_prompts
from instructlake.jobs.runs import Context, StageResult
from instructlake.udfs.kinds import TRANSLATE
from instructlake.udfs.prompts import TRANSLATE_TEMPLATE, check_template

log = logging.getLogger(__name__)


def run(ctx: Context) -> StageResult:
    conf = ctx.conf.translate
    model = resolve_model(conf, ctx.conf)
    template = check_template(conf.template or TRANSLATE_TEMPLATE, "translate.template", "text")
    task = llm_task(
        ctx, conf, model, TRANSLATE,
        gen_config=base_gen_config(model, target_lang=conf.target_lang, template=digest(template)),
        target_lang=conf.target_lang,
        template=template,
    )  # fmt: skip
    job = LLMJob(ctx, "translate", conf, task)
    recovered = job.recover()
    gid = task.config_id(TRANSLATE)

    selected = (
        select_prompts(ctx, conf)
        .filter(F.col("lang").isNull() | (F.col("lang") != conf.target_lang))  # already in the target language
        .select("prompt_id", F.col("prompt_id").alias("origin_prompt_id"), "text", "lang", F.lit(TRANSLATE).alias("task"))
    )
    done = (
        ctx.store.read("translations")
        .filter((F.col("target_lang") == conf.target_lang) & (F.col("model") == model.name) & (F.col("gen_config_id") == gid))
        .select("prompt_id")
    )
    stats, counts = job.run_pending(selected, done, prior_errors(ctx.store, task, [gid]))
    stats.update(model=model.name, target_lang=conf.target_lang, gen_config_id=gid, recovered=recovered)
    log.info(
        "translate -> %s: %d selected, %d already translated; %d translations, %d errors",
        conf.target_lang, stats["selected"], counts["done"], stats["rows_written"], stats["errors"],
    )  # fmt: skip
    return job.result(stats)
