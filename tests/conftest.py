"""Shared fixtures: one local SparkSession per test run, a fresh lake per test, the shared real data.

The session has delta-spark's jars (resolved from Maven Central once into IVY_DIR), so one JVM serves
both Delta backends: `backend` is a session-scoped parameter, and every test that builds a Context
through `ctx_factory` (or passes `delta.backend={backend}` itself) runs once on delta-rs and once on
delta-spark, unless it parametrizes `backend` itself (`@pytest.mark.parametrize("backend", ["rs"],
indirect=True)`): a test for one backend, or an engine flow test (the real engine runs minutes on the
CPU) whose backend only changes how chunks are committed, which the crash/resume, staging, judge errors,
reverse and parity tests check on both. pytest orders the tests by that parameter, so module fixtures
are built once per backend.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
IVY_DIR = REPO / ".scratch" / "ivy"  # the default work dir's Ivy cache: shared with `make demo`
BACKENDS = ("rs", "spark")


# Test tiers (`pytest -m unit` etc.; `make test-unit`). A test without a tier marker gets one from its
# fixtures: ENGINE_FIXTURES (the tiny model, the engine) -> engine, `spark` -> spark, neither -> unit; a test that runs
# Spark, the engine or a cluster in a subprocess says so with its own marker.
TIERS = {
    "unit": "no Spark, no engine, no subprocess jobs (the whole tier runs in under a minute)",
    "spark": "a real SparkSession (local[2]) and Delta tables, no LLM engine",
    "engine": "the real vLLM engine on the CPU (with the tiny local model), mostly through Spark",
    "cluster": "a standalone Spark cluster, spark-submit, or several concurrent driver processes",
}


ENGINE_FIXTURES = {"work_dir", "probe", "tiny_model", "vllm_engine_args"}  # the tiny model, an engine in a subprocess


def pytest_configure(config):
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU (skipped without one)")
    for name, text in TIERS.items():
        config.addinivalue_line("markers", f"{name}: tier: {text}")


def pytest_collection_modifyitems(items):
    for item in items:
        if any(item.get_closest_marker(name) for name in TIERS):
            continue
        fixtures = set(item.fixturenames)
        item.add_marker("engine" if fixtures & ENGINE_FIXTURES else "spark" if "spark" in fixtures else "unit")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "prompts").is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA} (CI checks it out beside the repo)")
    return SHARED_DATA


def make_conf(tmp_path: Path, *sets: str, files: tuple[str, ...] = ("conf/local.yaml",)):
    from instructlake.jobs.config import load_config

    return load_config(
        [REPO / f for f in files],
        [
            f"run.lake_root={tmp_path / 'lake'}", f"run.work_dir={tmp_path / 'work'}", f"delta.ivy_dir={IVY_DIR}",
            "spark.fast_jvm_start=true", *sets,
        ],  # fmt: skip
    )


@pytest.fixture(scope="session")
def spark(tmp_path_factory):
    from instructlake.jobs.session import build_session

    conf = make_conf(tmp_path_factory.mktemp("spark"), "delta.backend=spark", 'spark.conf={"spark.ui.enabled": "false"}')
    session = build_session(conf)
    yield session
    session.stop()


@pytest.fixture(scope="session", params=BACKENDS)
def backend(request) -> str:
    return request.param


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
def work_dir(tmp_path_factory) -> Path:
    """run.work_dir of an LLM test module: the tiny model is built there once per module."""
    return tmp_path_factory.mktemp("llm_work")


def response(prompt, i, lang, finish="stop", text=None, task="respond", system="Be helpful."):
    """A `responses` row as the generate stage writes it, for stages that consume responses."""
    from instructlake.udfs.text import content_hash, prompt_id

    pid = prompt_id(prompt)
    return dict(
        response_id=content_hash(pid, "m", "g", str(i)), prompt_id=pid, origin_prompt_id=None, task=task, lang=lang,
        model="m", gen_config_id="g", sample_index=i, n=2, temperature=0.6, top_p=1.0, max_tokens=32, seed=1,
        system_prompt=system, prompt_text=prompt, text=f"answer {i} <b>to</b> {prompt[:20]}" if text is None else text,
        finish_reason=finish, prompt_tokens=10, completion_tokens=5 + i, latency_s=0.1, engine="vllm",
        engine_version="vllm-0.32.0", run_id="r0", created_at=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc),
    )  # fmt: skip
