"""Engine layer: real vLLM (CPU) and transformers engines on the tiny model, plus the pure logic.

The real engines run once, in a subprocess (tests/engine_probe.py), because vLLM's in-process engine
changes its host process; the tests below assert on what that run produced.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from instructlake.udfs import engine as E
from instructlake.udfs.prompts import parse_judge_score

PROBE = Path(__file__).with_name("engine_probe.py")


def _run(args: list[str], timeout: int) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{args} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("models") / "tiny-chat"
    _run(["-m", "instructlake.udfs.tiny_model", str(out)], timeout=300)
    return out


@pytest.fixture(scope="module")
def probe(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    work = tmp_path_factory.mktemp("engine_probe")
    out = work / "probe.json"
    _run([str(PROBE), str(tiny_model), str(work / "scratch"), str(out)], timeout=600)
    return json.loads(out.read_text(encoding="utf-8"))


def _texts(results: list[dict]) -> list[list[str]]:
    return [r["texts"] for r in results]


# --- real engines -------------------------------------------------------------------------------


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


def test_transient_engine_failure_loses_no_row(probe: dict) -> None:
    assert probe["pending_after_failure"] == 0  # the failed batch's requests were aborted in vLLM
    assert _texts(probe["flaky"]) == _texts(probe["greedy_vllm"])  # bisection re-ran the halves


def test_large_seeded_batch_runs_in_one_call_on_cpu(probe: dict) -> None:
    assert probe["big_batch"] == {"ok": 64, "error": None}
    assert probe["scheduler"] == {"chunked_prefill": False, "max_num_batched_tokens": E.CPU_MIN_BATCHED_TOKENS}
    assert probe["big_batch_tokens"] > E.CPU_MIN_BATCHED_TOKENS  # more than one step's prefill budget


def test_vllm_args_add_cpu_settings_only_on_cpu() -> None:
    args = {"max_model_len": 16384, "dtype": "float32"}
    cpu = E.vllm_args(args, "cpu")
    assert cpu["enable_chunked_prefill"] is False and cpu["max_num_batched_tokens"] == 16384
    assert cpu["kv_cache_memory_bytes"] == 64 << 20 and cpu["enforce_eager"] and cpu["dtype"] == "float32"
    assert E.vllm_args(args, "cuda") == args
    assert E.vllm_args({**args, "enable_chunked_prefill": True}, "cpu")["enable_chunked_prefill"] is True
    assert "enable_chunked_prefill" not in E.vllm_args({}, "cpu")  # context unknown: left to vLLM


def test_one_engine_per_spec_and_worker(probe: dict) -> None:
    assert probe["vllm_constructions"] == 1  # four get_engine calls, one with fault injection
    assert probe["constructions"] == 2  # plus the transformers engine


def test_prompt_token_count_matches_engine(probe: dict) -> None:
    assert probe["counted_tokens"] == [r["prompt_tokens"] for r in probe["sampled"]]


def test_import_loads_neither_vllm_nor_torch() -> None:
    code = (
        "import sys, json\n"
        "import instructlake.udfs.engine, instructlake.udfs.prompts, instructlake.udfs.tiny_model\n"
        "print(json.dumps(sorted(m for m in ('vllm', 'torch', 'transformers') if m in sys.modules)))"
    )
    assert json.loads(_run(["-c", code], timeout=120).stdout) == []


def test_tiny_model_is_deterministic_and_idempotent(tiny_model: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    _run(["-m", "instructlake.udfs.tiny_model", str(copy)], timeout=300)
    digest = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()  # noqa: E731
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert digest(copy / name) == digest(tiny_model / name), name
    before = (tiny_model / "model.safetensors").stat().st_mtime_ns
    code = (
        "import sys; from instructlake.udfs.tiny_model import build_tiny_chat_model\n"
        f"build_tiny_chat_model({str(tiny_model)!r}); print('torch' in sys.modules)"
    )
    assert _run(["-c", code], timeout=120).stdout.strip() == "False"  # reused without building
    assert (tiny_model / "model.safetensors").stat().st_mtime_ns == before


# --- engine logic without a model ----------------------------------------------------------------


class FakeEngine(E.BatchEngine):
    """Echoes prompts; raises for batches holding a poisoned key; one token per character."""

    version, max_model_len = "fake-1", 50

    def __init__(self, spec: E.EngineSpec | None = None, device: str = "cpu", poison: str = "", fatal: bool = False):
        self.poison, self.fatal, self.batches, self.closed = poison, fatal, [], False

    def close(self) -> None:
        self.closed = True

    def count_prompt_tokens(self, messages: list[dict[str, str]]) -> int:
        return len(messages[-1]["content"])

    def _run_batch(self, requests: Sequence[E.Request]) -> list[E.Result]:
        self.batches.append([r.key for r in requests])
        if any(r.key == self.poison for r in requests):
            raise (type("EngineDeadError", (RuntimeError,), {}) if self.fatal else ValueError)("boom")
        return [E.Result(r.key, [r.messages[-1]["content"]], ["stop"], 1, [1], 0.0) for r in requests]


def _requests(*texts: str, max_tokens: int = 10) -> list[E.Request]:
    sampling = E.SamplingConfig(max_tokens=max_tokens)
    return [E.Request(f"k{i}", [{"role": "user", "content": t}], sampling) for i, t in enumerate(texts)]


def test_bisection_isolates_failures_in_order() -> None:
    engine = FakeEngine(poison="k5")
    results = engine.generate(_requests(*"abcdefgh"))
    assert [r.key for r in results] == [f"k{i}" for i in range(8)]
    assert [r.error_class for r in results] == [None] * 5 + ["ValueError"] + [None] * 2
    assert engine.batches[0] == [f"k{i}" for i in range(8)]
    assert ["k5"] in engine.batches and len(engine.batches) == 7  # 8 -> 4+4 -> 2+2 -> 1+1


def test_length_check_reserves_output_tokens_and_bad_messages_fail_alone() -> None:
    engine = FakeEngine()
    reqs = _requests("x" * 40, "x" * 41, "ok", max_tokens=10) + [E.Request("bad", [{"role": "user"}], E.SamplingConfig(max_tokens=10))]
    results = engine.generate(reqs)
    assert [r.error_class for r in results] == [None, E.PROMPT_TOO_LONG, None, "KeyError"]
    assert results[1].prompt_tokens == 41
    assert engine.batches == [["k0", "k2"]]


def test_fatal_engine_error_raises_and_marks_engine_dead() -> None:
    engine = FakeEngine(poison="k1", fatal=True)
    with pytest.raises(RuntimeError, match="boom"):
        engine.generate(_requests("a", "b"))
    assert engine.dead


def test_get_engine_caches_one_engine_per_worker_and_wraps_fault_injection(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(E, "_BACKENDS", {"vllm": FakeEngine, "transformers": FakeEngine})
    monkeypatch.setattr(E, "_ENGINES", {})
    monkeypatch.setattr(E, "constructions", 0)
    spec = {"backend": "vllm", "model": "m", "device": "cpu", "engine_args": {"max_model_len": 64}}
    first = E.get_engine(spec)
    assert E.get_engine(dict(reversed(spec.items()))) is first
    faulty = E.get_engine({**spec, "inject_faults": ["k1"]})
    assert isinstance(faulty, E.FaultInjector) and faulty.inner is first
    assert [r.error_class for r in faulty.generate(_requests("a", "b"))] == [None, "InjectedFault"]
    assert E.constructions == 1
    # Another spec (the next model): the worker closes its engine before building the new one.
    second = E.get_engine({**spec, "engine_args": {"max_model_len": 128}})
    assert E.constructions == 2 and first.closed and list(E._ENGINES.values()) == [second]
    third = E.get_engine(spec)
    assert third is not first and second.closed and not third.closed and E.constructions == 3
    third.dead = True
    assert E.get_engine(spec) is not third and E.constructions == 4


def test_spec_validation() -> None:
    with pytest.raises(ValueError, match="unknown engine spec keys"):
        E.EngineSpec.from_dict({"backend": "vllm", "model": "m", "gpu_memory_utilization": 0.9})
    with pytest.raises(ValueError, match="invalid engine spec"):
        E.EngineSpec.from_dict({"backend": "tgi", "model": "m"})
    with pytest.raises(ValueError, match="n must be 1"):
        E.SamplingConfig(n=2, temperature=0.0, max_tokens=8)
    a = E.EngineSpec.from_dict({"backend": "vllm", "model": "m", "inject_faults": ["x"]})
    assert a.cache_key() == E.EngineSpec("vllm", "m").cache_key() != E.EngineSpec("vllm", "m2").cache_key()


def _fake_task_context(resources: dict) -> SimpleNamespace:
    """Stands in for pyspark.TaskContext on a GPU cluster (no GPU or Spark task here)."""
    return SimpleNamespace(resources=lambda: resources)


def test_bind_spark_gpus_maps_task_gpus_to_cuda_visible_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "untouched")
    assert E.bind_spark_gpus(_fake_task_context({})) is None
    assert E.bind_spark_gpus(_fake_task_context({"gpu": SimpleNamespace(addresses=[])})) is None
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "untouched"
    gpus = _fake_task_context({"gpu": SimpleNamespace(name="gpu", addresses=["2", "3"])})
    assert E.bind_spark_gpus(gpus) == ["2", "3"]
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "2,3"
    assert E.spark_gpu_addresses() is None  # not inside a Spark task


def test_gpu_lock_makes_a_second_engine_wait_for_the_first_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No GPU needed: the lock is about processes. A holder keeps GPU "0" for 3 s and exits; a process
    that may wait 30 s gets it then, one that may wait 0.5 s fails naming the holder."""
    take = (
        "import sys, time; from instructlake.udfs import engine as E\n"
        "E.lock_gpus(['0'], sys.argv[1], wait_s=float(sys.argv[2])); print('locked', flush=True)\n"
        "time.sleep(float(sys.argv[3]))\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", take, str(tmp_path), "0", "3"], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    impatient = subprocess.run([sys.executable, "-c", take, str(tmp_path), "0.5", "0"], capture_output=True, text=True)
    assert impatient.returncode != 0 and f"held by the engine of process {holder.pid}" in impatient.stderr
    patient = subprocess.run([sys.executable, "-c", take, str(tmp_path), "30", "0"], capture_output=True, text=True)
    assert patient.returncode == 0 and patient.stdout.strip() == "locked"
    assert holder.wait(timeout=30) == 0
    monkeypatch.setattr(E, "_GPU_LOCKS", {})
    E.lock_gpus(["1"], tmp_path, wait_s=0)  # another GPU: free; taken again by the same process: a no-op
    E.lock_gpus(["1"], tmp_path, wait_s=0)
    E._GPU_LOCKS.pop("1").close()


def test_scripted_engine_replies_by_rule_deterministically() -> None:
    from instructlake.jobs.llm.models import find_conf_file
    from instructlake.udfs.prompts import judge_messages, translate_messages

    spec = yaml.safe_load(find_conf_file("conf/models/scripted.yaml").read_text())
    engine = E.ScriptedEngine(E.EngineSpec.from_dict({k: spec[k] for k in ("backend", "model", "engine_args")}), "cpu")
    sampled = E.SamplingConfig(n=4, temperature=0.6, max_tokens=64, seed=7)
    judge = E.Request("j", judge_messages("What is 2+2?", "4"), sampled)
    translate = E.Request("t", translate_messages("Name three rivers.", "Japanese", "English"), E.SamplingConfig(max_tokens=64))
    answer = E.Request("a", [{"role": "user", "content": "Tell me about the sea and the sky."}], E.SamplingConfig(max_tokens=3))
    j, t, a = engine.generate([judge, translate, answer])
    scores = [parse_judge_score(x) for x in j.texts]
    assert all(2 <= s <= 9 for s in scores) and len(set(scores)) > 1  # samples score differently
    assert engine.generate([judge])[0].texts == j.texts  # and the same on every run
    assert t.texts == ["(Japanese) Name three rivers."] and t.finish_reasons == ["stop"]
    assert a.texts == ["Scripted answer 0:"] and a.finish_reasons == ["length"] and a.completion_tokens == [3]
    assert j.prompt_tokens == engine.count_prompt_tokens(judge.messages) > 100
