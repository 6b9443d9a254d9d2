"""The command line as a user runs it: a stage in a subprocess, then `instructlake sql` over its tables; a
pipeline that another run's lease would stop at its second stage is refused before its first."""

import json

import pytest

from instructlake.jobs import cli as cli_main
from instructlake.jobs import runs
from instructlake.jobs.lease import Lease
from instructlake.jobs.runs import run_stage
from tests.support.cli import cli
from tests.support.lake import REPO


@pytest.mark.spark  # the ingest runs Spark in the subprocess
def test_ingest_then_sql_count_matches(tmp_path, shared_data):
    sets = [
        "--set", f"run.lake_root={tmp_path / 'lake'}", "--set", f"run.work_dir={tmp_path / 'work'}",
        "--set", f"ingest.inputs=[{{path: '{shared_data}/prompts/en_self_instruct_seed_tasks.jsonl'}}]",
    ]  # fmt: skip
    run = cli("ingest", "--conf", "conf/local.yaml", *sets)
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads(run.stdout[run.stdout.index("{") :])
    assert summary["stages"][0]["rows_out"] == 175
    assert summary["tables"]["prompts_raw"] == str(tmp_path / "lake" / "prompts_raw")

    q = cli("sql", "SELECT count(*) AS n FROM prompts_raw", "--format", "json", *sets)
    assert q.returncode == 0, q.stderr
    assert json.loads(q.stdout) == {"n": 175}
    q = cli("sql", "SELECT stage, status, rows_in FROM runs", "--format", "csv", *sets)
    assert q.stdout.splitlines() == ["stage,status,rows_in", "ingest,succeeded,175"]
    table = cli("sql", "SELECT count(*) FROM prompts_raw", *sets)
    assert "175" in table.stdout


def test_secrets_never_reach_the_runs_table(ctx_factory, tmp_path, monkeypatch):
    token = "hf_TopSecret0123456789"
    monkeypatch.setenv("HF_TOKEN", token)
    # The secret also leaks into a non-secret field (a path) and into the error message.
    ctx = ctx_factory(f"ingest.inputs=[{{path: '{tmp_path}/{token}/*.jsonl'}}]")
    assert ctx.conf.secrets["hf_token"] == token
    with pytest.raises(FileNotFoundError):
        run_stage(ctx, "ingest")
    rows = [r.asDict() for r in ctx.store.read("runs").collect()]
    assert rows and rows[0]["status"] == "failed"
    dumped = json.dumps(rows, default=str)
    assert token not in dumped
    assert "***REDACTED***" in rows[0]["config"] and "***REDACTED***" in rows[0]["error"]


class FakeWidgets:
    """Stands in for Databricks' dbutils.widgets (no Databricks here): text() declares, get() reads."""

    def __init__(self, values):
        self.values = dict(values)

    def text(self, name, default, label=None):
        self.values.setdefault(name, default)

    def get(self, name):
        return self.values[name]


def test_notebook_helper_runs_a_stage_from_widgets(spark, tmp_path, shared_data):
    from types import SimpleNamespace

    from instructlake.jobs.notebook import run_stage_from_widgets

    sets = (
        f"run.lake_root={tmp_path / 'lake'} run.work_dir={tmp_path / 'work'} "
        f"\"ingest.inputs=[{{path: '{shared_data}/prompts/en_self_instruct_seed_tasks.jsonl'}}]\""
    )
    dbutils = SimpleNamespace(widgets=FakeWidgets({"conf": str(REPO / "conf" / "local.yaml"), "sets": sets, "run_id": "nb-run-1"}))
    shown = []
    summary = run_stage_from_widgets(spark, dbutils, "ingest", shown.append)
    assert shown[0].first().rows_out == 175
    assert (summary["run_id"], summary["stage"], summary["rows_out"]) == ("nb-run-1", "ingest", 175)
    assert summary["locations"]["prompts_raw"] == str(tmp_path / "lake" / "prompts_raw")



def test_a_pipeline_refused_at_its_second_stage_writes_nothing(ctx_factory, tmp_path, shared_data, spark, monkeypatch, capsys):
    """Another run holds `prompts` (curate's): `instructlake pipeline` of ingest, curate exits 75 with one
    line naming the holder before ingest writes a row, and leaves no lease of its own behind."""
    ctx = ctx_factory()
    holder = Lease(ctx.store, ctx.conf.run.lease, "other-run", "curate", ["prompts"])
    holder.acquire()
    try:
        monkeypatch.setattr(runs, "build_session", lambda conf: spark)  # the test's session, not a second JVM
        sets = [
            f"run.lake_root={tmp_path / 'lake'}", f"run.work_dir={tmp_path / 'work'}", "delta.backend=rs",
            "pipeline.stages=[ingest, curate]", f"ingest.inputs=[{{path: '{shared_data}/prompts/en_self_instruct_seed_tasks.jsonl'}}]",
        ]  # fmt: skip
        rc = cli_main.main(["pipeline", "--conf", str(REPO / "conf" / "local.yaml"), *(a for s in sets for a in ("--set", s))])
        refusal = [line for line in capsys.readouterr().err.splitlines() if line.startswith("instructlake:")]
        assert rc == cli_main.EX_TEMPFAIL, refusal
        assert len(refusal) == 1 and "pipeline ingest, curate cannot start: prompts is written by run other-run stage curate" in refusal[0]
        assert not ctx.store.exists("prompts_raw") and not ctx.store.exists("prompts_rejected")
        assert not ctx.store.exists("runs") or ctx.store.rows("runs") == []
        assert {r["run_id"] for r in ctx.store.rows("leases")} == {"other-run"}  # the refused run took nothing
    finally:
        holder.release()
