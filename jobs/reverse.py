"""Reverse instructions (Indurthi et al. 2024): native corpus text is the answer, an LLM writes the request.

The fragments are curated rows (`prompts`, or `prompts_raw` straight from ingest) of the ingest sources
named in `reverse.sources`: filtered, deduplicated and language-identified like prompts. Four engine jobs,
one per step, each over the previous step's outputs, all rows in `reverse_steps` (key: fragment, step,
model) and failures in `generation_errors`:

  reverse_to_en      a non-English fragment translated into English (English fragments skip it)
  reverse_instruct   the instruction that the English passage answers
  reverse_score      the (instruction, passage) pair scored 0-10 by the same model (MT-Bench grading)
  reverse_to_native  the instruction translated back into the fragment's language

A step's output goes on only when it finished as `reverse.finish_reasons` allows, and a pair only when
its score reaches `reverse.min_score`. Every step's generation config includes the previous step's, so a
changed upstream step re-runs what follows it, and a re-run only completes what is missing. The pairs
(native instruction, original fragment) are merged into `responses` with task `reverse_instruction`, so
quality, export and report treat them as any response; pairs of this configuration whose fragment is
still selected but no longer pass (a higher min_score) are deleted from `responses`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator

import pandas as pd
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from instructlake.jobs.llm.job import LLMJob
from instructlake.jobs.llm.models import ResolvedModel, base_gen_config, digest, llm_task, resolve_model
from instructlake.jobs.llm.select import prior_errors, select_prompts
from instructlake.jobs.runs import Context, StageResult
from instructlake.udfs import generation as G
from instructlake.udfs import kinds as K
from instructlake.udfs.prompts import INSTRUCT_TEMPLATE, JUDGE_TEMPLATE, PASSAGE_TEMPLATE, TRANSLATE_TEMPLATE, check_template
from instructlake.udfs.text import normalize, prompt_id

log = logging.getLogger(__name__)

STAGE, TASK = "reverse", "reverse_instruction"
STEPS = "reverse_steps"


class _Steps:
    """The stage's engine jobs, each keyed to the generation config of the steps before it."""

    def __init__(self, ctx: Context, model: ResolvedModel):
        self.ctx, self.conf, self.model = ctx, ctx.conf.reverse, model
        greedy = dataclasses.replace(model.sampling, temperature=0.0, top_p=1.0)
        self.greedy = dataclasses.replace(model, sampling=greedy)
        self.gids: dict[str, str] = {}
        self.stats: dict[str, dict] = {}

    def task(self, step: str, template: str, after: str | None, system: str | None = None) -> G.LLMTask:
        model = self.model if step == K.INSTRUCT else self.greedy
        gen_config = base_gen_config(model, template=digest(template), system_prompt=system, after=after and self.gids[after])
        return llm_task(self.ctx, self.conf, model, step, gen_config=gen_config, template=template, system_prompt=system)

    def run(self, step: str, task: G.LLMTask, selected: DataFrame) -> DataFrame:
        """Run `step` on `selected` (fragment rows: prompt_id, text, lang, answer); its usable outputs now."""
        self.gids[step] = gid = task.config_id(step)
        job = LLMJob(self.ctx, STAGE, self.conf, task)
        if not self.stats:  # what an earlier, crashed run staged: once, before the first step reads
            job.recover()
        rows = selected.select(
            "prompt_id", F.col("prompt_id").alias("origin_prompt_id"), F.lit(step).alias("task"), "lang", "text", "answer"
        )
        stats, _ = job.run_pending(rows, self.outputs(step).select(F.col("fragment_id").alias("prompt_id")), prior_errors(self.ctx.store, task, [gid]))
        usable = self.outputs(step)
        if self.conf.finish_reasons:
            usable = usable.filter(F.col("finish_reason").isin(self.conf.finish_reasons))
        usable = usable.filter(F.length(F.trim("text")) > 0).join(selected.select(F.col("prompt_id").alias("fragment_id")), "fragment_id", "left_semi")
        stats["usable"] = usable.count()
        self.stats[step] = stats
        log.info("reverse %s: %d selected, %d done before, %d written, %d errors, %d usable", step, stats["selected"], stats["done_before"], stats["rows_written"], stats["errors"], stats["usable"])
        return usable

    def outputs(self, step: str) -> DataFrame:
        return self.ctx.store.read(STEPS).filter(
            (F.col("step") == step) & (F.col("model") == self.model.name) & (F.col("gen_config_id") == self.gids[step])
        )


def _ids(model: str, gid: str):
    def add(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for b in batches:
            texts = [normalize(t) for t in b["prompt_text"]]  # the prompt as curate would keep it
            pids = [prompt_id(t) for t in texts]
            yield b.assign(prompt_text=texts, prompt_id=pids, response_id=[K.response_id(p, model, gid, 0) for p in pids])

    return add


def run(ctx: Context) -> StageResult:
    conf = ctx.conf.reverse
    model = resolve_model(conf, ctx.conf)
    steps = _Steps(ctx, model)
    # A fragment whose language is unknown is translated "from the source language" like any non-English one.
    fragments = (
        select_prompts(ctx, conf, corpora="only")
        .withColumn("lang", F.coalesce("lang", F.lit("und")))
        .withColumn("answer", F.lit(None).cast("string"))
        .persist()
    )
    try:
        n_fragments = fragments.count()
        native = fragments.filter(F.col("lang") != "en")

        to_en = steps.task(K.TO_EN, check_template(conf.passage_template or PASSAGE_TEMPLATE, "reverse.passage_template", "text"), None)
        english = steps.run(K.TO_EN, to_en, native)
        passages = fragments.filter(F.col("lang") == "en").select("prompt_id", "lang", F.col("text").alias("passage")).unionByName(
            english.select(F.col("fragment_id").alias("prompt_id"), "lang", F.col("text").alias("passage"))
        )

        instruct = steps.task(K.INSTRUCT, check_template(conf.instruct_template or INSTRUCT_TEMPLATE, "reverse.instruct_template", "text"), K.TO_EN)
        instructions = steps.run(K.INSTRUCT, instruct, passages.select("prompt_id", "lang", F.col("passage").alias("text"), F.lit(None).cast("string").alias("answer")))
        pairs = instructions.select(F.col("fragment_id").alias("prompt_id"), F.col("text").alias("instruction")).join(passages, "prompt_id")

        score_template = check_template(conf.score_template or JUDGE_TEMPLATE, "reverse.score_template", "question", "answer")
        score = steps.task(K.SCORE, score_template, K.INSTRUCT, system=conf.score_system_prompt)
        scored = steps.run(K.SCORE, score, pairs.select("prompt_id", "lang", F.col("instruction").alias("text"), F.col("passage").alias("answer")))
        kept = pairs.join(scored.select(F.col("fragment_id").alias("prompt_id"), "score"), "prompt_id")
        if conf.min_score is not None:
            kept = kept.filter(F.col("score") >= conf.min_score)
        kept = kept.persist()
        n_kept = kept.count()

        to_native = steps.task(K.TO_NATIVE, check_template(conf.back_template or TRANSLATE_TEMPLATE, "reverse.back_template", "text"), K.SCORE)
        back = steps.run(K.TO_NATIVE, to_native, kept.filter(F.col("lang") != "en").select("prompt_id", "lang", F.col("instruction").alias("text"), F.lit(None).cast("string").alias("answer")))
        native_instructions = kept.filter(F.col("lang") == "en").select("prompt_id", F.col("instruction").alias("prompt_text"), "score").unionByName(
            back.select(F.col("fragment_id").alias("prompt_id"), F.col("text").alias("prompt_text")).join(kept.select("prompt_id", "score"), "prompt_id")
        )
        written, deleted, n_pairs, n_repeated = _write(ctx, steps, model, fragments, native_instructions)
        kept.unpersist()
    finally:
        fragments.unpersist()
    stats = {
        "model": model.name, "fragments": n_fragments, "steps": steps.stats, "gen_config_ids": steps.gids,
        "scored_pairs": steps.stats[K.SCORE]["usable"], "kept_pairs": n_kept, "min_score": conf.min_score,
        "pairs": n_pairs, "repeated_instructions": n_repeated, "responses": {"inserted": written.inserted, "updated": written.updated, "deleted": deleted},
    }  # fmt: skip
    errors = sum(s["errors"] for s in steps.stats.values())
    return StageResult(stage=STAGE, rows_in=n_fragments, rows_out=n_pairs, rows_rejected=errors, stats=stats, tables=[STEPS, "responses"])


def _write(ctx: Context, steps: _Steps, model: ResolvedModel, fragments: DataFrame, native_instructions: DataFrame):
    """Merge the (instruction, fragment) pairs into `responses`, one per distinct instruction (the best
    scored, then the smallest fragment id: a generic instruction written for many fragments is one prompt,
    and a response id is per prompt); delete this configuration's pairs that no longer pass.
    -> (merge result, rows deleted, pairs written, pairs dropped as a repeated instruction)."""
    gid = G.gen_config_id({"task": TASK, "steps": steps.gids})  # min_score filters; it does not generate
    s = model.sampling
    pairs = native_instructions.join(fragments.select(F.col("prompt_id").alias("fid"), "text", "lang"), F.col("prompt_id") == F.col("fid"))
    pairs = pairs.select(F.col("fid").alias("origin_prompt_id"), "prompt_text", "text", "lang", "score").mapInPandas(
        _ids(model.name, gid),
        "origin_prompt_id string, prompt_text string, text string, lang string, score double, prompt_id string, response_id string",
    )
    best = Window.partitionBy("prompt_id").orderBy(F.desc_nulls_last("score"), "origin_prompt_id")
    pairs = pairs.withColumn("_rank", F.row_number().over(best)).localCheckpoint(eager=True)
    n_repeated = pairs.filter(F.col("_rank") > 1).count()
    pairs = pairs.filter(F.col("_rank") == 1)
    rows = pairs.select(
        "response_id", "prompt_id", "origin_prompt_id", F.lit(TASK).alias("task"), "lang",
        F.lit(model.name).alias("model"), F.lit(gid).alias("gen_config_id"), F.lit(0).alias("sample_index"),
        F.lit(1).alias("n"), F.lit(s.temperature).cast("double").alias("temperature"),
        F.lit(s.top_p).cast("double").alias("top_p"), F.lit(s.max_tokens).cast("int").alias("max_tokens"),
        F.lit(s.seed).cast("long").alias("seed"), F.lit(None).cast("string").alias("system_prompt"), "prompt_text", "text",
        F.lit("stop").alias("finish_reason"),  # the answer is the fragment: complete text a person wrote
        F.lit(None).cast("int").alias("prompt_tokens"), F.lit(None).cast("int").alias("completion_tokens"),
        F.lit(None).cast("double").alias("latency_s"), F.lit(model.backend).alias("engine"),
        F.lit(None).cast("string").alias("engine_version"), F.lit(ctx.run_id).alias("run_id"),
        F.current_timestamp().alias("created_at"),
    ).localCheckpoint(eager=True)  # fmt: skip
    n_pairs = rows.count()
    written = ctx.store.merge(rows, "responses", run_id=ctx.run_id, stage=STAGE)
    # Pairs of selected fragments that no longer pass (a higher min_score); unselected fragments keep theirs.
    stale = (
        ctx.store.read("responses")
        .filter((F.col("task") == TASK) & (F.col("model") == model.name) & (F.col("gen_config_id") == gid))
        .join(fragments.select(F.col("prompt_id").alias("origin_prompt_id")), "origin_prompt_id", "left_semi")
        .select("response_id")
        .join(rows, "response_id", "left_anti")
    )
    deleted = ctx.store.delete(stale, "responses", run_id=ctx.run_id, stage=STAGE)
    return written, deleted, n_pairs, n_repeated
