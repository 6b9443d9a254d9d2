"""What the maintain stage buys: queries over a table written in many small chunk commits, before and after
compaction, measured in one run; prints a Markdown table.

    python benchmarks/maintain_bench.py [--commits 1000] [--rows 256] [--repeat 3] [--work DIR]

The table is `responses`, filled the way the LLM stages fill it in direct mode: one delta-rs commit per
chunk of `--rows` rows (RsTable.append with an app transaction), `--commits` times. The rows are
responses-shaped, with the real prompts of ../shared/data as prompt texts. Then, before and after
`run_stage(ctx, "maintain")`, the best of `--repeat` runs of: Spark reading the table through the store
and aggregating it (what quality, export and report do), and DuckDB answering the same aggregate through
`instructlake sql`'s connection (what a user querying the lake does).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROMPTS = REPO.parent / "shared" / "data" / "prompts" / "en_dolly_open_qa.jsonl"
QUERY = "SELECT lang, finish_reason, count(*) AS n, avg(completion_tokens) AS tokens FROM responses GROUP BY 1, 2"


def chunks(commits: int, rows: int):
    import pyarrow as pa

    from instructlake.jobs.store import arrow_schema
    from instructlake.jobs.tables import SCHEMAS
    from instructlake.udfs.text import content_hash, prompt_id

    texts = [json.loads(line)["text"] for line in PROMPTS.open(encoding="utf-8")]
    now = dt.datetime.now(dt.timezone.utc)
    schema = arrow_schema(SCHEMAS["responses"])
    for c in range(commits):
        batch = []
        for i in range(rows):
            text = texts[(c * rows + i) % len(texts)]
            pid = prompt_id(text)
            batch.append(dict(
                response_id=content_hash(pid, str(c), str(i)), prompt_id=pid, origin_prompt_id=pid, task="respond",
                lang="en" if i % 3 else "ja", model="bench", gen_config_id="g", sample_index=i % 2, n=2,
                temperature=0.6, top_p=1.0, max_tokens=512, seed=i, system_prompt=None, prompt_text=text,
                text=f"answer {c}-{i}: " + text[::-1], finish_reason="stop" if i % 7 else "length",
                prompt_tokens=len(text) // 4, completion_tokens=(c + i) % 512, latency_s=0.5, engine="vllm",
                engine_version="bench", run_id="bench", created_at=now,
            ))  # fmt: skip
        yield c, pa.Table.from_pylist(batch, schema=schema)


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def measure(ctx, repeat: int) -> dict[str, float]:
    from pyspark.sql import functions as F

    from instructlake.jobs.sql import connect

    def spark_query() -> None:
        df = ctx.store.read("responses")
        df.groupBy("lang", "finish_reason").agg(F.count("*"), F.avg("completion_tokens")).collect()

    def duckdb_query() -> None:
        connect(ctx.conf).sql(QUERY).fetchall()

    return {"spark": best(spark_query, repeat), "duckdb": best(duckdb_query, repeat)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--commits", type=int, default=1000)
    ap.add_argument("--rows", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--work", default=None, help="lake and scratch (default .scratch/maintain_bench)")
    args = ap.parse_args()

    from instructlake.jobs.config import load_config
    from instructlake.jobs.runs import Context, run_stage

    work = Path(args.work or REPO / ".scratch" / "maintain_bench").resolve()
    shutil.rmtree(work, ignore_errors=True)
    conf = load_config(
        [REPO / "conf" / "local.yaml"],
        [f"run.lake_root={work / 'lake'}", f"run.work_dir={work / 'work'}", "maintain.tables=[responses]",
         'spark.conf={"spark.ui.enabled": "false"}'],
    )  # fmt: skip
    ctx = Context.create(conf)
    ctx.store.create("responses")
    table = ctx.store.rs_table("responses")
    t0 = time.perf_counter()
    for c, data in chunks(args.commits, args.rows):
        table.append(data, app_id=f"bench:{c}")
    write_s = time.perf_counter() - t0

    before = measure(ctx, args.repeat)
    t0 = time.perf_counter()
    result = run_stage(ctx, "maintain")
    maintain_s = time.perf_counter() - t0
    after = measure(ctx, args.repeat)
    stats = result.stats["tables"]["responses"]
    ctx.spark.stop()

    rows = args.commits * args.rows
    print(f"\n## responses: {rows:,} rows written in {args.commits:,} chunk commits ({write_s:.1f} s)\n")
    print(f"maintain: {maintain_s:.1f} s; files {stats['before']['files']:,} -> {stats['after']['files']:,}, "
          f"{stats['before']['bytes'] / 2**20:.1f} MB -> {stats['after']['bytes'] / 2**20:.1f} MB, "
          f"rows {stats['before']['rows']:,} -> {stats['after']['rows']:,}\n")  # fmt: skip
    print(f"| query (best of {args.repeat}) | before (s) | after (s) | speed-up |")
    print("|---|---:|---:|---:|")
    for engine, label in (("spark", "Spark: store.read + groupBy"), ("duckdb", "DuckDB: `instructlake sql` connection + query")):
        print(f"| {label} | {before[engine]:.2f} | {after[engine]:.2f} | {before[engine] / after[engine]:.1f}x |")


if __name__ == "__main__":
    main()
