"""Where the tests find the repo, the shared data and the Ivy cache, and how they build a config and rows."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SHARED_DATA = REPO.parent / "shared" / "data"
# The default work dir's Ivy cache, shared with `make demo`; one per pytest-xdist worker, since two JVMs
# resolving into one Ivy cache at once can fail on each other's lock files.
IVY_DIR = REPO / ".scratch" / "ivy" / os.environ.get("PYTEST_XDIST_WORKER", "")
PROBE = Path(__file__).with_name("engine_probe.py")  # the real engines in a subprocess of their own
BACKENDS = ("rs", "spark")


def make_conf(tmp_path: Path, *sets: str, files: tuple[str, ...] = ("conf/local.yaml",)):
    from instructlake.jobs.config import load_config

    return load_config(
        [REPO / f for f in files],
        [
            f"run.lake_root={tmp_path / 'lake'}", f"run.work_dir={tmp_path / 'work'}", f"delta.ivy_dir={IVY_DIR}",
            "spark.fast_jvm_start=true", *sets,
        ],  # fmt: skip
    )


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
