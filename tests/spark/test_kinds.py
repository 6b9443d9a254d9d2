"""The LLM kind registry (udfs.kinds) and the driver/executor line of the engine job.

A kind is one class: these tests check the registry that every LLM stage runs through, that a new kind
(registered here, with a table and a config block of its own) runs end to end through the real engine
job with no other code, and that what a Spark task unpickles imports no driver module."""

from __future__ import annotations

from pyspark.sql import functions as F

from instructlake.jobs import tables
from instructlake.jobs.config import LLMStageConf
from instructlake.jobs.llm.job import LLMJob
from instructlake.jobs.llm.models import base_gen_config, llm_task, resolve_model
from instructlake.jobs.llm.select import error_status, prior_errors
from instructlake.udfs import kinds as K
from instructlake.udfs.text import prompt_id


def test_a_new_kind_is_one_class_and_one_config_block(ctx_factory, monkeypatch):
    """A toy kind (one-line summaries into a table of its own) registered here runs through the engine
    job, error resolution and resume like the built-in kinds, with the scripted engine."""

    class Summarize(K.Kind):
        name, table, id_column = "summarize", "summaries", "prompt_id"

        def messages(self, task, row):
            return [{"role": "user", "content": f"Summarize in one line: {row.text}"}]

        def rows(self, task, row, result, meta):
            return [dict(prompt_id=row.prompt_id, model=task.model, gen_config_id=meta.gen_config_id, summary=result.texts[0],
                         run_id=task.run_id, created_at=meta.created_at)]  # fmt: skip

    monkeypatch.setattr(K, "KINDS", dict(K.KINDS))
    K.register(Summarize)
    # Its table contract, where every table's lives.
    monkeypatch.setitem(tables.SCHEMAS, "summaries", tables.ddl(
        "prompt_id STRING NOT NULL, model STRING NOT NULL, gen_config_id STRING, summary STRING, run_id STRING, created_at TIMESTAMP"))  # fmt: skip
    monkeypatch.setitem(tables.KEYS, "summaries", ("prompt_id", "model"))
    ctx = ctx_factory("llm.model_conf=conf/models/scripted.yaml")
    # Its config block: the shared llm block (as every LLM stage inherits it) with what this stage changes.
    shared = ctx.conf.translate.model_dump(include=set(LLMStageConf.model_fields))
    block = LLMStageConf.model_validate({**shared, "tasks": 1, "chunk_rows": 2, "sampling": {**shared["sampling"], "n": 1}})
    texts = [f"Paragraph number {i} about rivers." for i in range(5)]
    ids = [prompt_id(t) for t in texts]
    # A failing request: the test-only faulty backend (tests/support/engines.py) around the scripted engine.
    faulty = LLMStageConf.model_validate(
        {**block.model_dump(), "backend": "tests.support.engines:faulty", "engine_args": {"inner": "scripted", "fail_keys": [ids[0]]}}
    )
    inputs = ctx.spark.createDataFrame([(p, p, "summarize", "en", t) for p, t in zip(ids, texts)],
                                       "prompt_id string, origin_prompt_id string, task string, lang string, text string")  # fmt: skip

    def run(block):
        model = resolve_model(block, ctx.conf)
        task = llm_task(ctx, block, model, "summarize", gen_config=base_gen_config(model))
        job = LLMJob(ctx, "summarize", block, task)
        job.recover()
        done = ctx.store.read("summaries").filter(F.col("gen_config_id") == task.config_id("summarize")).select("prompt_id")
        stats, _ = job.run_pending(inputs, done, prior_errors(ctx.store, task, [task.config_id("summarize")]))
        return stats

    first = run(faulty)
    assert (first["rows_written"], first["errors"]) == (4, 1)
    rows = {r["prompt_id"]: r["summary"] for r in ctx.store.read("summaries").collect()}
    assert set(rows) == set(ids[1:]) and rows[ids[1]].startswith("Scripted answer 0: Summarize in one line: Paragraph number 1")
    status = {(r["input_id"], r["task"]): r["resolved"] for r in error_status(ctx.store).collect()}
    assert status == {(ids[0], "summarize"): False}
    second = run(block)  # resume: only the failed prompt, which now resolves its error row
    assert (second["done_before"], second["todo"], second["rows_written"]) == (4, 1, 1)
    assert ctx.store.read("summaries").count() == 5
    assert {(r["input_id"], r["resolved"]) for r in error_status(ctx.store).collect()} == {(ids[0], True)}

