"""Shared fixtures and the tiers: a test's tier is its folder (tests/<tier>/), helpers live in tests/support.

One local SparkSession per test run holds delta-spark's jars (resolved from Maven Central once into
IVY_DIR), so one JVM serves both Delta backends. A test builds its Context through `ctx_factory`, on
delta-rs unless it asks for both: `@pytest.mark.backends` runs it once per backend, for the tests whose
subject is the backend (the store's contract, direct and staged commits, leases and concurrency,
crash/resume, the parity run). Every other stage test's behaviour is the stage's, not the writer's.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest

from tests.support.lake import BACKENDS, REPO, SHARED_DATA, make_conf

# Fixtures that tests of several tiers use live in these support modules.
pytest_plugins = ("tests.support.decontam", "tests.support.deploy")

TIERS = {
    "unit": "no Spark, no engine, no subprocess jobs (the whole tier runs in under a minute)",
    "spark": "a real SparkSession (local[2]) and Delta tables, no LLM engine",
    "engine": "the real vLLM engine on the CPU (with the tiny local model), mostly through Spark",
    "cluster": "a standalone Spark cluster, spark-submit, or several concurrent driver processes",
}


# tier -> tests, seconds of their setup, call and teardown, outcomes: printed at the end of the run. Counted
# from the reports, which reach the controlling process under pytest-xdist too.
TIER_STATS: dict[str, dict] = defaultdict(lambda: {"tests": 0, "seconds": 0.0, "outcomes": defaultdict(int)})
# The order the tiers run in: the fastest first, so a broken unit test fails the run within a minute.
SCHEDULE = ("unit", "spark", "engine", "cluster")
STARTED = pytest.StashKey[float]()


def pytest_configure(config):
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    # Importing pyspark.sql.connect (great_expectations tries it) exits the process when __main__ has
    # neither __file__ nor __spec__ (pyspark takes that for a doctest run), as in a pytest-xdist worker.
    # Outside xdist the import fails with ImportError when Spark Connect's client dependencies are missing,
    # and great_expectations goes on without it: the same here. (Giving __main__ a __file__ instead would
    # break multiprocessing's spawn, which imports __main__ by it.)
    main = sys.modules["__main__"]
    connect_deps = all(importlib.util.find_spec(m) for m in ("grpc_status", "zstandard"))
    if getattr(main, "__spec__", None) is None and not hasattr(main, "__file__") and not connect_deps:
        sys.modules.setdefault("pyspark.sql.connect", None)
    # Spark's Python workers and the subprocesses tests start inherit this, so they import tests.support
    # (the test-only engine backends of tests/support/engines.py) as the test process does.
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU (skipped without one)")
    config.addinivalue_line("markers", "backends: run once per Delta backend (the backend is what is under test)")
    for name, text in TIERS.items():
        config.addinivalue_line("markers", f"{name}: tier: {text}")


def tier_of(path: Path, root: Path) -> str:
    parts = path.relative_to(root / "tests").parts
    if len(parts) < 2 or parts[0] not in TIERS:
        raise pytest.UsageError(f"{path}: a test lives in a tier folder, tests/<{'|'.join(TIERS)}>/")
    return parts[0]


@pytest.hookimpl(trylast=True)  # after pytest's own reordering by session-scoped params (the backend)
def pytest_collection_modifyitems(config, items):
    """Mark each test with its folder's tier; hand the tiers out in SCHEDULE's order (stable within)."""
    for item in items:
        item.add_marker(tier_of(item.path, config.rootpath))
    items.sort(key=lambda item: SCHEDULE.index(tier_of(item.path, config.rootpath)))


def pytest_generate_tests(metafunc):
    explicit = any("backend" in m.args[0] for m in metafunc.definition.iter_markers("parametrize"))
    if "backend" in metafunc.fixturenames and not explicit:
        both = metafunc.definition.get_closest_marker("backends") is not None
        metafunc.parametrize("backend", BACKENDS if both else ("rs",), indirect=True, scope="session")


def pytest_runtest_logreport(report):
    stats = TIER_STATS[report.nodeid.split("/")[1]]
    stats["seconds"] += report.duration
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        stats["tests"] += 1
        stats["outcomes"]["error" if report.when == "setup" and report.failed else report.outcome] += 1
    elif report.when == "teardown" and report.failed:
        stats["outcomes"]["error"] += 1


def pytest_sessionstart(session):
    session.config.stash[STARTED] = time.monotonic()


def pytest_terminal_summary(terminalreporter, config):
    """Each tier's tests, outcomes and test-seconds, and the wall time of each pytest run. `make test` runs
    pytest more than once (the cluster tier alone, the rest in parallel workers) and names a TEST_TIER_LOG
    that every run adds to, so the last one prints the whole suite."""
    if not TIER_STATS or hasattr(config, "workerinput"):  # an xdist worker: its controller reports for it
        return
    run = {
        "tiers": {t: {"tests": s["tests"], "seconds": s["seconds"], "outcomes": dict(s["outcomes"])} for t, s in TIER_STATS.items()},
        "wall_s": time.monotonic() - config.stash[STARTED],
        "workers": getattr(config.option, "numprocesses", 0) or 0,
    }
    runs = [run]
    if log := os.environ.get("TEST_TIER_LOG"):
        path = Path(log)
        runs = [*(json.loads(path.read_text()) if path.is_file() else []), run]
        path.write_text(json.dumps(runs))
    terminalreporter.section("tiers: tests, test-seconds (summed over parallel workers)")
    for tier in TIERS:
        parts = [r["tiers"][tier] for r in runs if tier in r["tiers"]]
        if parts:
            outcomes: dict[str, int] = defaultdict(int)
            for part in parts:
                for what, n in part["outcomes"].items():
                    outcomes[what] += n
            text = ", ".join(f"{n} {what}" for what, n in sorted(outcomes.items()))
            tests, seconds = sum(p["tests"] for p in parts), sum(p["seconds"] for p in parts)
            terminalreporter.write_line(f"{tier:8s} {tests:4d} tests {seconds:8.1f} s  ({text})")
    for r in runs:
        terminalreporter.write_line(f"pytest run: {'+'.join(t for t in TIERS if t in r['tiers'])}, {r['workers'] or 1} worker(s), {r['wall_s']:.0f} s wall")
    if len(runs) > 1:
        terminalreporter.write_line(f"suite: {sum(r['wall_s'] for r in runs):.0f} s wall")


@pytest.fixture(scope="session")
def shared_data():
    if not (SHARED_DATA / "prompts").is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA} (CI checks it out beside the repo)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def spark(tmp_path_factory):
    from instructlake.jobs.session import build_session

    conf = make_conf(tmp_path_factory.mktemp("spark"), "delta.backend=spark", 'spark.conf={"spark.ui.enabled": "false"}')
    session = build_session(conf)
    yield session
    session.stop()


@pytest.fixture(scope="session")
def backend(request) -> str:
    return getattr(request, "param", "rs")


@pytest.fixture
def ctx_factory(spark, tmp_path, backend):
    """ctx_factory(*sets) -> a Context on the shared session with a lake of its own under tmp_path, on
    the test's Delta backend."""
    from instructlake.jobs.runs import Context

    def make(*sets: str):
        ctx = Context.create(make_conf(tmp_path, f"delta.backend={backend}", *sets), spark=spark)
        assert ctx.store.backend == backend
        return ctx

    return make


@pytest.fixture(scope="module")
def work_dir(tmp_path_factory):
    """run.work_dir of an LLM test module: the tiny model is built there once per module."""
    return tmp_path_factory.mktemp("llm_work")
