"""The LLM stages' pure parts: deterministic ids and seeds, progress lines, stage defaults."""

from __future__ import annotations

import subprocess
import sys

import pyarrow as pa

from instructlake.jobs.runs import STAGES
from instructlake.udfs import generation as G
from instructlake.udfs import kinds as K
from instructlake.udfs import sinks
from tests.support.lake import REPO


def test_ids_and_seeds_are_deterministic():
    assert G.request_seed(0, "p") == G.request_seed(0, "p") != G.request_seed(1, "p")
    assert 0 <= G.request_seed(123, "x") < 2**31
    assert K.response_id("p", "m", "g", 0) != K.response_id("p", "m", "g", 1)
    base = {"model": "m", "n": 2}
    assert G.gen_config_id(base) == G.gen_config_id(dict(reversed(base.items())))
    task = G.LLMTask("respond", "m", {}, G.E.SamplingConfig(n=2, temperature=0.6, max_tokens=8), base, "r", 8, 8, 30.0)
    assert task.config_id("respond") != task.config_id("respond_translated")


def test_progress_reports_rate_and_eta():
    now = [0.0]
    p = G.Progress("respond p0", 100, 10.0, clock=lambda: now[0])
    now[0] = 5.0
    assert p.add(10, 500) is None  # before the interval
    now[0] = 10.0
    assert p.add(15, 750) == "respond p0: 25/100 prompts (25%), 125 tok/s, elapsed 10s, ETA 30s"


def test_stages_and_defaults():
    from instructlake.jobs.config import load_config

    order = list(STAGES)
    assert order.index("ingest") < order.index("curate") < order.index("translate") < order.index("generate")
    conf = load_config([REPO / "conf" / "local.yaml"])
    assert "generate" in conf.pipeline.stages
    assert conf.generate.gpu.enabled is False and conf.generate.model_conf.endswith("tiny-local.yaml")


def test_import_of_the_executor_module_loads_no_engine():
    code = "import sys, instructlake.udfs.generation, instructlake.jobs.llm.job; print('vllm' in sys.modules or 'torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip() == "False", proc.stderr[-2000:]


def test_staging_write_is_atomic_on_local_disk(tmp_path):
    fs, base = sinks.filesystem(str(tmp_path))
    sinks.stage_file(fs, f"{base}/t/x.parquet", pa.table({"a": [1, 2]}))
    assert sorted(p.name for p in (tmp_path / "t").iterdir()) == ["x.parquet"]  # no temp file left behind



def test_run_partition_streams_chunks_and_commits_each_once_under_its_key():
    """A streaming engine hands chunks back as they finish (here chunk 0 last: its prompt is the longest);
    each is committed once under its own key, and a chunk the sink holds is skipped, never generated."""
    import pandas as pd

    class Sink:
        def __init__(self):
            self.committed = []

        def done(self, key):
            return key == "3-1"

        def commit(self, key, rows):
            self.committed.append((key, sorted(r["prompt_id"] for r in rows["responses"])))
            return True

    spec = {"backend": "tests.support.engines:stepped", "model": "m", "engine_args": {"max_num_seqs": 2}}
    task = G.LLMTask("respond", "m", spec, G.E.SamplingConfig(max_tokens=4), {"model": "m"}, "r1", 2, 2, 30.0, inflight_chunks=2)
    ids = [f"p{i}" for i in range(8)]
    texts = ["w " * 30, "w", "w", "w", "w", "w w", "w", "w"]
    frame = pd.DataFrame(dict(prompt_id=ids, origin_prompt_id=ids, task="respond", lang="en", text=texts, attempt=1))
    sink = Sink()
    summaries = pd.concat(G.run_partition(iter([frame]), task, sink, partition=3))
    assert list(zip(summaries.chunk, summaries.status)) == [(1, "skipped"), (2, "committed"), (3, "committed"), (0, "committed")]
    assert sink.committed == [("3-2", ["p4", "p5"]), ("3-3", ["p6", "p7"]), ("3-0", ["p0", "p1"])]
    done = summaries[summaries.status == "committed"]
    assert (done.gen_s > 0).all() and done.rows_out.sum() == 6 and set(done.engine_version) == {"step-1"}
