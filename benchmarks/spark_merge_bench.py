"""What a staged commit costs on delta-spark as `responses` grows: one chunk of --chunk-rows new responses,
staged as the LLM stages stage it (udfs.sinks.StagingSink), merged by the driver (jobs.llm.staging.
commit_staged: change detection, then one keyed MERGE) into a table of N rows, for each N of --rows.
Reports the commit's seconds and, of those, the MERGE's scan for matching target rows (Delta's
`scanTimeMs` in the commit's operationMetrics): a commit that reads the whole table grows with it.
Responses carry --text-bytes of varied real prose each (answers are that long), so a read of whole rows
costs what it costs on a real table. Run: .venv/bin/python benchmarks/spark_merge_bench.py [--rows 100000 1000000]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import pyarrow as pa
from deltalake import DeltaTable, write_deltalake
from fence_bench import SCHEMA, rows

REPO = Path(__file__).resolve().parents[1]
PROSE = REPO.parent / "shared" / "data" / "prompts" / "en_dolly_open_qa.jsonl"


def build(root: Path, n: int, files: int, text_bytes: int) -> str:
    """A responses table of n rows in `files` commits, each row's text a different window of real prose."""
    prose = PROSE.read_text(encoding="utf-8")
    span = len(prose) - text_bytes
    uri = str(root / "responses")
    per = n // files
    for f in range(files):
        batch = rows(per, f"seed{f}")
        texts = [prose[(f * per + i) * 7919 % span :][:text_bytes] for i in range(per)]
        write_deltalake(uri, batch.set_column(SCHEMA.get_field_index("text"), "text", pa.array(texts)), mode="append")
    return uri


def main() -> None:
    from instructlake.jobs.config import load_config
    from instructlake.jobs.llm.staging import commit_staged
    from instructlake.jobs.runs import Context
    from instructlake.udfs.sinks import StagingSink

    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--files", type=int, default=200, help="data files the table starts with")
    ap.add_argument("--chunk-rows", type=int, default=512)
    ap.add_argument("--repeat", type=int, default=3, help="commits per table size (the median is reported)")
    ap.add_argument("--text-bytes", type=int, default=1000, help="characters of each response's text")
    args = ap.parse_args()
    print(f"| table rows | table MiB | staged commit of {args.chunk_rows} rows (s, median) | of which MERGE scan (s) |")
    print("|---:|---:|---:|---:|")
    for n in args.rows:
        with tempfile.TemporaryDirectory() as tmp:
            lake = Path(tmp) / "lake"
            build(lake, n, args.files, args.text_bytes)  # delta-rs writes it fast; delta-spark reads and merges into it
            DeltaTable(str(lake / "responses")).create_checkpoint()  # as delta-spark leaves one every 10 commits
            size = sum(f.stat().st_size for f in (lake / "responses").glob("*.parquet"))
            conf = load_config(
                [REPO / "conf" / "local.yaml"],
                [f"run.lake_root={lake}", f"run.work_dir={tmp}/work", "delta.backend=spark",
                 f"delta.ivy_dir={REPO / '.scratch' / 'ivy'}"],
            )  # fmt: skip
            ctx = Context.create(conf)
            times, scans = [], []
            for r in range(args.repeat):
                root = f"{tmp}/staging"
                sink = StagingSink(root, {"responses": SCHEMA}, ("responses",), f"bench-r{r}")
                sink.commit("0-0", {"responses": rows(args.chunk_rows, f"new{r}").to_pylist()})
                t0 = time.perf_counter()
                out = commit_staged(ctx.store, root, ("responses",), run_id=f"bench{r}", stage="generate")
                times.append(time.perf_counter() - t0)
                assert out["responses"]["inserted"] == args.chunk_rows, out
                metrics = ctx.store._delta_table("responses").history(1).select("operationMetrics").first()[0]
                scans.append(int(metrics["scanTimeMs"]) / 1000)
            ctx.spark.stop()
            print(f"| {n:,} | {size / 2**20:.0f} | {statistics.median(times):.1f} | {statistics.median(scans):.1f} |")


if __name__ == "__main__":
    main()
