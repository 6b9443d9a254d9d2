"""What no-key-twice costs: chunk commits into a `responses` table of --rows rows (delta-rs), fenced (the
one-snapshot check of the chunk's app id and the fence, both recorded in the commit) against the same
commits unfenced (the app id only: the commit path before fencing), in the same run, one task and
--tasks concurrent tasks (fenced commits of one run conflict with each other on the fence's app
transaction and retry). Run: .venv/bin/python benchmarks/fence_bench.py [--rows 1000000]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pyarrow as pa
from deltalake import write_deltalake

from instructlake.jobs.store import arrow_schema
from instructlake.jobs.tables import SCHEMAS
from instructlake.udfs.rs_table import RsTable

SCHEMA = arrow_schema(SCHEMAS["responses"])


def rows(n: int, tag: str) -> pa.Table:
    ids = [f"{tag}-{i}" for i in range(n)]
    cols = {f.name: pa.nulls(n, f.type) for f in SCHEMA}
    cols.update(response_id=pa.array(ids), prompt_id=pa.array(ids), text=pa.array(["an answer of a few words"] * n))
    return pa.table(cols, schema=SCHEMA)


def build(root: Path, n: int, files: int) -> str:
    uri = str(root / "responses")
    per = n // files
    for f in range(files):
        write_deltalake(uri, rows(per, f"seed{f}"), mode="append")
    return uri


def commit_times(table: RsTable, chunks: int, chunk_rows: int, tasks: int) -> list[float]:
    times: list[float] = []
    lock = threading.Lock()

    def task(t: int) -> None:
        for c in range(chunks):
            data = rows(chunk_rows, f"t{t}c{c}-{uuid.uuid4().hex[:6]}")
            t0 = time.perf_counter()
            table.append(data, f"responses:bench:{uuid.uuid4().hex}:{t}-{c}")
            with lock:
                times.append(time.perf_counter() - t0)

    threads = [threading.Thread(target=task, args=(t,)) for t in range(tasks)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return times


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--files", type=int, default=200, help="data files the table starts with (chunked commits leave many)")
    ap.add_argument("--chunks", type=int, default=10, help="commits per task")
    ap.add_argument("--chunk-rows", type=int, default=512)
    ap.add_argument("--tasks", type=int, default=4)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        uri = build(Path(tmp), args.rows, args.files)
        plain = RsTable(uri, SCHEMA, {}, retries=50)
        fenced = RsTable(uri, SCHEMA, {}, retries=50, fence=plain.take_fence())
        print(f"responses: {args.rows:,} rows in {args.files} files; chunks of {args.chunk_rows} rows\n")
        print("| commits | unfenced median (s) | fenced median (s) | fenced / unfenced |")
        print("|---|---:|---:|---:|")
        for tasks in (1, args.tasks):
            base = commit_times(plain, args.chunks, args.chunk_rows, tasks)
            fence = commit_times(fenced, args.chunks, args.chunk_rows, tasks)
            b, f = statistics.median(base), statistics.median(fence)
            print(f"| {tasks} task(s) x {args.chunks} | {b:.3f} | {f:.3f} | {f / b:.2f}x |")


if __name__ == "__main__":
    main()
