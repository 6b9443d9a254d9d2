"""The pipeline on a real Spark standalone cluster (tests/support/standalone.py: a master and two workers, each its
own JVM on 127.0.0.1, two fake GPUs per worker), submitted with deploy/spark-submit.sh as a user would:
client mode, delta-spark from Maven through --packages, the executors' code from the wheel's zip.

The tests share one cluster, one scratch dir (the tiny model is built once) and one clean submission of the
whole pipeline, ingest to maintain: it checks the stage-level GPU profile (engine tasks hold distinct GPU
addresses, which become their engines' CUDA_VISIBLE_DEVICES; every other stage, ingest and curate included,
holds none, per the Spark event log), and its curated tables are copied into a lake of its own by each fault
run, which submits generate alone: losing a worker and losing the driver in the middle of generate. Finished
runs, faults or not, give the same tables.
Tables are read back with delta-rs (the `deltalake` package): no Spark in the test process.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
from deltalake import DeltaTable

from tests.support.lake import REPO
from tests.support.standalone import StandaloneCluster, tail

VENV_BIN = REPO / ".venv" / "bin"


N = 2  # samples per prompt


LIMIT = 24  # prompts generate answers


TASKS = 4  # engine tasks: one per GPU slot (2 executors x 2 GPUs)


# Long enough answers that an engine task runs for seconds, so the faults below land inside one.
MAX_TOKENS = 256


RUN_TIMEOUT_S = 600


# The columns a run stamps on what it writes, and responses.latency_s, a wall-clock measurement.
RUN_COLUMNS = {"run_id", "created_at", "latency_s"}


# Tables about the run itself rather than its data: runs (timings, run ids), expectation_results (keyed by run).
RUN_TABLES = {"runs", "expectation_results", "leases"}


pytestmark = [pytest.mark.cluster, pytest.mark.skipif(not (VENV_BIN / "spark-submit").is_file(), reason="needs the project venv's pyspark")]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = StandaloneCluster(tmp_path_factory.mktemp("cluster"))
    try:
        yield c.start()
    finally:
        c.stop()


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cluster_scratch")


@pytest.fixture(scope="module")
def finished() -> dict[str, Path]:
    """Lakes of the runs that completed, by test, for the comparison at the end."""
    return {}


class Submission:
    """One deploy/spark-submit.sh run in a process group of its own (so it can be killed with its driver)."""

    def __init__(
        self, cluster: StandaloneCluster, root: Path, scratch: Path, input_file: Path, command: str = "pipeline",
        stages: str | None = None, extra: tuple[str, ...] = (),
    ):  # fmt: skip
        self.cluster, self.root, self.lake = cluster, root, root / "lake"
        self.events = root / "events"
        self.events.mkdir(parents=True, exist_ok=True)
        conf_dir = root / "spark-conf"  # the cluster's spark-defaults, as a user's SPARK_CONF_DIR holds them
        conf_dir.mkdir(exist_ok=True)
        # One plain JSON file per application, for the assertions. Delta's default of 50 partitions for
        # reading a table's log, and VACUUM's listing in up to 10,000 tasks, cost minutes over a pipeline
        # run on tables this small.
        (conf_dir / "spark-defaults.conf").write_text(
            f"spark.eventLog.enabled true\nspark.eventLog.dir file://{self.events}\n"
            "spark.eventLog.rolling.enabled false\nspark.eventLog.compress false\nspark.ui.enabled false\n"
            "spark.databricks.delta.snapshotPartitions 2\nspark.sql.sources.parallelPartitionDiscovery.parallelism 4\n"
        )
        self.log = root / f"submit-{len(list(root.glob('submit-*.log')))}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYSPARK_", "SPARK_", "INSTRUCTLAKE_"))}
        env.update(
            SPARK_SUBMIT=str(VENV_BIN / "spark-submit"), SPARK_MASTER=cluster.url, SPARK_CONF_DIR=str(conf_dir),
            SPARK_LOCAL_IP="127.0.0.1",
            # Absolute: executors run it from their own working directories.
            INSTRUCTLAKE_CLUSTER_PYTHON=str(VENV_BIN / "python"), PYSPARK_DRIVER_PYTHON=str(VENV_BIN / "python"),
            INSTRUCTLAKE_LAKE_ROOT=str(self.lake), INSTRUCTLAKE_INPUT=str(input_file), INSTRUCTLAKE_SCRATCH=str(scratch),
            EXTRA_PACKAGES="",  # local paths: no S3 connector
            NUM_EXECUTORS="2", EXECUTOR_GPUS="2", EXECUTOR_CORES="2", EXECUTOR_MEMORY="1g",
            EXECUTOR_MEMORY_OVERHEAD="512m", DRIVER_MEMORY="1g", DIST_DIR=str(root / "dist"),
        )  # fmt: skip
        sets = [
            "spark.shuffle_partitions=4", "generate.model_conf=conf/models/tiny-local.yaml", "generate.device=cpu",
            f"generate.limit={LIMIT}", f"generate.sampling.n={N}", f"generate.sampling.max_tokens={MAX_TOKENS}",
            f"generate.tasks={TASKS}", "generate.chunk_rows=2", "generate.batch_size=2", "generate.progress_interval_s=5",
            f"export.path={root / 'exports'}", f"report.path={root / 'reports'}",
            *([f"pipeline.stages={stages}"] if stages else []), *extra,
        ]  # fmt: skip
        args = [str(REPO / "deploy" / "spark-submit.sh"), command, *[a for s in sets for a in ("--set", s)]]
        self.started = time.monotonic()
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                args, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )  # fmt: skip

    def wait(self) -> float:
        """Wait for the run to end, assert it succeeded; its wall time."""
        try:
            rc = self.proc.wait(timeout=RUN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.kill()
            rc = None
        assert rc == 0, f"spark-submit.sh exited {rc}:\n{tail(self.log, 80)}\n{self.cluster.logs(30)}"
        return time.monotonic() - self.started

    def kill(self) -> None:
        """SIGKILL spark-submit.sh, spark-submit's JVM and the Python driver, all in its process group."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def staged_responses(self) -> list[Path]:
        return sorted((self.lake / "_staging" / "responses").glob("*.parquet"))

    def wait_for_staged_responses(self, timeout_s: float = 300.0) -> None:
        """Until an engine task has committed its first chunk (a staged file), so generate is under way."""
        deadline = time.monotonic() + timeout_s
        while not self.staged_responses():
            assert self.proc.poll() is None, f"the run ended before generate staged anything:\n{tail(self.log, 80)}"
            assert time.monotonic() < deadline, f"no staged responses after {timeout_s:.0f}s:\n{tail(self.log, 80)}"
            time.sleep(0.2)

    def event_logs(self) -> list[list[dict]]:
        """The event logs of the applications that ended (a killed one's stays `.inprogress`, cut mid-line)."""
        logs = sorted(p for p in self.events.iterdir() if not p.name.endswith(".inprogress"))
        return [[json.loads(line) for line in p.read_text().splitlines()] for p in logs]


def table(lake: Path, name: str) -> pd.DataFrame:
    return DeltaTable(str(lake / name)).to_pandas()


def runs(lake: Path, stage: str) -> pd.DataFrame:
    df = table(lake, "runs")
    return df[df.stage == stage].sort_values("started_at")


def generate_stats(lake: Path) -> list[dict]:
    """The stats of every generate run that finished, oldest first."""
    return [json.loads(s) for s in runs(lake, "generate").query("status == 'succeeded'").stats]


def assert_answered_exactly_n(lake: Path) -> pd.DataFrame:
    """Every selected prompt has exactly N responses, one per sample index, and no response id twice."""
    df = table(lake, "responses")
    stats = generate_stats(lake)[-1]
    assert not df.response_id.duplicated().any()
    per_prompt = df.groupby("prompt_id").sample_index.apply(sorted)
    assert len(per_prompt) == stats["selected"] == LIMIT, stats
    assert all(s == list(range(N)) for s in per_prompt), per_prompt[per_prompt.map(len) != N]
    return df


@pytest.fixture(scope="module")
def input_file(shared_data) -> Path:
    return shared_data / "prompts" / "en_self_instruct_seed_tasks.jsonl"  # 175 real prompts


CURATED_TABLES = ("prompts_raw", "prompts_rejected", "prompts")


# The whole pipeline in one application (one driver, one pair of executors: on two cores each application
# costs a minute of JVM and Python start-up); maintain compacts what generate committed in chunks (the other
# tables' upkeep is the spark tier's maintain tests, on both backends).
PIPELINE = "[ingest,curate,generate,quality,export,report,maintain]"


@pytest.fixture(scope="module")
def clean(cluster, scratch, input_file, tmp_path_factory) -> Submission:
    """The clean run of the whole pipeline: every fault run starts from a copy of its curated tables."""
    run = Submission(cluster, tmp_path_factory.mktemp("clean"), scratch, input_file, stages=PIPELINE,
                     extra=("maintain.tables=[responses,generation_errors]",))  # fmt: skip
    run.wall_s = run.wait()
    return run


def lake_from(clean: Submission, root: Path) -> Path:
    """A lake of its own under root holding the curated tables (Delta tables are self-contained dirs)."""
    for name in CURATED_TABLES:
        shutil.copytree(clean.lake / name, root / "lake" / name)
    return root


# ---- the clean run: the GPU profile --------------------------------------------------------------------


def test_pipeline_on_the_cluster_gives_engine_tasks_distinct_gpus(cluster, clean, finished):
    run = clean
    print(f"\ncluster pipeline run: {run.wall_s:.1f}s wall")

    assert set(table(run.lake, "runs").stage) == {"ingest", "curate", "generate", "quality", "export", "report", "maintain"}
    assert_answered_exactly_n(run.lake)
    (stats,) = generate_stats(run.lake)
    assert stats["commit"] == "staged" and stats["rows_written"] == LIMIT * N

    # Each engine task: its own GPU, the one its engine was built with, on the worker that has it.
    tasks = stats["engine_tasks"]
    assert sorted(t["partition"] for t in tasks) == list(range(TASKS)) and all(t["attempt"] == 0 for t in tasks)
    assert sorted(t["gpus"] for t in tasks) == ["0", "1", "2", "3"], tasks
    assert all(t["cuda_visible_devices"] == t["gpus"] for t in tasks), tasks
    (events,) = run.event_logs()
    executors = executor_workers(cluster, app_id(events))
    assert all(t["gpus"] in cluster.worker_gpus(executors[t["executor"]]) for t in tasks), (tasks, executors)
    profiles = resource_profiles(events)
    stage_profile = {s["Stage ID"]: (s["Stage Name"], s["Resource Profile Id"]) for s in stage_infos(events)}
    gpu_stages = {sid for sid, (_, rp) in stage_profile.items() if "gpu" in profiles[rp]["Task Resource Requests"]}
    assert gpu_stages, profiles
    # Only the engine job's stage asked for GPUs; every other stage of the application (ingest, curate,
    # quality and the rest) ran with the default profile, whose tasks request none.
    assert all("job.py" in stage_profile[sid][0] for sid in gpu_stages), stage_profile  # jobs/llm/job.py: the engine job
    assert {rp for sid, (_, rp) in stage_profile.items() if sid not in gpu_stages} == {0}
    assert len(stage_profile) - len(gpu_stages) > 10  # ingest's and curate's stages among them
    assert "gpu" not in profiles[0]["Task Resource Requests"] and "gpu" in profiles[0]["Executor Resource Requests"]
    (gpu_rp,) = {stage_profile[sid][1] for sid in gpu_stages}
    assert profiles[gpu_rp]["Task Resource Requests"]["gpu"]["Amount"] == 1.0
    # The four engine tasks ran at the same time, so distinct addresses mean no GPU was handed out twice.
    spans = task_spans(events, gpu_stages)
    assert {s["task"] for s in spans} == {t["task_attempt_id"] for t in tasks}
    assert max(s["launch"] for s in spans) < min(s["finish"] for s in spans), spans
    assert {s["task"]: s["executor"] for s in spans} == {t["task_attempt_id"]: t["executor"] for t in tasks}
    finished["clean"] = run.lake


def app_id(events: list[dict]) -> str:
    return next(e["App ID"] for e in events if e["Event"].endswith("ApplicationStart"))


def executor_workers(cluster: StandaloneCluster, app: str) -> dict[str, int]:
    """Executor id -> the worker that ran it, from the workers' work dirs (<work>/<app>/<executor id>/)."""
    return {p.name: i for i in range(cluster.workers) for p in (cluster.root / f"worker-{i}" / app).glob("*")}


def resource_profiles(events: list[dict]) -> dict[int, dict]:
    return {e["Resource Profile Id"]: e for e in events if e["Event"].endswith("ResourceProfileAdded")}


def stage_infos(events: list[dict]) -> list[dict]:
    return [e["Stage Info"] for e in events if e["Event"].endswith("StageSubmitted")]


def task_spans(events: list[dict], stages: set[int]) -> list[dict]:
    """Successful tasks of `stages`: task id, executor, launch and finish times."""
    return [
        {"task": i["Task ID"], "executor": i["Executor ID"], "launch": i["Launch Time"], "finish": i["Finish Time"]}
        for e in events
        if e["Event"].endswith("TaskEnd") and e["Stage ID"] in stages and e["Task End Reason"]["Reason"] == "Success"
        for i in [e["Task Info"]]
    ]


# ---- faults --------------------------------------------------------------------------------------------

# The fault runs are generate alone, on copies of the curated tables: the stages after it are the clean
# run's business, and on two cores each costs a minute.


def test_losing_a_worker_mid_generate(cluster, scratch, input_file, clean, tmp_path, finished):
    run = Submission(cluster, lake_from(clean, tmp_path), scratch, input_file, command="generate")
    try:
        run.wait_for_staged_responses()
        cluster.kill_worker(1)  # the node goes: worker, executor, Python workers, engines
        wall_s = run.wait()
    finally:
        cluster.restart_dead_workers()  # after the run, so it finishes on what was left; for the next tests
    assert_answered_exactly_n(run.lake)
    (stats,) = generate_stats(run.lake)
    events = [e for log in run.event_logs() for e in log]
    lost = [e for e in events if e["Event"].endswith("TaskEnd") and e["Task End Reason"]["Reason"] == "ExecutorLostFailure"]
    assert lost, "the kill landed after every engine task had finished"
    # What the lost executor was running ran again on the one left, on worker 0's GPUs.
    retried = [t for t in stats["engine_tasks"] if t["attempt"] > 0]
    assert retried and {t["gpus"] for t in retried} <= set(cluster.worker_gpus(0)), stats["engine_tasks"]
    assert all(t["cuda_visible_devices"] in (None, *cluster.worker_gpus(0)) for t in retried), retried
    print(f"\nworker killed mid-generate: run finished in {wall_s:.1f}s, {len(lost)} task(s) lost, "
          f"{stats['chunks_skipped']} chunk(s) skipped on retry, {stats['rows_written']} rows")  # fmt: skip
    finished["worker_killed"] = run.lake


TWO_TASKS = ("generate.tasks=2",)


def test_losing_the_driver_mid_generate(cluster, scratch, input_file, clean, tmp_path, finished):
    cluster.wait_idle()  # the restarted worker has registered and the last application is gone
    # Two engine tasks, not four: losing the driver loses every task whatever their number, and each
    # engine start costs seconds on these cores.
    killed = Submission(cluster, lake_from(clean, tmp_path), scratch, input_file, command="generate", extra=TWO_TASKS)
    killed.wait_for_staged_responses()
    killed.kill()
    cluster.wait_idle()  # the master dropped the application and its executors (and their engines)
    staged = killed.staged_responses()
    assert staged, "the driver's own merge ran before the kill"
    generating = runs(killed.lake, "generate")
    assert list(generating.status) == ["running"]  # the dead driver never finished the stage

    rerun = Submission(cluster, tmp_path, scratch, input_file, command="generate", extra=TWO_TASKS)
    wall_s = rerun.wait()
    assert_answered_exactly_n(rerun.lake)
    assert not killed.staged_responses()
    (stats,) = generate_stats(rerun.lake)
    recovered = stats["recovered"]["responses"]
    assert recovered["files"] == len(staged) and recovered["inserted"] > 0, stats["recovered"]
    assert stats["done_before"] == recovered["inserted"] // N and stats["todo"] == LIMIT - stats["done_before"], stats
    print(f"\ndriver killed mid-generate: {len(staged)} staged file(s) ({recovered['inserted']} rows) merged by the "
          f"re-run, which answered the other {stats['todo']} prompts in {wall_s:.1f}s")  # fmt: skip
    finished["driver_killed"] = rerun.lake


# ---- reproducibility -----------------------------------------------------------------------------------


def data_tables(lake: Path) -> dict[str, pd.DataFrame]:
    """Every data table of a lake, without the columns a run stamps, rows in key order."""
    out = {}
    for path in sorted(p.parent for p in lake.glob("*/_delta_log")):
        if path.name in RUN_TABLES:
            continue
        df = table(lake, path.name)
        df = df.drop(columns=[c for c in df.columns if c in RUN_COLUMNS]).astype(str)  # arrays compare as text
        out[path.name] = df.sort_values(list(df.columns)).reset_index(drop=True)
    return out


def test_finished_runs_give_identical_tables(cluster, scratch, input_file, clean, tmp_path_factory, finished):
    """The clean run, the run that lost a worker and the run resumed after losing its driver give the same
    tables (any that -k left out are replaced by clean runs): seeds per request and keyed merges make the
    output independent of placement, retries and resumption."""
    while len(finished) < 3:
        root = lake_from(clean, tmp_path_factory.mktemp("extra_run"))
        Submission(cluster, root, scratch, input_file, command="generate").wait()
        finished[root.name] = root / "lake"
    lakes = {name: data_tables(lake) for name, lake in finished.items()}
    (first, reference), *others = lakes.items()
    for name, tables in others:
        shared = sorted(set(reference) & set(tables))
        assert {"prompts_raw", "prompts", "prompts_rejected", "responses"} <= set(shared), shared
        for t in shared:
            pd.testing.assert_frame_equal(reference[t], tables[t], obj=f"{t}: {first} vs {name}")
    assert len(reference["responses"]) == LIMIT * N

