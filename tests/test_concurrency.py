"""Nothing doubled: two runs on one lake, on both Delta backends.

In process: the lease protocol itself (one holder, waiting, expiry, dead holders, runs marked
`abandoned`) and the repair of lakes doubled before leases. As users run it: two `instructlake` processes
started together on one lake, a pipeline pair and then a generate pair, end with the tables one run leaves.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from instructlake.jobs.lease import HOST, Lease, LeaseHeld, mark_abandoned, run_resource
from instructlake.jobs.runs import run_stage
from instructlake.jobs.tables import KEYS

from .conftest import IVY_DIR, REPO
from .test_store import frame, raw_rows



def lease(ctx, run_id: str, resources=("prompts",), **conf):
    return Lease(ctx.store, ctx.conf.run.lease.model_copy(update=conf), run_id, "curate", list(resources))


def foreign_row(resource: str, *, expires_in_s: float, host: str = "other-host", pid: int = 1) -> dict:
    now = dt.datetime.now(dt.timezone.utc)  # at call time: the suite runs long after this module is imported
    return {
        "resource": resource, "lease_id": "f" * 16, "run_id": "other", "stage": "curate", "host": host, "pid": pid,
        "pid_started": None, "acquired_at": now, "heartbeat_at": now, "expires_at": now + dt.timedelta(seconds=expires_in_s),
        "created_at": now,
    }  # fmt: skip


# ---- the lease protocol ----------------------------------------------------------------------------------


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
    won, refused, go = [], [], threading.Barrier(4)

    def contend(i):
        go.wait()
        try:
            lease(ctx, f"run-{i}").acquire()
            won.append(i)
        except LeaseHeld:
            refused.append(i)

    threads = [threading.Thread(target=contend, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
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
    assert {r["resource"] for r in store.rows("leases")} == {run_resource("alive", "curate")}  # the dead lease is gone

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


# ---- two processes on one lake ---------------------------------------------------------------------------

INPUTS = ("en_arena_hard_v0.1.jsonl", "en_self_instruct_seed_tasks.jsonl")
LLM = ("generate.input=prompts", "generate.limit=24", "generate.sampling.n=2", "generate.sampling.max_tokens=8", "generate.chunk_rows=4")


def sets_for(lake: Path, work: Path, backend: str, shared_data: Path, *extra: str) -> list[str]:
    inputs = ", ".join(f"{{path: '{shared_data / 'prompts' / f}'}}" for f in INPUTS)
    pairs = [
        f"run.lake_root={lake}", f"run.work_dir={work}", f"delta.ivy_dir={IVY_DIR}", f"delta.backend={backend}",
        "spark.fast_jvm_start=true", f"ingest.inputs=[{inputs}]", *LLM, *extra,
    ]  # fmt: skip
    return [a for p in pairs for a in ("--set", p)]


def start(command: str, sets: list[str]) -> subprocess.Popen:
    # Output to files, not pipes: a run that waits for another's lease must never wait on a full pipe
    # that nobody reads (the JVM logs enough to fill one).
    fd, log = tempfile.mkstemp(prefix=f"{command}-", suffix=".log")
    proc = subprocess.Popen(
        [sys.executable, "-m", "instructlake.jobs.cli", command, "--conf", "conf/local.yaml", *sets],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=fd,
    )  # fmt: skip
    os.close(fd)
    proc.log = log
    return proc


def finish(procs: list[subprocess.Popen]) -> list[tuple[int, str]]:
    """(exit status, stderr) of each process, once all have exited."""
    codes = [p.wait(timeout=1200) for p in procs]
    out = []
    for rc, p in zip(codes, procs):
        out.append((rc, Path(p.log).read_text(encoding="utf-8", errors="replace")))
        os.unlink(p.log)
    return out


def tables(ctx, names) -> dict[str, pd.DataFrame]:
    out = {}
    for name in names:
        df = ctx.store.read(name).toPandas()
        df = df.drop(columns=[c for c in ("run_id", "created_at", "latency_s") if c in df.columns]).astype(str)
        out[name] = df.sort_values(list(KEYS[name])).reset_index(drop=True)
    return out


@pytest.mark.timeout(3000)
def test_two_pipelines_then_two_generate_runs_at_once(ctx_factory, backend, shared_data, work_dir, tmp_path):
    lake, work = tmp_path / "lake", work_dir
    sets = sets_for(lake, work, backend, shared_data, "pipeline.stages=[ingest,curate]")
    a = start("pipeline", sets)
    # B starts once A holds its first lease (a JVM start later): started together as far as users can.
    deadline = time.monotonic() + 300
    while not (lake / "leases" / "_delta_log").is_dir() or not _held(lake):
        assert a.poll() is None and time.monotonic() < deadline, Path(a.log).read_text()[-3000:] if a.poll() is not None else "A never leased"
        time.sleep(0.5)
    b = start("pipeline", sets)
    (rc_a, err_a), (rc_b, err_b) = finish([a, b])
    assert rc_a == 0, err_a[-3000:]
    assert rc_b == 75, err_b[-3000:]  # refused before writing: one clear line naming who holds what
    refusal = [l for l in err_b.splitlines() if l.startswith("instructlake: ")]
    assert len(refusal) == 1 and "cannot start" in refusal[0] and "is written by run" in refusal[0], err_b[-2000:]

    # B wrote nothing, so the lake is what one run leaves: A's two stage records, each key once.
    ctx = ctx_factory(f"run.lake_root={lake}")
    assert sorted((r["stage"], r["status"]) for r in ctx.store.rows("runs")) == [("curate", "succeeded"), ("ingest", "succeeded")]
    assert len({r["run_id"] for r in ctx.store.rows("runs")}) == 1
    for name, df in tables(ctx, ["prompts_raw", "prompts_rejected", "prompts"]).items():
        assert len(df) and not df.duplicated(list(KEYS[name])).any(), name
    assert ctx.store.read("prompts_raw").count() == sum(1 for f in INPUTS for _ in open(shared_data / "prompts" / f, encoding="utf-8"))

    # Two generate runs at once, the second told to wait: it waits, then finds every prompt answered.
    gen = sets_for(lake, work, backend, shared_data, "run.lease.wait_s=900")
    (rc1, e1), (rc2, e2) = finish([start("generate", gen), start("generate", gen)])
    assert rc1 == 0 and rc2 == 0, (e1[-2000:], e2[-2000:])
    assert "waits:" in e1 + e2  # one of them did wait for the other's lease
    responses = ctx.store.read("responses").toPandas()
    assert len(responses) == 24 * 2 and responses.response_id.is_unique
    assert responses.groupby("prompt_id").size().eq(2).all() and responses.prompt_id.nunique() == 24
    statuses = sorted(r["status"] for r in ctx.store.rows("runs", {"stage": "generate"}))
    assert statuses == ["succeeded", "succeeded"]
    assert ctx.store.rows("leases") == []  # every run released what it held
    print(f"\n[{backend}] pipelines: A rc 0, B rc 75 ({refusal[0][:160]}...); generate pair: {len(responses)} responses")


def _held(lake: Path) -> bool:
    from deltalake import DeltaTable

    try:
        return any(not r["resource"].startswith("run:") for r in DeltaTable(str(lake / "leases")).to_pyarrow_table().to_pylist())
    except Exception:  # being created
        return False
