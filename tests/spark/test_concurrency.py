"""Nothing doubled: the lease protocol in process, on both Delta backends (each takes and renews its
leases with its own MERGEs): one holder, waiting, expiry, dead holders, runs marked `abandoned`, and the
repair of lakes doubled before leases. The two-process runs are tests/cluster/test_concurrency.py.
"""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from instructlake.jobs.lease import HOST, Lease, LeaseHeld, mark_abandoned, run_resource
from instructlake.jobs.runs import run_stage
from instructlake.jobs.tables import KEYS
from tests.support.race import race
from tests.support.rows import frame, raw_rows

pytestmark = pytest.mark.backends  # leases and their repair are each backend's own MERGEs


def lease(ctx, run_id: str, resources=("prompts",), **conf):
    return Lease(ctx.store, ctx.conf.run.lease.model_copy(update=conf), run_id, "curate", list(resources))


def foreign_row(resource: str, *, expires_in_s: float, host: str = "other-host", pid: int = 1) -> dict:
    now = dt.datetime.now(dt.timezone.utc)  # at call time: the suite runs long after this module is imported
    return {
        "resource": resource, "lease_id": "f" * 16, "run_id": "other", "stage": "curate", "host": host, "pid": pid,
        "pid_started": None, "acquired_at": now, "heartbeat_at": now, "expires_at": now + dt.timedelta(seconds=expires_in_s),
        "created_at": now,
    }  # fmt: skip


def test_one_holder_at_a_time_and_a_clear_refusal(ctx_factory):
    ctx = ctx_factory()
    with lease(ctx, "run-a", ("prompts", "prompts_rejected")):
        with pytest.raises(LeaseHeld) as refused:
            lease(ctx, "run-b", ("prompts_rejected",)).acquire()
        assert "prompts_rejected is written by run run-a stage curate" in str(refused.value)
        assert f"host {HOST}" in str(refused.value) and "run.lease.wait_s" in str(refused.value)
        held = {r["resource"] for r in ctx.store.rows("leases")}
        assert held == {"prompts", "prompts_rejected", run_resource("run-a", "curate")}  # run-b took nothing
        with lease(ctx, "run-c", ("responses",)):  # other tables stay free
            pass
    assert ctx.store.rows("leases") == []  # released on exit
    with lease(ctx, "run-b", ("prompts_rejected",)):
        pass


def test_contenders_started_together_get_one_lease(ctx_factory):
    """Four threads race for one table: Delta's conflict on the leases table lets exactly one win."""
    ctx = ctx_factory()
    won, refused = race(lambda i: lease(ctx, f"run-{i}").acquire(), 4, LeaseHeld)
    assert len(won) == 1 and len(refused) == 3, (won, refused)
    (row,) = [r for r in ctx.store.rows("leases") if r["resource"] == "prompts"]
    assert row["run_id"] == f"run-{won[0]}"


def test_a_waiting_run_starts_when_the_holder_releases(ctx_factory):
    ctx = ctx_factory()
    holder = lease(ctx, "run-a")
    holder.acquire()
    threading.Timer(2.0, holder.release).start()
    t0 = time.monotonic()
    with lease(ctx, "run-b", wait_s=60):
        waited = time.monotonic() - t0
    assert 1.5 < waited < 30


def test_expired_and_dead_holders_are_taken_over_live_ones_are_not(ctx_factory):
    ctx = ctx_factory()
    store = ctx.store
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a pid on this host that no longer runs: a driver killed with SIGKILL
    store.upsert_where(
        [
            foreign_row("prompts", expires_in_s=-1),  # lapsed on another host
            foreign_row("responses", expires_in_s=600, host=HOST, pid=gone.pid),
            foreign_row("judgements", expires_in_s=600),  # live, another host
        ],
        "leases",
        "true",
    )
    with lease(ctx, "run-a", ("prompts", "responses")):
        pass
    with pytest.raises(LeaseHeld, match="judgements is written by run other"):
        lease(ctx, "run-a", ("judgements",)).acquire()


def test_heartbeat_renews_and_a_lapsed_lease_fails_the_writer(ctx_factory):
    ctx = ctx_factory()
    held = lease(ctx, "run-a", ttl_s=30, heartbeat_s=1)
    held.acquire()
    first = {r["resource"]: r["expires_at"] for r in ctx.store.rows("leases")}
    deadline = time.monotonic() + 120  # a delta-spark renewal takes seconds on a loaded machine
    while True:
        renewed = {r["resource"]: r["expires_at"] for r in ctx.store.rows("leases")}
        if all(renewed[k] > first[k] for k in first) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert all(renewed[k] > first[k] for k in first), (first, renewed)
    assert not held.lost
    held._stop.set()
    held._thread.join()
    held._renewed -= 100  # the driver stalled past ttl_s: the next renewal must refuse, the store too
    held.renew()
    ctx.store.guard = held.check
    try:
        with pytest.raises(Exception, match="lost its lease"):
            ctx.store.append(frame(ctx.spark, raw_rows(3)), "prompts_raw", run_id="run-a", stage="t")
    finally:
        ctx.store.guard = None
        held._release_rows()


def test_killed_runs_are_marked_abandoned_and_the_report_shows_it(ctx_factory, shared_data):
    ctx = ctx_factory()
    store = ctx.store
    now = dt.datetime.now(dt.timezone.utc)
    record = {"config": "{}", "started_at": now, "created_at": now, "status": "running"}
    store.write_rows([{**record, "run_id": "killed", "stage": "ingest"}, {**record, "run_id": "alive", "stage": "curate"}], "runs", run_id="t", stage="t")
    store.upsert_where(
        [foreign_row(run_resource("killed", "ingest"), expires_in_s=-5), foreign_row(run_resource("alive", "curate"), expires_in_s=600)],
        "leases",
        "true",
    )
    marked = mark_abandoned(store, ttl_s=300, exclude=("me", "report"))
    assert [(m["run_id"], m["stage"]) for m in marked] == [("killed", "ingest")]
    status = {r["run_id"]: r for r in store.rows("runs")}
    assert status["killed"]["status"] == "abandoned" and "stopped renewing its lease" in status["killed"]["error"]
    assert status["alive"]["status"] == "running"
    # The dead lease stays until a run needs it: taking it over moves the fences of its tables, so a holder
    # that only looked dead lands nothing afterwards (deleted, it would look released).
    assert {r["resource"] for r in store.rows("leases")} == {run_resource("alive", "curate"), run_resource("killed", "ingest")}

    run_stage(ctx, "report")
    page = (Path(ctx.conf.report.path).resolve() / "index.html").read_text(encoding="utf-8")
    assert "abandoned" in page and "stopped renewing its lease" in page


def test_maintain_repairs_a_doubled_table_keeping_the_newest_row(ctx_factory):
    ctx = ctx_factory("maintain.compact=false", "maintain.vacuum=false")
    store = ctx.store
    old = raw_rows(20)
    new = [{**r, "text": r["text"] + " (newer)", "run_id": "later", "created_at": r["created_at"] + dt.timedelta(hours=1)} for r in old[:10]]
    # Two blind appends of one key set: what two concurrent runs left before leases.
    store.append(frame(ctx.spark, old), "prompts_raw", run_id="a", stage="t", chunk="a")
    store.append(frame(ctx.spark, new), "prompts_raw", run_id="b", stage="t", chunk="b")
    assert store.read("prompts_raw").count() == 30
    result = run_stage(ctx, "maintain")
    assert result.stats["tables"]["prompts_raw"]["duplicates_removed"] == 10
    df = store.read("prompts_raw").toPandas()
    assert len(df) == 20 and not df.duplicated(list(KEYS["prompts_raw"])).any()
    assert (df[df.text.str.endswith("(newer)")].run_id == "later").sum() == 10
    version = store.version("prompts_raw")
    assert run_stage(ctx, "maintain").stats["tables"]["prompts_raw"]["duplicates_removed"] == 0
    assert store.version("prompts_raw") == version  # nothing to repair: no commit

