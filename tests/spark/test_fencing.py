"""No key twice when a lease fails: a run whose driver stalls past its lease while its engine tasks go on,
and a second run that takes the tables over meanwhile, on both Delta backends.

In one process, as two drivers would: run A generates in a thread whose lease heartbeat never renews (its
driver "stalls": Lease.renew is a no-op for A's run id), its engine task commits a chunk, then holds
(tests.support.engines: hold_until);
run B takes the lapsed leases over, moving the tables' fences, and answers every prompt; then A's task
goes on. On delta-rs A's executor commits are refused (fenced) and A fails saying so; on delta-spark A's
staged chunks reach the table only through a conflict-checked MERGE. Either way every key is there once.
The scripted engine (no model) answers, so the test needs no LLM.
"""

from __future__ import annotations

import threading

import pytest

from instructlake.jobs.lease import Lease, LeaseLost
from instructlake.jobs.runs import run_stage
from tests.support.prompts import real_prompts, seed_prompts

N = 2


@pytest.mark.backends
def test_a_stalled_run_and_the_run_that_took_over_leave_every_key_once(ctx_factory, shared_data, tmp_path, backend, monkeypatch):
    gate = tmp_path / "go"
    sets = (
        "llm.model_conf=conf/models/scripted.yaml", "generate.input=prompts", "generate.limit=null",
        f"generate.sampling.n={N}", "llm.chunk_rows=3", "llm.batch_size=3", "generate.tasks=1",
        f"generate.staging_dir={tmp_path / 'staging'}",
    )  # fmt: skip
    stalled = (
        "run.lease.ttl_s=2", "run.lease.heartbeat_s=1",
        "generate.backend=tests.support.engines:faulty",
        f"generate.engine_args={{inner: scripted, hold_after_calls: 1, hold_until: '{gate}'}}",
    )  # fmt: skip
    a = ctx_factory(*sets, *stalled)
    renew = Lease.renew
    monkeypatch.setattr(Lease, "renew", lambda lease: None if lease.run_id == a.run_id else renew(lease))  # A's driver stalls
    ids = seed_prompts(a, [(t, "en") for t in real_prompts(shared_data, "en_dolly_open_qa.jsonl", 12)])
    failure: list[BaseException] = []

    def run_a():
        try:
            run_stage(a, "generate")
        except BaseException as exc:  # the outcome under test
            failure.append(exc)

    thread = threading.Thread(target=run_a)
    thread.start()
    try:
        # A's task holds after its first chunk; wait until that chunk is committed (direct) or staged.
        staged = tmp_path / "staging" / "responses"
        wait_for(lambda: a.store.exists("responses") and (a.store.read("responses").count() > 0 or any(staged.glob("*.parquet"))))
        b = ctx_factory(*sets, "run.lease.wait_s=120")  # another driver: it waits until A's leases lapse
        second = run_stage(b, "generate")  # then takes them over and answers what is left
        assert 0 < second.rows_out < len(ids) * N  # A's first chunk was A's
    finally:
        gate.touch()  # whatever happened, A's task goes on and its job ends with this test
        thread.join(timeout=300)
    assert not thread.is_alive()

    responses = b.store.read("responses").toPandas()
    assert responses.response_id.is_unique, responses.response_id[responses.response_id.duplicated()].tolist()
    assert len(responses) == len(ids) * N and set(responses.prompt_id) == set(ids)
    runs = {r["run_id"]: r for r in b.store.rows("runs", {"stage": "generate"})}
    assert runs[b.run_id]["status"] == "succeeded" and runs[a.run_id]["status"] == "failed"
    assert failure and isinstance(failure[0], LeaseLost), failure
    if backend == "rs":  # the executor's next commit was refused by the fence: counted, nothing landed
        assert "chunk commit(s) refused" in str(failure[0]) and "epoch" in str(failure[0])
    else:  # the driver found its lease lapsed before it merged its staged chunks
        assert "lost its lease" in str(failure[0])


def wait_for(condition, timeout_s: float = 120.0) -> None:
    import time

    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "run A never committed its first chunk"
        time.sleep(0.2)
