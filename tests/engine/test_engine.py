"""Engine layer: real vLLM (CPU) and transformers engines on the tiny model, plus the pure logic.

The real engines run once, in a subprocess (tests/support/engine_probe.py), because vLLM's in-process engine
changes its host process; the tests below assert on what that run produced.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from instructlake.udfs import engine as E
from tests.support.lake import PROBE
from tests.support.procs import run_checked


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("models") / "tiny-chat"
    run_checked(["-m", "instructlake.udfs.tiny_model", str(out)], timeout=300)
    return out


@pytest.fixture(scope="module")
def probe(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    work = tmp_path_factory.mktemp("engine_probe")
    out = work / "probe.json"
    run_checked([str(PROBE), str(tiny_model), str(work / "scratch"), str(out)], timeout=600)
    return json.loads(out.read_text(encoding="utf-8"))


def _texts(results: list[dict]) -> list[list[str]]:
    return [r["texts"] for r in results]


def test_vllm_backend_equals_direct_llm_chat(probe: dict) -> None:
    assert probe["version"].startswith("vllm-")
    assert all(r["error_class"] is None for r in probe["sampled"])
    assert _texts(probe["sampled"]) == probe["direct"]


def test_greedy_vllm_equals_transformers(probe: dict) -> None:
    vllm, hf = probe["greedy_vllm"], probe["greedy_transformers"]
    assert all(r["texts"][0] and r["error_class"] is None for r in vllm + hf)
    assert _texts(vllm) == _texts(hf)
    assert [r["completion_tokens"] for r in vllm] == [r["completion_tokens"] for r in hf]
    assert [r["finish_reasons"] for r in vllm] == [r["finish_reasons"] for r in hf]


def test_n_samples_are_seeded_per_request(probe: dict) -> None:
    sampled = probe["sampled"]
    assert all(len(r["texts"]) == 3 == len(set(r["texts"])) for r in sampled)  # n distinct samples
    assert _texts(probe["sampled_again"]) == _texts(sampled)
    assert all(a != b for a, b in zip(_texts(probe["sampled_reseeded"]), _texts(sampled), strict=True))
    # A request's output does not depend on the batch it ran in.
    assert _texts(probe["sampled_alone"]) == _texts(sampled[:2])
    assert _texts(probe["sampled_transformers_again"]) == _texts(probe["sampled_transformers"])
    assert all(len(r["texts"]) == 3 for r in probe["sampled_transformers"])


def test_oversize_prompt_is_rejected_per_row(probe: dict) -> None:
    rows = {r["key"]: r for r in probe["oversize"]}
    assert rows["huge"]["error_class"] == rows["edge"]["error_class"] == E.PROMPT_TOO_LONG
    # `edge` fits the context alone; only the reserve for its 32 output tokens rejects it.
    assert probe["max_model_len"] - 32 < probe["edge_tokens"] < probe["max_model_len"]
    assert [rows[k]["texts"] for k in ("g0", "g1", "g2")] == _texts(probe["greedy_vllm"][:3])


def test_injected_fault_is_isolated_by_bisection(probe: dict) -> None:
    faulty = {r["key"]: r for r in probe["faulty"]}
    assert {k for k, r in faulty.items() if r["error_class"]} == {"s2", "s5"}
    assert faulty["s2"]["error_class"] == "InjectedFault" and "s2" in faulty["s2"]["error"]
    clean = {r["key"]: r["texts"] for r in probe["sampled"]}
    assert all(r["texts"] == clean[k] for k, r in faulty.items() if not r["error_class"])


def test_streaming_gives_the_rows_of_calls_and_isolates_failures_mid_stream(probe: dict) -> None:
    assert _texts(probe["streamed"]) == _texts(probe["sampled"])
    assert [r["completion_tokens"] for r in probe["streamed"]] == [r["completion_tokens"] for r in probe["sampled"]]
    rows = {r["key"]: r for r in probe["streamed_faults"]}
    assert rows["huge"]["error_class"] == E.PROMPT_TOO_LONG and rows["s2"]["error_class"] == "InjectedFault"
    clean = {r["key"]: r["texts"] for r in probe["sampled"]}
    assert {k: r["texts"] for k, r in rows.items() if not r["error_class"]} == {k: v for k, v in clean.items() if k != "s2"}
    assert _texts(probe["streamed_flaky"]) == _texts(probe["greedy_vllm"])  # the failed step's requests re-ran
    assert probe["pending_after_close"] == 0  # a stream closed early leaves nothing in the engine


def test_transient_engine_failure_loses_no_row(probe: dict) -> None:
    assert probe["pending_after_failure"] == 0  # the failed batch's requests were aborted in vLLM
    assert _texts(probe["flaky"]) == _texts(probe["greedy_vllm"])  # bisection re-ran the halves


def test_large_seeded_batch_runs_in_one_call_on_cpu(probe: dict) -> None:
    assert probe["big_batch"] == {"ok": 64, "error": None}
    assert probe["scheduler"] == {"chunked_prefill": False, "max_num_batched_tokens": E.CPU_MIN_BATCHED_TOKENS}
    assert probe["big_batch_tokens"] > E.CPU_MIN_BATCHED_TOKENS  # more than one step's prefill budget


def test_one_engine_per_spec_and_worker(probe: dict) -> None:
    assert probe["vllm_constructions"] == 1  # four get_engine calls; the faulty engine wraps that one
    assert probe["constructions"] == 2  # plus the transformers engine


def test_prompt_token_count_matches_engine(probe: dict) -> None:
    assert probe["counted_tokens"] == [r["prompt_tokens"] for r in probe["sampled"]]


def test_tiny_model_is_deterministic_and_idempotent(tiny_model: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    run_checked(["-m", "instructlake.udfs.tiny_model", str(copy)], timeout=300)
    digest = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()  # noqa: E731
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert digest(copy / name) == digest(tiny_model / name), name
    before = (tiny_model / "model.safetensors").stat().st_mtime_ns
    code = (
        "import sys; from instructlake.udfs.tiny_model import build_tiny_chat_model\n"
        f"build_tiny_chat_model({str(tiny_model)!r}); print('torch' in sys.modules)"
    )
    assert run_checked(["-c", code], timeout=120).stdout.strip() == "False"  # reused without building
    assert (tiny_model / "model.safetensors").stat().st_mtime_ns == before

