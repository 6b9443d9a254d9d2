"""Engine layer: real vLLM (CPU) and transformers engines on the tiny model, plus the pure logic.

The real engines run once, in a subprocess (tests/engine_probe.py), because vLLM's in-process engine
changes its host process; the tests below assert on what that run produced.
"""

from __future__ import annotations

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
from tests.support import engines
from tests.support.procs import run_checked


def test_vllm_args_add_cpu_settings_only_on_cpu() -> None:
    args = {"max_model_len": 16384, "dtype": "float32"}
    cpu = E.vllm_args(args, "cpu")
    assert cpu["enable_chunked_prefill"] is False and cpu["max_num_batched_tokens"] == 16384
    assert cpu["kv_cache_memory_bytes"] == 64 << 20 and cpu["enforce_eager"] and cpu["dtype"] == "float32"
    assert E.vllm_args(args, "cuda") == args
    assert E.vllm_args({**args, "enable_chunked_prefill": True}, "cpu")["enable_chunked_prefill"] is True
    assert "enable_chunked_prefill" not in E.vllm_args({}, "cpu")  # context unknown: left to vLLM


def test_import_loads_neither_vllm_nor_torch() -> None:
    code = (
        "import sys, json\n"
        "import instructlake.udfs.engine, instructlake.udfs.prompts, instructlake.udfs.tiny_model\n"
        "print(json.dumps(sorted(m for m in ('vllm', 'torch', 'transformers') if m in sys.modules)))"
    )
    assert json.loads(run_checked(["-c", code], timeout=120).stdout) == []


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


def test_get_engine_caches_one_engine_per_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(E, "BACKENDS", {"vllm": FakeEngine, "transformers": FakeEngine})
    monkeypatch.setattr(E, "_ENGINES", {})
    monkeypatch.setattr(E, "constructions", 0)
    spec = {"backend": "vllm", "model": "m", "device": "cpu", "engine_args": {"max_model_len": 64}}
    first = E.get_engine(spec)
    assert E.get_engine(dict(reversed(spec.items()))) is first and E.constructions == 1
    # Another spec (the next model): the worker closes its engine before building the new one.
    second = E.get_engine({**spec, "engine_args": {"max_model_len": 128}})
    assert E.constructions == 2 and first.closed and list(E._ENGINES.values()) == [second]
    third = E.get_engine(spec)
    assert third is not first and second.closed and not third.closed and E.constructions == 3
    third.dead = True
    assert E.get_engine(spec) is not third and E.constructions == 4


def test_an_import_path_backend_is_built_and_cached_like_a_registered_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(E, "BACKENDS", {**E.BACKENDS, "vllm": FakeEngine})
    monkeypatch.setattr(E, "_ENGINES", {})
    monkeypatch.setattr(E, "constructions", 0)
    spec = {"backend": "tests.unit.test_engine:FakeEngine", "model": "m", "device": "cpu"}
    assert E.backend_factory(spec["backend"]) is FakeEngine and E.backend_factory("scripted") is E.ScriptedEngine
    first = E.get_engine(spec)
    assert type(first) is FakeEngine and E.get_engine(dict(spec)) is first and E.constructions == 1
    # The test-only faulty backend (tests/support/engines.py) wraps a registered one built from the same spec.
    faulty = E.get_engine({**spec, "backend": "tests.support.engines:faulty", "engine_args": {"fail_keys": ["k1"]}})
    assert isinstance(faulty, engines.FaultyEngine) and type(faulty.inner) is FakeEngine and first.closed
    assert E.constructions == 2 and list(E._ENGINES.values()) == [faulty]


def test_an_unknown_backend_fails_clearly() -> None:
    with pytest.raises(ValueError, match=r"invalid engine spec: unknown engine backend 'tgi': one of \['scripted', 'transformers', 'vllm'\], or an import path 'package.module:factory'"):
        E.EngineSpec.from_dict({"backend": "tgi", "model": "m"})
    # The driver checks an import path by its form only; the executor imports it and names what is missing.
    spec = E.EngineSpec.from_dict({"backend": "no_such_module_xyz:build", "model": "m"})
    with pytest.raises(ValueError, match=r"engine backend 'no_such_module_xyz:build': ModuleNotFoundError: .*import path"):
        E.get_engine(spec)
    with pytest.raises(ValueError, match=r"'tests.support.engines:nope': AttributeError"):
        E.backend_factory("tests.support.engines:nope")
    for bad in ("tests.support.engines", "a:b:c", ":faulty", "tests/support/engines.py:faulty"):
        with pytest.raises(ValueError, match="unknown engine backend"):
            E.check_backend(bad)


def test_config_takes_a_registered_backend_or_an_import_path_and_names_a_bad_one() -> None:
    from instructlake.jobs.config import ConfigError, load_config

    conf = load_config(sets=["generate.backend=tests.support.engines:faulty", "judge.backend=scripted"])
    assert (conf.generate.backend, conf.judge.backend, conf.translate.backend) == ("tests.support.engines:faulty", "scripted", None)
    with pytest.raises(ConfigError, match=r"generate\.backend: Value error, unknown engine backend 'tgi'.*\(from --set generate\.backend\)"):
        load_config(sets=["generate.backend=tgi"])


def test_faulty_engine_fails_its_keys_through_bisection_and_dies_after_k_calls() -> None:
    inner = FakeEngine()
    faulty = engines.FaultyEngine(inner, fail_keys=["k2", "k5"])
    results = faulty.generate(_requests(*"abcdefgh"))
    assert [r.error_class for r in results] == [None, None, "InjectedFault", None, None, "InjectedFault", None, None]
    assert "k2" in results[2].error and [r.texts for r in results if not r.error_class] == [[c] for c in "abdegh"]
    assert ["k2"] not in inner.batches and ["k5"] not in inner.batches and not faulty.dead  # never reached the engine

    dying = engines.FaultyEngine(FakeEngine(), die_after_calls=2)
    assert all(not r.error_class for _ in range(2) for r in dying.generate(_requests("a", "b")))
    with pytest.raises(engines.EngineDeadError, match="die_after_calls=2"):
        dying.generate(_requests("a"))
    assert dying.dead  # udfs.engine.FATAL_ERRORS: the worker's next get_engine builds a new one


def test_spec_validation() -> None:
    with pytest.raises(ValueError, match="unknown engine spec keys"):
        E.EngineSpec.from_dict({"backend": "vllm", "model": "m", "gpu_memory_utilization": 0.9})
    with pytest.raises(ValueError, match="invalid engine spec"):
        E.EngineSpec.from_dict({"backend": "tgi", "model": "m"})
    with pytest.raises(ValueError, match="invalid engine spec: device='tpu'"):
        E.EngineSpec.from_dict({"backend": "vllm", "model": "m", "device": "tpu"})
    with pytest.raises(ValueError, match="n must be 1"):
        E.SamplingConfig(n=2, temperature=0.0, max_tokens=8)
    a = E.EngineSpec.from_dict({"backend": "vllm", "model": "m"})
    assert a.cache_key() == E.EngineSpec("vllm", "m").cache_key() != E.EngineSpec("vllm", "m2").cache_key()
    assert a.cache_key() != E.EngineSpec("tests.support.engines:faulty", "m").cache_key()


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



def _chunks(*sizes: str, log: list | None = None):
    """(tag, requests) per chunk; a chunk is a string of request lengths in steps, e.g. '13' -> two requests
    of 1 and 3 words. `log` records when each chunk is taken in."""
    for c, lengths in enumerate(sizes):
        if log is not None:
            log.append(("in", c))
        texts = [" ".join(["w"] * int(n)) for n in lengths]
        yield c, [E.Request(f"c{c}r{i}", [{"role": "user", "content": t}], E.SamplingConfig(max_tokens=4)) for i, t in enumerate(texts)]


def test_stream_keeps_a_window_of_chunks_in_the_engine_and_hands_each_back_when_its_last_request_is_done() -> None:
    engine, log = engines.StepEngine(max_num_seqs=4), []
    out = []
    for tag, results in engine.stream(_chunks("19", "11", "11", "11", "22", log=log), window=3, batch_size=8):
        log.append(("out", tag))
        out.append((tag, [r.texts[0].count("w") for r in results], [r.key for r in results]))
    # Chunk 0 holds a 9-step request: later chunks pass it, and a new chunk enters as each one leaves.
    assert [t for t, _, _ in out] == [1, 2, 3, 4, 0]
    assert out[-1] == (0, [1, 9], ["c0r0", "c0r1"])  # results in request order, keyed by request
    inside = 0
    for event, _ in log:
        inside += 1 if event == "in" else -1
        assert inside <= 3
    assert log[:4] == [("in", 0), ("in", 1), ("in", 2), ("out", 1)]
    assert max(engine.running) == 4 and engine.batches == [] and not engine.queue


def test_stream_fails_rows_alone_and_reruns_a_failed_step_in_bisected_calls() -> None:
    engine = engines.StepEngine(refuse="w w w", fail_step=2)
    chunks = list(_chunks("12", "3" + "1" * 3, "21"))
    too_long = E.Request("long", [{"role": "user", "content": "w " * 99}], E.SamplingConfig(max_tokens=4))
    chunks[1] = (1, [*chunks[1][1][:2], too_long, *chunks[1][1][2:]])
    got = dict(engine.stream(iter(chunks), window=2, batch_size=2))
    assert [r.error_class for r in got[1]] == ["ValueError", None, E.PROMPT_TOO_LONG, None, None]
    assert got[1][0].key == "c1r0" and "refused" in got[1][0].error
    assert all(r.error_class is None and r.texts for c in (0, 2) for r in got[c])
    # The failed step's requests were dropped from the engine and re-run in calls of batch_size.
    assert engine.aborted and engine.batches and all(len(b) <= 2 for b in engine.batches) and not engine.queue


def test_a_fatal_step_kills_the_engine_and_closing_a_stream_drops_its_requests() -> None:
    engine = engines.StepEngine()
    engine._poll = lambda: (_ for _ in ()).throw(engines.EngineDeadError("gone"))
    with pytest.raises(engines.EngineDeadError):
        list(engine.stream(_chunks("11"), window=2, batch_size=2))
    assert engine.dead and not engine.queue  # the dying engine's requests were dropped, not left behind

    engine = engines.StepEngine(max_num_seqs=1)
    stream = engine.stream(_chunks("1", "99", "99"), window=3, batch_size=2)
    assert next(stream)[0] == 0
    stream.close()
    assert not engine.queue and len(engine.aborted) == 4


def test_a_call_based_engine_streams_one_chunk_at_a_time_in_calls_of_batch_size() -> None:
    engine = FakeEngine()
    got = list(engine.stream(_chunks("111", "11"), window=4, batch_size=2))
    assert [t for t, _ in got] == [0, 1] and [len(r) for _, r in got] == [3, 2]
    assert engine.batches == [["c0r0", "c0r1"], ["c0r2"], ["c1r0", "c1r1"]]


def test_faulty_engine_around_a_streaming_engine_refuses_its_keys_and_dies_after_k_chunks() -> None:
    faulty = engines.FaultyEngine(engines.StepEngine(), fail_keys=["c1r1"], die_after_calls=2)
    assert faulty.streams
    stream = faulty.stream(_chunks("11", "11", "11", "11"), window=2, batch_size=2)
    first, second = next(stream), next(stream)
    assert [r.error_class for _, rs in (first, second) for r in rs] == [None, None, None, "InjectedFault"]
    with pytest.raises(engines.EngineDeadError, match="die_after_calls=2"):
        next(stream)
    assert faulty.dead and not faulty.inner.queue
