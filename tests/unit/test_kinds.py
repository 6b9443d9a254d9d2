"""The LLM kind registry (udfs.kinds) and the driver/executor line of the engine job: every kind is
registered with its table and request key, a job takes only its table's kinds, and what a Spark task
unpickles imports no driver module. The toy kind end to end is tests/spark/test_kinds.py."""

from __future__ import annotations

import functools
import subprocess
import sys

import pandas as pd
import pytest
from pyspark import cloudpickle

from instructlake.jobs import tables
from instructlake.jobs.store import arrow_schema
from instructlake.udfs import engine as E
from instructlake.udfs import generation as G
from instructlake.udfs import kinds as K
from instructlake.udfs.rs_table import RsTable
from instructlake.udfs.sinks import DeltaSink, StagingSink


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

