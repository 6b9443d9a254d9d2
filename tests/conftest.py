"""Shared fixtures: one local SparkSession per test run, a fresh lake per test, the shared real data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def pytest_configure(config):
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU (skipped without one)")
    config.addinivalue_line("markers", "delta_spark: needs the delta-spark jars (skipped without them)")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "prompts").is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA} (CI checks it out beside the repo)")
    return SHARED_DATA


def make_conf(tmp_path: Path, *sets: str, files: tuple[str, ...] = ("conf/local.yaml",)):
    from instructlake.jobs.config import load_config

    return load_config(
        [REPO / f for f in files],
        [f"run.lake_root={tmp_path / 'lake'}", f"run.work_dir={tmp_path / 'work'}", "spark.fast_jvm_start=true", *sets],
    )


@pytest.fixture(scope="session")
def spark(tmp_path_factory):
    from instructlake.jobs.session import build_session

    conf = make_conf(tmp_path_factory.mktemp("spark"), 'spark.conf={"spark.ui.enabled": "false"}')
    session = build_session(conf)
    yield session
    session.stop()


@pytest.fixture
def ctx_factory(spark, tmp_path):
    """ctx_factory(*sets) -> a Context on the shared session with a lake of its own under tmp_path."""
    from instructlake.jobs.runs import Context

    def make(*sets: str):
        return Context.create(make_conf(tmp_path, *sets), spark=spark)

    return make
