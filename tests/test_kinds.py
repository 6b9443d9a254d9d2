"""The LLM kind registry (udfs.kinds) and the driver/executor line of the engine job.

A kind is one class: these tests check the registry that every LLM stage runs through, that a new kind
(registered here, with a table and a config block of its own) runs end to end through the real engine
job with no other code, and that what a Spark task unpickles imports no driver module."""

from __future__ import annotations

import functools
import subprocess
import sys

import pandas as pd
import pytest
from pyspark import cloudpickle
from pyspark.sql import functions as F

from instructlake.jobs import tables
from instructlake.jobs.config import LLMStageConf
from instructlake.jobs.llm.job import LLMJob
from instructlake.jobs.llm.models import base_gen_config, llm_task, resolve_model
from instructlake.jobs.llm.select import error_status, prior_errors
from instructlake.jobs.store import arrow_schema
from instructlake.udfs import engine as E
from instructlake.udfs import generation as G
from instructlake.udfs import kinds as K
from instructlake.udfs.rs_table import RsTable
from instructlake.udfs.sinks import DeltaSink, StagingSink
from instructlake.udfs.text import prompt_id


def _task(kind: str, **fields) -> G.LLMTask:
    return G.LLMTask(kind, "m", {"backend": "scripted"}, E.SamplingConfig(max_tokens=16), {"model": "m"}, "r1", 8, 8, 30.0, **fields)


def test_every_llm_kind_is_registered_with_its_table_and_request_key():
    assert {n: (k.table, k.id_column, k.model_column) for n, k in K.KINDS.items()} == {
        "respond": ("responses", "prompt_id", "model"),
        "respond_translated": ("responses", "prompt_id", "model"),
        "translate": ("translations", "prompt_id", "model"),
        "judge": ("judgements", "response_id", "judge_model"),
        **{step: ("reverse_steps", "fragment_id", "model") for step in K.REVERSE_STEPS},
    }
    assert K.output_keys() == {
        "responses": ("prompt_id", "model"), "translations": ("prompt_id", "model"),
        "judgements": ("response_id", "judge_model"), "reverse_steps": ("fragment_id", "model"),
    }  # fmt: skip
    for name, k in K.KINDS.items():  # every output table and key column exists in the table contracts
        assert {k.id_column, k.model_column, "gen_config_id"} <= set(tables.SCHEMAS[k.table].fieldNames()), name
    with pytest.raises(ValueError, match="already registered"):
        K.register(type("Again", (K.Respond,), {}))
    with pytest.raises(ValueError, match="unknown LLM kind 'nope'"):
        K.kind("nope")


def test_a_job_takes_the_kinds_of_its_table_only():
    assert set(_task("respond").kinds) == {"respond", "respond_translated"} and _task("respond").table == "responses"
    assert set(_task(K.SCORE).kinds) == set(K.REVERSE_STEPS) and _task(K.SCORE).input_columns[-1] == "answer"
    frame = pd.DataFrame(dict(prompt_id=["p"], origin_prompt_id=["p"], task=["translate"], lang=["en"], text=["Hi"], attempt=[1]))
    with pytest.raises(ValueError, match="a respond job got a row of kind 'translate'"):
        G.requests_for(_task("respond"), frame)
    # The rows of each reverse step: the score step parses its [[n]], the others keep no score.
    for step, score in ((K.INSTRUCT, None), (K.SCORE, 7.0)):
        rows = G.rows_for(_task(step), frame.assign(task=step, answer="A passage."), [E.Result("p", ["Rating: [[7]]"], ["stop"], 3, [4], 0.1)], "v", 64)
        assert [(r["fragment_id"], r["step"], r["score"]) for r in rows["reverse_steps"]] == [("p", step, score)]


def test_the_executor_entry_point_unpickles_without_the_driver_side(tmp_path):
    """What mapInPandas ships to a task (jobs.llm.job.LLMJob.run: engine_task bound to the task and its
    sink, for both sinks) loads in a fresh interpreter without any instructlake.jobs module, pydantic,
    vllm or torch."""
    schemas = {n: arrow_schema(tables.SCHEMAS[n]) for n in ("responses", "generation_errors")}
    rs = {n: RsTable(str(tmp_path / n), schemas[n], {}, 3) for n in schemas}
    sinks = [
        DeltaSink(rs, {"responses": None, "generation_errors": tables.KEYS["generation_errors"]}, tuple(schemas), "generate:r1:abc"),
        StagingSink(str(tmp_path / "staging"), schemas, tuple(schemas), "generate-r1-abc"),
    ]
    for i, sink in enumerate(sinks):
        (tmp_path / f"body{i}.pkl").write_bytes(cloudpickle.dumps(functools.partial(G.engine_task, _task("respond"), sink)))
    code = (
        "import pickle, sys\n"
        f"bodies = [pickle.load(open(r'{tmp_path}/body{{}}.pkl'.format(i), 'rb')) for i in range({len(sinks)})]\n"
        "assert all(b.func.__module__ == 'instructlake.udfs.generation' for b in bodies)\n"
        "print(sorted(m for m in sys.modules if m.startswith('instructlake.jobs') or m.split('.')[0] in ('pydantic', 'vllm', 'torch')))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "[]"


@pytest.mark.parametrize("backend", ["rs"], indirect=True)  # backend-neutral flow: see conftest
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
    model = resolve_model(block, ctx.conf)
    texts = [f"Paragraph number {i} about rivers." for i in range(5)]
    ids = [prompt_id(t) for t in texts]
    inputs = ctx.spark.createDataFrame([(p, p, "summarize", "en", t) for p, t in zip(ids, texts)],
                                       "prompt_id string, origin_prompt_id string, task string, lang string, text string")  # fmt: skip

    def run(**fields):
        task = llm_task(ctx, block, model, "summarize", gen_config=base_gen_config(model), **fields)
        job = LLMJob(ctx, "summarize", block, task)
        job.recover()
        done = ctx.store.read("summaries").filter(F.col("gen_config_id") == task.config_id("summarize")).select("prompt_id")
        stats, _ = job.run_pending(inputs, done, prior_errors(ctx.store, task, [task.config_id("summarize")]))
        return stats

    first = run(inject_faults=(ids[0],))
    assert (first["rows_written"], first["errors"]) == (4, 1)
    rows = {r["prompt_id"]: r["summary"] for r in ctx.store.read("summaries").collect()}
    assert set(rows) == set(ids[1:]) and rows[ids[1]].startswith("Scripted answer 0: Summarize in one line: Paragraph number 1")
    status = {(r["input_id"], r["task"]): r["resolved"] for r in error_status(ctx.store).collect()}
    assert status == {(ids[0], "summarize"): False}
    second = run()  # resume: only the failed prompt, which now resolves its error row
    assert (second["done_before"], second["todo"], second["rows_written"]) == (4, 1, 1)
    assert ctx.store.read("summaries").count() == 5
    assert {(r["input_id"], r["resolved"]) for r in error_status(ctx.store).collect()} == {(ids[0], True)}
