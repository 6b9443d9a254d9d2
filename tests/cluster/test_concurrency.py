"""Nothing doubled, as users run it: two `instructlake` processes started together on one lake, on both
Delta backends. A pipeline pair (the second is refused with exit status 75 and writes nothing), then a
generate pair (the second waits for the lease, then finds every prompt answered).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import pytest

from instructlake.jobs.tables import KEYS
from tests.support.lake import IVY_DIR, REPO

# One file of real prompts: the race is over the leases, which a small input takes as a large one would.
INPUTS = ("en_self_instruct_seed_tasks.jsonl",)


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
@pytest.mark.backends
def test_two_pipelines_then_two_generate_runs_at_once(ctx_factory, backend, shared_data, work_dir, tmp_path):
    lake, work = tmp_path / "lake", work_dir
    sets = sets_for(lake, work, backend, shared_data, "pipeline.stages=[ingest,curate]")
    # Started together: whichever leases first runs, the other finds its tables held.
    (rc_a, err_a), (rc_b, err_b) = finish([start("pipeline", sets), start("pipeline", sets)])
    assert sorted([rc_a, rc_b]) == [0, 75], (err_a[-3000:], err_b[-3000:])
    err_b = err_b if rc_b == 75 else err_a  # the refused one: refused before writing, one clear line naming who holds what
    refusal = [line for line in err_b.splitlines() if line.startswith("instructlake: ")]
    assert len(refusal) == 1 and "cannot start" in refusal[0] and "is written by run" in refusal[0], err_b[-2000:]

    # The refused run wrote nothing, so the lake is what one run leaves: two stage records, each key once.
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
    print(f"\n[{backend}] pipelines: rc 0 and rc 75 ({refusal[0][:160]}...); generate pair: {len(responses)} responses")

