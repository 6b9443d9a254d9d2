"""Ingest: raw conversation / prompt files -> `prompts_raw` (kept) + `prompts_rejected` (malformed, empty).

Every input record becomes (source, layout, input_file, record_index, raw bytes, error) whatever its format,
so one pure parser (udfs.ingest) decides for all of them. record_index is the 1-based line number for JSONL,
the row index for Parquet and the element index for JSON arrays, so a reject row points at its record.
Plain JSON Lines go through Spark's splittable text reader; gzip, JSON documents and Parquet are read whole,
file by file, in Python workers (udfs.records), so a damaged file is one reject, not a failed job.
Both tables are upserted on their keys: re-running on the same input commits nothing.
"""

from __future__ import annotations

import glob
import gzip
import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql.pandas.types import from_arrow_schema

from instructlake.jobs.config import InputConf
from instructlake.jobs.runs import Context, StageResult
from instructlake.udfs import records as rec
from instructlake.udfs.ingest import OUTPUT_SCHEMA, parse_batch

log = logging.getLogger(__name__)

_BOM = b"\xef\xbb\xbf"
_LINE_EXT = (".jsonl", ".ndjson", ".jsonl.gz", ".ndjson.gz")
_JSON_EXT = (".json", ".json.gz")
_PARQUET_EXT = (".parquet",)


def _open(path: str):
    return gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")


def detect_format(path: str) -> str:
    """jsonl | json | parquet from the extension; a local `.json` is sniffed, since many datasets ship
    JSON Lines under that name: a first line that parses on its own means JSON Lines."""
    lower = path.lower()
    if lower.endswith(_PARQUET_EXT):
        return "parquet"
    if lower.endswith(_LINE_EXT):
        return "jsonl"
    if lower.endswith(_JSON_EXT):
        if "://" in path:
            return "jsonl"
        try:
            with _open(path) as f:
                first = f.readline(1 << 20).removeprefix(_BOM).strip()
        except (OSError, EOFError):  # not gzip after all: the JSON reader reports the file as unreadable
            return "json"
        if first.startswith(b"["):
            return "json"
        try:
            json.loads(first)
            return "jsonl"
        except ValueError:
            return "json"
    raise ValueError(f"ingest: cannot tell the format of {path}; set format: jsonl|json|parquet on this input")


def expand(inp: InputConf) -> list[str]:
    """Local files matching a path, directory or glob (sorted); remote URIs pass through to Spark."""
    if "://" in inp.path and not inp.path.startswith("file://"):
        return [inp.path]
    path = inp.path.removeprefix("file://")
    if Path(path).is_dir():
        files = sorted(str(p) for p in Path(path).rglob("*") if p.is_file() and not p.name.startswith((".", "_")))
    else:
        files = sorted(glob.glob(path, recursive=True))
    if not files:
        raise FileNotFoundError(f"ingest.inputs: nothing matches {inp.path!r}")
    return [str(Path(f).resolve()) for f in files]


def _numbered_lines(spark: SparkSession, files: list[str]) -> DataFrame:
    """JSON Lines with true 1-based line numbers. Spark splits big files; one cheap pass counts the lines
    of each split so every task can number its own lines without seeing the others."""
    lines = spark.read.text(files).select(
        F.col("_metadata.file_path").alias("input_file"),
        F.col("_metadata.file_block_start").alias("block"),
        F.col("value").cast("binary").alias("raw"),  # the bytes as read, so invalid UTF-8 stays visible
    )
    offsets: dict[tuple[str, int], int] = {}
    running: dict[str, int] = {}
    for row in sorted(lines.groupBy("input_file", "block").count().collect()):
        offsets[(row["input_file"], row["block"])] = running.get(row["input_file"], 0)
        running[row["input_file"]] = running.get(row["input_file"], 0) + row["count"]

    def number(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        seen: dict[tuple[str, int], int] = {}
        for b in batches:
            index = []
            for k in zip(b.column("input_file").to_pylist(), b.column("block").to_pylist()):
                seen[k] = seen.get(k, 0) + 1
                index.append(offsets[k] + seen[k])
            columns = [b.column("input_file"), pa.array(index), b.column("raw"), pa.nulls(b.num_rows)]
            yield pa.RecordBatch.from_arrays([c.cast(f.type) for c, f in zip(columns, rec.RECORD_SCHEMA)], schema=rec.RECORD_SCHEMA)

    return lines.mapInArrow(number, rec.RECORD_DDL)


def _whole_files(spark: SparkSession, files: list[str], read: Callable) -> DataFrame:
    files_df = spark.read.format("binaryFile").load(files).select("path", "content")
    return files_df.mapInArrow(rec.from_files(read), rec.RECORD_DDL)


def _readers(fmt: str, files: list[str]) -> list[tuple[list[str], Callable | None]]:
    """(files, reader) groups for one format; no reader means Spark's text reader, which splits big files
    but would abort the job on one damaged gzip stream."""
    gz = [f for f in files if f.lower().endswith(".gz")]
    plain = [f for f in files if not f.lower().endswith(".gz")]
    if fmt == "jsonl":
        groups = [(plain, None), (gz, rec.gzip_lines)]
    elif fmt == "json":
        groups = [(plain, rec.json_records), (gz, rec.gzip_json_records)]
    else:
        groups = [(files, rec.parquet_records)]
    return [(fs, read) for fs, read in groups if fs]


def read_records(spark: SparkSession, inputs: list[InputConf]) -> DataFrame:
    """All inputs as (source, layout, input_file, record_index, raw)."""
    parts = []
    for inp in inputs:
        by_format: dict[str, list[str]] = {}
        for f in expand(inp):
            by_format.setdefault(inp.format if inp.format != "auto" else detect_format(f), []).append(f)
        for fmt, files in by_format.items():
            for group, read in _readers(fmt, files):
                df = _numbered_lines(spark, group) if read is None else _whole_files(spark, group, read)
                parts.append(df.select(F.lit(inp.source).cast("string").alias("source"), F.lit(inp.layout).alias("layout"), "*"))
    out = parts[0]
    for p in parts[1:]:
        out = out.unionByName(p)
    return out


def run(ctx: Context) -> StageResult:
    conf, spark = ctx.conf.ingest, ctx.spark
    records = read_records(spark, conf.inputs)
    if conf.partitions:
        records = records.repartition(conf.partitions)
    # Blank and whitespace-only lines are no records (JSON Lines files often end with one); counted, not
    # parsed. A damage record may have no bytes at all and is still a record.
    blank = F.col("error").isNull() & F.col("raw").cast("string").rlike(r"^\s*$")
    turns = conf.turns
    parsed = records.filter(~blank).mapInArrow(lambda it: (parse_batch(b, turns) for b in it), from_arrow_schema(OUTPUT_SCHEMA))

    # The same key twice in the input (a file listed twice, a re-exported shard): the first good row by
    # file and record index is the row; later ones are kept as rejects under a key of their own. Rejects
    # sort after every good row, so a malformed record never takes the key from a valid one.
    key = ["source", "source_id", "turn"]
    first = Window.partitionBy(*key).orderBy(F.col("reason").isNotNull(), "input_file", "record_index")
    parsed = (
        parsed.withColumn("_n", F.row_number().over(first))
        .withColumn("reason", F.when(F.col("_n") > 1, F.coalesce("reason", F.lit("duplicate_key"))).otherwise(F.col("reason")))
        .withColumn(
            "source_id",
            F.when(F.col("_n") > 1, F.concat_ws("", "source_id", F.lit("@"), "input_file", F.lit("#"), F.col("record_index").cast("string"))).otherwise(F.col("source_id")),
        )
        .drop("_n")
        .withColumn("run_id", F.lit(ctx.run_id))
        .withColumn("created_at", F.current_timestamp())
        .persist()
    )
    try:
        counts = {r["reason"]: r["count"] for r in parsed.groupBy("reason").count().collect()}
        n_blank = records.filter(blank).count()
        kept = parsed.filter(F.col("reason").isNull())
        rejected = parsed.filter(F.col("reason").isNotNull()).withColumn("stage", F.lit("ingest"))
        raw_written = ctx.store.merge(kept, "prompts_raw", run_id=ctx.run_id, stage="ingest")
        rej_written = ctx.store.merge(rejected, "prompts_rejected", run_id=ctx.run_id, stage="ingest")
    finally:
        parsed.unpersist()
    n_kept = counts.pop(None, 0)
    n_rejected = sum(counts.values())
    return StageResult(
        stage="ingest",
        rows_in=n_kept + n_rejected,
        rows_out=n_kept,
        rows_rejected=n_rejected,
        stats={
            "rejected_by_reason": counts,
            "blank_lines": n_blank,
            "prompts_raw": {"inserted": raw_written.inserted, "updated": raw_written.updated},
            "prompts_rejected": {"inserted": rej_written.inserted, "updated": rej_written.updated},
        },
        tables=["prompts_raw", "prompts_rejected"],
    )
