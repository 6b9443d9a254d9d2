"""Runs the real engines in a process of their own and writes what they produced as JSON.

vLLM's in-process engine changes its host (LD_PRELOAD, thread counts, global seeds), so tests start
this script in a subprocess instead of building engines inside pytest. One vLLM engine and one
transformers engine serve every scenario.

    python tests/support/engine_probe.py MODEL_DIR SCRATCH_DIR OUT_JSON [--bench]
    python tests/support/engine_probe.py MODEL_DIR SCRATCH_DIR OUT_JSON --direct REQUESTS_JSON

`tests.support.engines` must be importable (the repo root on PYTHONPATH: tests/conftest.py sets it).

--direct bypasses the engine layer: a plain `vllm.LLM(...)` and one `LLM.chat` call over the requests in
REQUESTS_JSON ({"engine_args": {...}, "requests": [{"messages", "n", "temperature", "top_p", "max_tokens",
"seed"}]}), the reference that responses generated through Spark are compared with.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time

from instructlake.udfs import engine as E
from instructlake.udfs.prompts import respond_messages, translate_messages
from tests.support import engines

PROMPTS = [
    "Why is the sky blue?",
    "Write a haiku about the sea.",
    "日本の首都はどこですか？",
    "Give me three tips for staying healthy in winter.",
    "Translate 'good morning' into French.",
    "健康を保つための三つのヒントを教えてください。",
]
SAMPLED = E.SamplingConfig(n=3, temperature=1.0, top_p=0.95, max_tokens=24, seed=0)
GREEDY = E.SamplingConfig(max_tokens=32)


def spec(model: str, scratch: str, backend: str = "vllm", **extra: object) -> dict:
    args = {"max_model_len": 256, "dtype": "float32"}  # float32 on both sides for exact greedy parity
    return {"backend": backend, "model": model, "device": "cpu", "engine_args": args, "scratch_dir": scratch, **extra}


def sampled_requests(seed_offset: int = 0) -> list[E.Request]:
    messages = [respond_messages(p) for p in PROMPTS[:-1]] + [translate_messages(PROMPTS[0])]
    return [
        E.Request(f"s{i}", m, dataclasses.replace(SAMPLED, seed=100 + i + seed_offset)) for i, m in enumerate(messages)
    ]


def greedy_requests() -> list[E.Request]:
    return [E.Request(f"g{i}", respond_messages(p), GREEDY) for i, p in enumerate(PROMPTS)]


def dump(results: list[E.Result]) -> list[dict]:
    return [dataclasses.asdict(r) for r in results]


def probe(model: str, scratch: str) -> dict:
    out: dict = {}
    start = time.perf_counter()
    vllm_engine = E.get_engine(spec(model, scratch))
    out["startup_s"] = time.perf_counter() - start
    out["version"] = vllm_engine.version
    sampled = sampled_requests()
    out["sampled"] = dump(vllm_engine.generate(sampled))
    out["sampled_again"] = dump(vllm_engine.generate(sampled))
    out["sampled_reseeded"] = dump(vllm_engine.generate(sampled_requests(seed_offset=1000)))
    out["sampled_alone"] = [dump(vllm_engine.generate([r]))[0] for r in sampled[:2]]

    from vllm import SamplingParams

    params = [
        SamplingParams(n=s.n, temperature=s.temperature, top_p=s.top_p, max_tokens=s.max_tokens, seed=s.seed)
        for s in (r.sampling for r in sampled)
    ]
    direct = vllm_engine.llm.chat([r.messages for r in sampled], params, use_tqdm=False)
    out["direct"] = [[c.text for c in sorted(o.outputs, key=lambda c: c.index)] for o in direct]
    out["counted_tokens"] = [vllm_engine.count_prompt_tokens(r.messages) for r in sampled]

    greedy = greedy_requests()
    out["greedy_vllm"] = dump(vllm_engine.generate(greedy))
    huge = E.Request("huge", respond_messages("word " * 400), GREEDY)
    edge = E.Request("edge", respond_messages("word " * 75), GREEDY)  # fits alone, not with 32 new tokens
    out["oversize"] = dump(vllm_engine.generate([greedy[0], huge, greedy[1], edge, greedy[2]]))
    out["edge_tokens"] = vllm_engine.count_prompt_tokens(edge.messages)
    out["max_model_len"] = vllm_engine.max_model_len

    # A transient failure inside vLLM's step loop, once after the first step of a batch.
    core = vllm_engine.llm.llm_engine
    real_step, steps = core.step, []

    def flaky_step() -> list:
        steps.append(1)
        if len(steps) == 2:
            raise RuntimeError("transient step failure")
        return real_step()

    core.step = flaky_step
    try:
        vllm_engine._run_batch(greedy)
    except RuntimeError:
        out["pending_after_failure"] = len(core.output_processor.request_states)
    steps.clear()
    out["flaky"] = dump(vllm_engine.generate(greedy))
    del core.step

    # A batch whose prefills exceed one step's token budget: with chunked prefill (vLLM's default),
    # seeded requests crash vLLM 0.32 on CPU ("CPU Generator does not use offset"); vllm_args turns it off.
    big = [
        E.Request(f"b{i}", respond_messages(f"{i} " + "the " * 190), E.SamplingConfig(temperature=1.0, max_tokens=8, seed=i))
        for i in range(64)
    ]
    try:
        out["big_batch"] = {"ok": sum(not r.error_class for r in vllm_engine._run_batch(big)), "error": None}
    except Exception as exc:  # recorded, so the test shows the error rather than a probe crash
        out["big_batch"] = {"ok": 0, "error": f"{type(exc).__name__}: {exc}"}
    out["big_batch_tokens"] = sum(vllm_engine.count_prompt_tokens(r.messages) for r in big)
    out["scheduler"] = {
        "chunked_prefill": vllm_engine.llm.llm_engine.vllm_config.scheduler_config.enable_chunked_prefill,
        "max_num_batched_tokens": vllm_engine.llm.llm_engine.vllm_config.scheduler_config.max_num_batched_tokens,
    }

    # The test-only faulty engine (tests/support/engines.py) around this vLLM engine: s2 and s5 raise.
    out["faulty"] = dump(engines.FaultyEngine(vllm_engine, fail_keys=["s2", "s5"]).generate(sampled))

    # Streaming (requests enter as others finish): the same results as the calls above, chunk by chunk;
    # in the middle of a stream a prompt too long and a request the engine refuses fail alone, and a step
    # that fails once is re-run in calls.
    chunks = lambda reqs, size: [(c, reqs[c : c + size]) for c in range(0, len(reqs), size)]  # noqa: E731
    streamed = dict(vllm_engine.stream(chunks(sampled, 2), window=2, batch_size=2))
    out["streamed"] = dump([r for c in sorted(streamed) for r in streamed[c]])
    mixed = [*sampled[:3], huge, *sampled[3:]]
    faulty_stream = engines.FaultyEngine(vllm_engine, fail_keys=["s2"]).stream(chunks(mixed, 3), window=2, batch_size=2)
    out["streamed_faults"] = dump([r for _, rs in sorted(faulty_stream, key=lambda x: x[0]) for r in rs])
    steps.clear()
    core.step = flaky_step
    flaky = dict(vllm_engine.stream(chunks(greedy, 2), window=3, batch_size=2))
    del core.step
    out["streamed_flaky"] = dump([r for c in sorted(flaky) for r in flaky[c]])
    early = vllm_engine.stream(chunks(greedy, 1), window=3, batch_size=2)
    next(early)
    early.close()
    out["pending_after_close"] = len(core.output_processor.request_states)
    for _ in range(3):
        assert E.get_engine(spec(model, scratch)) is vllm_engine
    out["vllm_constructions"] = E.constructions

    hf_engine = E.get_engine(spec(model, scratch, backend="transformers"))
    out["greedy_transformers"] = dump(hf_engine.generate(greedy))
    out["sampled_transformers"] = dump(hf_engine.generate(sampled))
    out["sampled_transformers_again"] = dump(hf_engine.generate(sampled))
    out["constructions"] = E.constructions
    return out


def bench(model: str, scratch: str) -> dict:
    """64 prompts x up to 32 new tokens, sampled, per backend (engine start-up excluded)."""
    requests = [
        E.Request(
            str(i),
            respond_messages(f"{PROMPTS[i % len(PROMPTS)]} ({i})"),
            E.SamplingConfig(temperature=0.8, max_tokens=32, seed=i),
        )
        for i in range(64)
    ]
    out = {}
    for backend in ("vllm", "transformers"):
        start = time.perf_counter()
        engine = E.get_engine(spec(model, scratch, backend=backend))
        built = time.perf_counter()
        engine.generate(requests[:4])  # warm-up
        runs = []
        for _ in range(3):
            t0 = time.perf_counter()
            results = engine.generate(requests)
            runs.append(time.perf_counter() - t0)
        tokens = sum(sum(r.completion_tokens) for r in results)
        out[backend] = {
            "startup_s": built - start,
            "best_s": min(runs),
            "tokens": tokens,
            "tokens_per_s": tokens / min(runs),
        }
    return out


def direct(model: str, scratch: str, requests_json: str) -> list[list[str]]:
    """Texts of each request's samples from one plain LLM.chat call (no instructlake code involved)."""
    import os

    os.environ.update({k: scratch for k in E.SCRATCH_ENV})
    os.environ.update(E.CPU_ENV)
    os.environ["OMP_NUM_THREADS"] = "1"
    from vllm import LLM, SamplingParams

    with open(requests_json, encoding="utf-8") as fh:
        spec = json.load(fh)
    llm = LLM(model=model, **E.vllm_args(spec["engine_args"], "cpu"))
    reqs = spec["requests"]
    params = [
        SamplingParams(n=r["n"], temperature=r["temperature"], top_p=r["top_p"], max_tokens=r["max_tokens"], seed=r["seed"])
        for r in reqs
    ]
    outputs = llm.chat([r["messages"] for r in reqs], params, use_tqdm=False)
    return [[c.text for c in sorted(o.outputs, key=lambda c: c.index)] for o in outputs]


if __name__ == "__main__":
    model_dir, scratch_dir, out_json = sys.argv[1:4]
    if "--direct" in sys.argv[4:]:
        result = direct(model_dir, scratch_dir, sys.argv[sys.argv.index("--direct") + 1])
    else:
        result = bench(model_dir, scratch_dir) if "--bench" in sys.argv[4:] else probe(model_dir, scratch_dir)
    with open(out_json, "w", encoding="utf-8") as fh:
        json.dump(result, fh, ensure_ascii=False, indent=1)
