"""Throughput of the generate stage through Spark vs a bare `LLM.chat` loop, same prompts, engine args, run.

    .venv/bin/python benchmarks/generate_bench.py [--model-conf conf/models/tiny-local.yaml]
        [--prompts 4000] [--engines 1 2] [--repeat 3] [--batch-size 256] [--out out/generate_bench.json]

For each engine count K (`--engines 1 2`): K bare processes, each one `vllm.LLM` with the engine args the
engine layer would use, calling `LLM.chat` over its share of the prompts in batches of `--batch-size`,
started together once all have built their engines; then the generate stage on a local[K'] Spark session
(K' = max(K, cores)) with `generate.tasks=K`, same prompts, seeds, sampling and batch size, chunk commits
to Delta included, after a warm-up job that builds the engines in the Spark Python workers (as a
long-running cluster would have). Reported: engine start-up (bare: vllm.LLM(); Spark: the worker's first
get_engine, including `import vllm`), completion tokens/s of each side, and the ratio Spark / bare.
On a GPU box the same command runs the model file's engine on the GPU (one engine per GPU: K <= GPUs).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROMPT_FILES = sorted((REPO.parent / "shared" / "data" / "prompts").glob("*.jsonl"))


def prompt_filter(model) -> callable:
    """Keeps prompts that leave room for max_tokens in the context (a local model's tokenizer.json)."""
    tokenizer_file = Path(model.path) / "tokenizer.json"
    limit = model.engine_args.get("max_model_len")
    if not (tokenizer_file.is_file() and limit):
        return lambda text: True
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_file))
    room = limit - (model.sampling.max_tokens or 0) - 32  # 32: the chat template's tokens
    return lambda text: len(tok.encode(text).ids) <= room


def load_prompts(n: int, keep=lambda text: True) -> list[tuple[str, str, str]]:
    """(prompt_id, text, lang) of the first n distinct prompts that `keep` accepts, round-robin over the
    shared prompt files."""
    from instructlake.udfs.text import normalize, prompt_id

    per_file = []
    for path in PROMPT_FILES:
        with open(path, encoding="utf-8") as fh:
            per_file.append([(normalize(r["text"]), r.get("lang", "und")) for r in map(json.loads, fh)])
    seen, out = set(), []
    for i in range(max(map(len, per_file), default=0)):
        for rows in per_file:
            if i < len(rows) and rows[i][0] and (pid := prompt_id(rows[i][0])) not in seen and keep(rows[i][0]):
                seen.add(pid)
                out.append((pid, *rows[i]))
    if len(out) < n:
        raise SystemExit(f"only {len(out)} distinct prompts in {PROMPT_FILES}")
    return out[:n]


# ---- bare LLM.chat processes ---------------------------------------------------------------------------


def bare_worker(spec_file: str) -> None:
    """One process: vllm.LLM, warm-up, wait for the go file, then LLM.chat over its prompts in batches."""
    spec = json.loads(Path(spec_file).read_text(encoding="utf-8"))
    os.environ.update(spec["env"])
    t0 = time.perf_counter()
    import vllm
    from vllm import SamplingParams

    imported = time.perf_counter()
    llm = vllm.LLM(model=spec["model"], **spec["engine_args"])
    built = time.perf_counter()
    reqs = spec["requests"]
    params = [SamplingParams(**r["sampling"]) for r in reqs]
    llm.chat([r["messages"] for r in reqs[:8]], params[:8], chat_template=spec["chat_template"], use_tqdm=False)
    Path(spec["ready"]).touch()
    while not Path(spec["go"]).exists():
        time.sleep(0.01)
    start = time.time()
    tokens = 0
    for b in range(0, len(reqs), spec["batch_size"]):
        outs = llm.chat(
            [r["messages"] for r in reqs[b : b + spec["batch_size"]]],
            params[b : b + spec["batch_size"]],
            chat_template=spec["chat_template"],
            use_tqdm=False,
        )
        tokens += sum(len(c.token_ids) for o in outs for c in o.outputs)
    end = time.time()
    result = {"import_s": imported - t0, "startup_s": built - imported, "start": start, "end": end, "tokens": tokens}
    Path(spec["out"]).write_text(json.dumps(result))


def run_bare(model, spec: dict, prompts, k: int, batch_size: int, work: Path) -> dict:
    from instructlake.udfs import engine as E
    from instructlake.udfs.generation import request_seed
    from instructlake.udfs.prompts import respond_messages

    device = E._resolve_device(E.EngineSpec.from_dict(spec))
    env = dict(E.CPU_ENV if device == "cpu" else E.GPU_ENV)
    env.update({key: str(work / "scratch") for key in E.SCRATCH_ENV})
    if device == "cpu":
        env["OMP_NUM_THREADS"] = str(spec["cpu_threads"])
    args = E.vllm_args(spec["engine_args"], device)  # what the engine layer passes to vllm.LLM
    s = model.sampling
    go = work / "go"
    go.unlink(missing_ok=True)
    procs, outs, readies = [], [], []
    for i in range(k):
        share = prompts[i::k]
        requests = [
            {
                "messages": respond_messages(text),
                "sampling": dict(n=s.n, temperature=s.temperature, top_p=s.top_p, max_tokens=s.max_tokens,
                                 seed=request_seed(s.seed, pid)),
            }
            for pid, text, _ in share
        ]  # fmt: skip
        w = {
            "model": spec["model"], "engine_args": args, "env": env, "requests": requests, "batch_size": batch_size,
            "chat_template": spec["chat_template"], "ready": str(work / f"ready{i}"), "go": str(go),
            "out": str(work / f"bare{i}.json"),
        }  # fmt: skip
        (work / f"spec{i}.json").write_text(json.dumps(w, ensure_ascii=False))
        (work / f"ready{i}").unlink(missing_ok=True)
        readies.append(work / f"ready{i}")
        outs.append(work / f"bare{i}.json")
        procs.append(subprocess.Popen([sys.executable, __file__, "--bare-worker", str(work / f"spec{i}.json")]))
    while not all(r.exists() for r in readies):
        if any(p.poll() not in (None, 0) for p in procs):
            raise SystemExit("a bare worker failed")
        time.sleep(0.05)
    go.touch()
    for p in procs:
        if p.wait() != 0:
            raise SystemExit("a bare worker failed")
    results = [json.loads(o.read_text()) for o in outs]
    wall = max(r["end"] for r in results) - min(r["start"] for r in results)
    tokens = sum(r["tokens"] for r in results)
    return {
        "engines": k,
        "import_vllm_s": round(max(r["import_s"] for r in results), 2),
        "engine_startup_s": round(max(r["startup_s"] for r in results), 2),
        "wall_s": round(wall, 3),
        "completion_tokens": tokens,
        "tokens_per_s": round(tokens / wall, 1),
    }


# ---- the generate stage through Spark ------------------------------------------------------------------


def run_spark(args, prompts, k: int, work: Path) -> dict:
    import datetime as dt

    from instructlake.jobs.config import load_config
    from instructlake.jobs.runs import Context, run_stage
    from instructlake.jobs.session import build_session
    from instructlake.jobs.tables import SCHEMAS

    cores = os.cpu_count() or 2

    def conf(lake: str, *sets: str):
        return load_config(
            [REPO / "conf" / "local.yaml"],
            [
                f"run.lake_root={lake}", f"run.work_dir={args.work_dir}", f"spark.master=local[{max(k, cores)}]",
                'spark.conf={"spark.ui.enabled": "false"}', f"generate.model_conf={args.model_conf}",
                "generate.input=prompts", "generate.limit=null", f"generate.tasks={k}",
                f"generate.batch_size={args.batch_size}", f"generate.chunk_rows={args.chunk_rows}",
                "generate.progress_interval_s=600", *args.set, *sets,
            ],
        )  # fmt: skip

    now = dt.datetime.now(dt.timezone.utc)

    def seed(ctx, rows) -> None:
        data = [dict(prompt_id=p, text=t, lang=lang, run_id="bench", created_at=now) for p, t, lang in rows]
        ctx.store.append(ctx.spark.createDataFrame(data, SCHEMAS["prompts"]), "prompts", run_id="bench", stage="bench")

    slots = max(k, cores)
    spark = build_session(conf(str(work / "warm")))
    ctx = Context.create(conf(str(work / "lake")), spark=spark)
    seed(ctx, prompts)
    # Warm-up on a lake of its own: as many concurrent tasks as the session has slots, so every Python
    # worker that can exist (Spark hands a task any idle one) has built its engine, as on a long-running
    # cluster. The measured job then finds an engine wherever its tasks land.
    warm = Context.create(conf(str(work / "warm"), f"generate.tasks={slots}"), spark=spark)
    seed(warm, prompts[-4 * slots :])
    warm_result = run_stage(warm, "generate")
    t0 = time.perf_counter()
    result = run_stage(ctx, "generate")
    stage_wall = time.perf_counter() - t0
    s = result.stats
    assert result.rows_out == len(prompts) * s["sampling"]["n"], result.stats
    return {
        "engines": k,
        "spark_master": f"local[{max(k, cores)}]",
        "engine_startup_s": max(warm_result.stats["engine_start_s"], default=None),
        "engine_builds_per_worker": s["engine_builds_per_worker"],
        "stage_wall_s": round(stage_wall, 3),
        "job_wall_s": s["wall_s"],
        "completion_tokens": s["completion_tokens"],
        "tokens_per_s": round(s["completion_tokens"] / stage_wall, 1),
        "job_tokens_per_s": s["tokens_per_s"],
        "chunks": s["chunks"],
        "engine_version": s["engine_version"],
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-conf", default="conf/models/tiny-local.yaml")
    p.add_argument("--prompts", type=int, default=4000)
    p.add_argument("--engines", type=int, nargs="+", default=[1, 2], help="engine counts to compare (K vs K)")
    p.add_argument("--batch-size", type=int, default=256, help="requests per LLM.chat call, both sides")
    p.add_argument("--chunk-rows", type=int, default=256, help="prompts per Delta commit (Spark side)")
    p.add_argument("--work-dir", default=str(REPO / ".scratch"), help="where the tiny model is built / cached")
    p.add_argument("--repeat", type=int, default=3, help="bare/Spark pairs per engine count (median reported)")
    p.add_argument("--set", action="append", default=[], help="extra config overrides (key=value)")
    p.add_argument("--out", default=str(REPO / "out" / "generate_bench.json"))
    p.add_argument("--bare-worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.bare_worker:
        bare_worker(args.bare_worker)
        return {}

    from instructlake.jobs.config import load_config
    from instructlake.jobs.llm.models import engine_spec, resolve_model

    conf = load_config([REPO / "conf" / "local.yaml"], [f"run.work_dir={args.work_dir}", f"generate.model_conf={args.model_conf}", *args.set])
    model = resolve_model(conf.generate, conf)
    spec = engine_spec(model, conf.generate, conf)
    prompts = load_prompts(args.prompts, prompt_filter(model))
    report = {
        "model_conf": args.model_conf, "model": model.name, "engine_args": model.engine_args,
        "sampling": dataclasses.asdict(model.sampling),
        "prompts": len(prompts), "batch_size": args.batch_size, "chunk_rows": args.chunk_rows,
        "cpu_count": os.cpu_count(), "runs": [],
    }  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="generate_bench_") as tmp:
        work = Path(tmp)
        for k in args.engines:
            for r in range(args.repeat):  # alternating, so drift on a shared machine hits both sides
                bare = run_bare(model, spec, prompts, k, args.batch_size, work)
                print(f"bare  x{k} #{r}: {bare}", flush=True)
                spark = run_spark(args, prompts, k, work / f"spark{k}-{r}")
                print(f"spark x{k} #{r}: {spark}", flush=True)
                report["runs"].append({"engines": k, "repeat": r, "bare": bare, "spark": spark,
                                       "ratio": round(spark["tokens_per_s"] / bare["tokens_per_s"], 3)})  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1, default=str))
    print("\n| engines | run | bare start-up s (+ import vllm) | Spark start-up s | bare tok/s | Spark stage tok/s "
          "| Spark job tok/s | ratio |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for r in report["runs"]:
        b, s = r["bare"], r["spark"]
        print(
            f"| {r['engines']} | {r['repeat']} | {b['engine_startup_s']} (+{b['import_vllm_s']}) | {s['engine_startup_s']} | "
            f"{b['tokens_per_s']} | {s['tokens_per_s']} | {s['job_tokens_per_s']} | {r['ratio']} |"
        )
    for k in args.engines:
        ratios = sorted(r["ratio"] for r in report["runs"] if r["engines"] == k)
        report.setdefault("median_ratio", {})[k] = ratios[len(ratios) // 2]
        print(f"engines {k}: median ratio {ratios[len(ratios) // 2]} over {len(ratios)} run(s)")
    Path(args.out).write_text(json.dumps(report, indent=1, default=str))
    print(f"\nwritten: {args.out}")
    return report


if __name__ == "__main__":
    main()
