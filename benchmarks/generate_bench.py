"""The generate path against vLLM's own optimum: same engine, same requests, same run.

    .venv/bin/python benchmarks/generate_bench.py [--model-conf conf/models/tiny-local.yaml] [--sequences 1024]
        [--lengths real natural] [--n 1 4] [--confs local cluster] [--repeat 2] [--set key=value ...]
        [--out out/generate_bench.json]

One process and one engine: the engine layer's vLLM engine for the model file (engine args as `vllm_args`
makes them; on this CPU machine `--set` gives it a 1 GiB KV cache by default, as ENVIRONMENT.md's
measurements did). Per case, alternating:

- optimum: one `LLM.generate` over every request (token-id prompts, each request its own SamplingParams),
  what `vllm bench throughput` measures: the engine full from the first request to the last.
- stream: `udfs.generation.run_partition` over the same rows, seeds and SamplingParams, i.e. the executor
  side of the generate stage: chunks of `chunk_rows` streamed through the engine with `inflight_chunks` in
  flight, each chunk's rows committed to Delta tables (delta-rs) on the commit thread, timed to the last
  commit.

Cases: output lengths `real` (ignore_eos, each request's max_tokens the word count x1.3, capped at 1,200, of
an answer in ../shared/data/responses, as vLLM's throughput benchmark takes dataset lengths) or `natural`
(the model's own stops, max_tokens of the model file or --set generate.sampling.max_tokens); n=1 and n=4
(--sequences / n prompts, so every case runs the same number of sequences); the chunk_rows / batch_size /
inflight_chunks of conf/local.yaml and conf/cluster.yaml. Prints completion tokens/s of both and the ratio,
and the ratio of tokens per second of this process's CPU time: the engine runs in this process on one
thread, so that ratio holds on a machine other jobs load (wall time does not), commits included.
`--prefix-check` instead times prefix caching on against off (prefix_check).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
PROMPTS = DATA / "prompts" / "en_dolly_open_qa.jsonl"
ANSWERS = DATA / "responses" / "en_arena_hard_v0.1_gpt-3.5-turbo-0125.jsonl"
BENCH_DEFAULTS = (
    "generate.engine_args.kv_cache_memory_bytes=1073741824",  # room for max_num_seqs sequences of 1,200 tokens
    "generate.engine_args.max_num_seqs=256",
    "generate.sampling.max_tokens=256",  # the natural case's cap
)


def answer_lengths() -> list[int]:
    """max_tokens per answer of ANSWERS: its word count x1.3 (about tokens per word), capped at 1,200."""
    with open(ANSWERS, encoding="utf-8") as fh:
        return [max(1, min(1200, round(1.3 * len(json.loads(line)["text"].split())))) for line in fh]


def load_prompts(n: int, room: int) -> list[tuple[str, str]]:
    """(prompt_id, text) of the first n distinct prompts of PROMPTS of at most `room` words."""
    from instructlake.udfs.text import normalize, prompt_id

    out, seen = [], set()
    with open(PROMPTS, encoding="utf-8") as fh:
        for line in fh:
            text = normalize(json.loads(line)["text"])
            if text and len(text.split()) <= room and (pid := prompt_id(text)) not in seen:
                seen.add(pid)
                out.append((pid, text))
                if len(out) == n:
                    return out
    raise SystemExit(f"only {len(out)} prompts in {PROMPTS}")


def lengths_engine():
    """A VllmEngine whose requests may carry fixed output lengths (the `real` case): ignore_eos with the
    request's max_tokens from `lengths` (prompt_id -> tokens); the production engine otherwise."""
    from instructlake.udfs import engine as E

    class LengthsEngine(E.VllmEngine):
        lengths: dict[str, int] | None = None

        def params(self, request):
            params = super().params(request)
            if self.lengths is not None:
                params.ignore_eos, params.max_tokens = True, self.lengths[request.key]
            return params

    return LengthsEngine


def delta_sink(lake: Path, scope: str):
    """A DeltaSink over fresh delta-rs tables: what a direct-commit task writes to."""
    from deltalake import write_deltalake

    from instructlake.jobs.store import arrow_schema
    from instructlake.jobs.tables import KEYS, SCHEMAS
    from instructlake.udfs.generation import ERRORS
    from instructlake.udfs.rs_table import RsTable
    from instructlake.udfs.sinks import DeltaSink

    names = ("responses", ERRORS)
    tables = {}
    for name in names:
        schema = arrow_schema(SCHEMAS[name])
        write_deltalake(str(lake / name), schema.empty_table(), mode="overwrite")
        tables[name] = RsTable(uri=str(lake / name), schema=schema, storage_options={}, retries=20)
    return DeltaSink(tables, {"responses": None, ERRORS: KEYS[ERRORS]}, names, scope)


def run_case(engine, task, frame, lengths, work: Path, tag: str) -> dict:
    import pandas as pd
    from vllm.inputs import TokensPrompt

    from instructlake.udfs import engine as E
    from instructlake.udfs import generation as G

    requests = G.requests_for(task, frame)
    engine.lengths = lengths
    prompts = [TokensPrompt(prompt_token_ids=E._prompt_ids(engine.tokenizer, r.messages, engine.chat_template)) for r in requests]
    params = [engine.params(r) for r in requests]
    t0, c0 = time.perf_counter(), time.process_time()
    outs = engine.llm.generate(prompts, params, use_tqdm=False)
    one_call_s, one_call_cpu = time.perf_counter() - t0, time.process_time() - c0
    one_call_tokens = sum(len(c.token_ids) for o in outs for c in o.outputs)

    sink = delta_sink(work / tag, f"bench:{tag}")
    t0, c0 = time.perf_counter(), time.process_time()
    summaries = pd.concat(G.run_partition(iter([frame]), task, sink, partition=0))
    stream_s, stream_cpu = time.perf_counter() - t0, time.process_time() - c0  # to the last commit: run_partition waits for it
    assert (summaries.status == "committed").all(), summaries.status.value_counts()
    stream_tokens = int(summaries.completion_tokens.sum())
    busy_s = float(summaries.gen_s.sum())
    return {
        "one_call_s": round(one_call_s, 3), "one_call_tokens": one_call_tokens,
        "one_call_tok_s": round(one_call_tokens / one_call_s, 1),
        "stream_s": round(stream_s, 3), "stream_tokens": stream_tokens, "stream_busy_s": round(busy_s, 3),
        "stream_tok_s": round(stream_tokens / stream_s, 1), "chunks": len(summaries),
        "ratio": round((stream_tokens / stream_s) / (one_call_tokens / one_call_s), 3),
        "one_call_cpu_s": round(one_call_cpu, 3), "stream_cpu_s": round(stream_cpu, 3),
        "cpu_ratio": round((stream_tokens / stream_cpu) / (one_call_tokens / one_call_cpu), 3),
    }  # fmt: skip


def prefix_check(spec: dict, rows: list[tuple[str, str]], n: int, repeat: int) -> list[dict]:
    """One LLM.generate per case with prefix caching on and off (an engine each, rebuilt per repeat so the
    cache starts empty): the n samples of a prompt (parent requests fan out into n sequences sharing the
    prompt), and judge requests, which all start with the same MT-Bench rubric; max_tokens 1 isolates
    prefill, where caching acts, and the model's natural stops (max_tokens 256) show what it is worth
    in a whole run."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    from instructlake.udfs import engine as E
    from instructlake.udfs.prompts import judge_messages, respond_messages

    with open(ANSWERS, encoding="utf-8") as fh:
        answers = [json.loads(line) for line in fh]
    out = []
    for r in range(repeat):
        for caching in (True, False):
            engine = E.get_engine({**spec, "engine_args": {**spec["engine_args"], "enable_prefix_caching": caching}})
            tok, template = engine.tokenizer, engine.chat_template
            respond = [E._prompt_ids(tok, respond_messages(t), template) for _, t in rows]
            judge = [E._prompt_ids(tok, judge_messages(a["prompt"], a["text"]), template) for a in answers]
            judge = [ids for ids in judge if len(ids) + 256 <= engine.max_model_len]
            for case, prompts, samples in (("respond", respond, n), ("judge", judge, 1)):
                for max_tokens in (1, 256):
                    params = [SamplingParams(n=samples, temperature=0.6, max_tokens=max_tokens, seed=i) for i in range(len(prompts))]
                    t0 = time.perf_counter()
                    outs = engine.llm.generate([TokensPrompt(prompt_token_ids=ids) for ids in prompts], params, use_tqdm=False)
                    wall = time.perf_counter() - t0
                    row = {"case": case, "n": samples, "max_tokens": max_tokens, "prefix_caching": caching, "repeat": r,
                           "requests": len(prompts), "prompt_tokens": sum(map(len, prompts)) * samples,
                           "completion_tokens": sum(len(c.token_ids) for o in outs for c in o.outputs), "wall_s": round(wall, 3),
                           "load": round(os.getloadavg()[0], 2)}  # fmt: skip
                    print(json.dumps(row), flush=True)
                    out.append(row)
    return out


def median(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-conf", default="conf/models/tiny-local.yaml")
    p.add_argument("--sequences", type=int, default=1024, help="sequences per case: prompts x n")
    p.add_argument("--lengths", nargs="+", default=["real", "natural"], choices=["real", "natural"])
    p.add_argument("--n", type=int, nargs="+", default=[1, 4])
    p.add_argument("--confs", nargs="+", default=["local", "cluster"], help="conf/<name>.yaml whose llm batch settings to use")
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--work-dir", default=str(REPO / ".scratch"), help="where the tiny model is built / cached")
    p.add_argument("--set", action="append", default=[], help="config overrides (key=value) over the bench defaults")
    p.add_argument("--prefix-check", action="store_true", help="only: prefix caching on vs off (prefix_check)")
    p.add_argument("--out", default=str(REPO / "out" / "generate_bench.json"))
    args = p.parse_args(argv)

    from instructlake.jobs.config import load_config
    from instructlake.jobs.llm.models import engine_spec, resolve_model
    from instructlake.udfs import engine as E
    from instructlake.udfs import generation as G
    from instructlake.udfs.kinds import INPUT_COLUMNS

    sets = [f"run.work_dir={args.work_dir}", f"generate.model_conf={args.model_conf}", *BENCH_DEFAULTS, *args.set]
    conf = load_config([REPO / "conf" / "local.yaml"], sets)
    model = resolve_model(conf.generate, conf)
    E.BACKENDS["bench-vllm"] = lengths_engine()  # in this process only: run_partition's get_engine builds it
    spec = {**engine_spec(model, conf.generate, conf), "backend": "bench-vllm"}
    batch = {name: load_config([REPO / "conf" / f"{name}.yaml"]).generate for name in args.confs}
    room = (model.engine_args.get("max_model_len") or 2048) - 1200 - 64  # words <= tokens here; 64: the template
    lengths_all = answer_lengths()
    now = dt.datetime.now(dt.timezone.utc)
    report = {
        "model_conf": args.model_conf, "engine_args": E.vllm_args(spec["engine_args"], "cpu"), "sets": sets,
        "cpu_count": os.cpu_count(), "load_before": os.getloadavg(), "started": now.isoformat(), "runs": [],
    }  # fmt: skip
    import pandas as pd

    if args.prefix_check:
        rows = load_prompts(args.sequences // max(args.n), room)
        report["prefix_check"] = prefix_check(spec, rows, max(args.n), args.repeat)
        print("\n| requests | n | max_tokens | prefix caching | wall s (median) | load |")
        print("|---|---:|---:|---|---:|---:|")
        groups: dict[tuple, list[dict]] = {}
        for row in report["prefix_check"]:
            groups.setdefault((row["case"], row["n"], row["max_tokens"], row["prefix_caching"]), []).append(row)
        for (case, n, max_tokens, caching), runs in groups.items():
            walls = ", ".join(f"{r['wall_s']:.2f}" for r in runs)
            print(f"| {case} ({runs[0]['requests']}) | {n} | {max_tokens} | {'on' if caching else 'off'} | {median(runs, 'wall_s'):.2f} ({walls}) | "
                  f"{', '.join(str(r['load']) for r in runs)} |")  # fmt: skip
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=1, default=str))
        return report

    t0 = time.perf_counter()
    engine = E.get_engine(spec)
    report["engine_start_s"] = round(time.perf_counter() - t0, 2)
    with tempfile.TemporaryDirectory(prefix="generate_bench_") as tmp:
        for n in args.n:
            rows = load_prompts(args.sequences // n, room)
            frame = pd.DataFrame(dict(prompt_id=[r[0] for r in rows], origin_prompt_id=[r[0] for r in rows], task="respond",
                                      lang="en", text=[r[1] for r in rows], attempt=1))[list(INPUT_COLUMNS)]  # fmt: skip
            for kind in args.lengths:
                lengths = {pid: lengths_all[i % len(lengths_all)] for i, (pid, _) in enumerate(rows)} if kind == "real" else None
                for name, llm in batch.items():
                    sampling = dataclasses.replace(model.sampling, n=n, temperature=model.sampling.temperature or 0.6)
                    task = G.LLMTask(
                        "respond", model.name, spec, sampling, {"bench": True}, "bench", llm.batch_size, llm.chunk_rows,
                        600.0, inflight_chunks=llm.inflight_chunks,
                    )  # fmt: skip
                    for r in range(args.repeat):
                        tag = f"{kind}-n{n}-{name}-{r}"
                        res = run_case(engine, task, frame, lengths, Path(tmp), tag)
                        case = {"lengths": kind, "n": n, "conf": name, "prompts": len(rows), "batch_size": llm.batch_size,
                                "chunk_rows": llm.chunk_rows, "inflight_chunks": llm.inflight_chunks, "repeat": r,
                                "load": round(os.getloadavg()[0], 2), **res}  # fmt: skip
                        print(json.dumps(case), flush=True)
                        report["runs"].append(case)
    engine.lengths = None
    print(f"\nengine args {report['engine_args']}; {os.cpu_count()} cores; load before {report['load_before']}\n")
    print("| output lengths | n | settings (chunk_rows / batch_size / inflight_chunks) | sequences | one LLM.generate tok/s | stream + commits tok/s "
          "| ratio, wall (median; runs) | ratio, process CPU time (median; runs) | load |")  # fmt: skip
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|")
    groups: dict[tuple, list[dict]] = {}
    for run in report["runs"]:
        groups.setdefault((run["lengths"], run["n"], run["conf"]), []).append(run)
    report["summary"] = []
    for (kind, n, name), runs in groups.items():
        r0 = runs[0]
        row = {"lengths": kind, "n": n, "conf": name, "one_call_tok_s": median(runs, "one_call_tok_s"),
               "stream_tok_s": median(runs, "stream_tok_s"), "ratio": median(runs, "ratio"), "cpu_ratio": median(runs, "cpu_ratio"),
               "ratios": [r["ratio"] for r in runs], "cpu_ratios": [r["cpu_ratio"] for r in runs], "load": [r["load"] for r in runs]}  # fmt: skip
        report["summary"].append(row)
        print(
            f"| {kind} | {n} | {name} ({r0['chunk_rows']} / {r0['batch_size']} / {r0['inflight_chunks']}) | {r0['prompts'] * n} | "
            f"{row['one_call_tok_s']:,.0f} | {row['stream_tok_s']:,.0f} | **{row['ratio']:.2f}x** ({', '.join(f'{x:.2f}' for x in row['ratios'])}) | "
            f"**{row['cpu_ratio']:.2f}x** ({', '.join(f'{x:.2f}' for x in row['cpu_ratios'])}) | {', '.join(f'{x:.1f}' for x in row['load'])} |"
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1, default=str))
    print(f"\nwritten: {args.out}")
    E._release(E.EngineSpec.from_dict(spec).cache_key())
    return report


if __name__ == "__main__":
    sys.exit(main() and 0)
