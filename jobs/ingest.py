"""Ingest: raw conversation / prompt files -> `prompts_raw` (kept) + `prompts_rejected` (malformed, empty).

Every input record becomes (source, layout, input_file, record_index, raw bytes, error) whatever its format,
so one pure parser (udfs.ingest) decides for all of them. record_index is the 1-based line number for JSONL,
the row index for Parquet and the element index for JSON arrays, so a reject row points at its record.
Plain JSON Lines go through Spark's splittable text reader; gzip, JSON documents and Parquet are read whole,
file by file, in Python workers (udfs.records), so a damaged file is one reject, not a failed job; so is
a file or record over ingest.max_file_bytes / max_record_bytes (reason `oversize`).
Both tables are upserted on their keys: re-running on the same input commits nothing.
"""

from __future__ import annotations

import functools
import glob
import logging
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql.pandas.types import from_arrow_schema

from instructlake.jobs.config import IngestConf, InputConf
from instructlake.jobs.runs import Context, StageResult
from instructlake.udfs import records as rec
from instructlake.udfs.ingest import OUTPUT_SCHEMA, parse_batch

log = logging.getLogger(__name__)

_BOM = b"\xef\xbb\xbf"
_LINE_EXT = (".jsonl", ".ndjson", ".jsonl.gz", ".ndjson.gz")
_JSON_EXT = (".json", ".json.gz")
_PARQUET_EXT = (".parquet",)


_WHITESPACE = b" \t\r\n"
_SNIFF_CHUNK = 1 << 16
_SNIFF_LIMIT = 1 << 24  # leading whitespace read before giving up: a file of blanks is JSON Lines (no records)


class HadoopFiles:
    """Remote files (any URI) through the session's Hadoop file systems: the ones, and the credentials,
    Spark reads the data with. Driver-side, for what ingest must see before Spark reads: the files a
    remote glob matches and their first bytes."""

    def __init__(self, spark: SparkSession):
        self.jvm = getattr(spark, "_jvm", None)  # none under Spark Connect
        self.hadoop = spark._jsc.hadoopConfiguration() if self.jvm is not None else None

    def _fs(self, uri: str):
        if self.jvm is None:
            raise ValueError(f"ingest: cannot look into {uri} from this session (no JVM); set format: jsonl|json on this input")
        path = self.jvm.org.apache.hadoop.fs.Path(uri)
        return path, path.getFileSystem(self.hadoop)

    def glob(self, uri: str) -> list[str]:
        """The files a URI names, sorted: a file, a glob's matches, a folder's files (recursively, as a
        local folder's; hidden and `_` files left out, as Spark's readers do)."""
        path, fs = self._fs(uri)
        found = []
        for status in fs.globStatus(path) or []:
            if status.isFile():
                found.append(str(status.getPath().toString()))
                continue
            listing = fs.listFiles(status.getPath(), True)
            while listing.hasNext():
                f = listing.next().getPath()
                if not str(f.getName()).startswith((".", "_")):
                    found.append(str(f.toString()))
        if not found:
            raise FileNotFoundError(f"ingest.inputs: nothing matches {uri!r}")
        return sorted(found)

    def chunks(self, uri: str) -> Iterator[bytes]:
        path, fs = self._fs(uri)
        stream = fs.open(path)
        try:
            while chunk := bytes(stream.readNBytes(_SNIFF_CHUNK)):
                yield chunk
        finally:
            stream.close()


def _local_chunks(path: str) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while chunk := f.read(_SNIFF_CHUNK):
            yield chunk


def _gunzipped(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """Decompressed chunks of a gzip stream (members one after another); zlib.error where it is no gzip."""
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    for chunk in chunks:
        while chunk:
            if out := d.decompress(chunk):
                yield out
            chunk = d.unused_data if d.eof else b""
            if d.eof:
                d = zlib.decompressobj(16 + zlib.MAX_WBITS)


def first_byte(chunks: Iterator[bytes]) -> bytes:
    """The file's first byte that is not whitespace, past a UTF-8 BOM; b"" for a file of blanks."""
    head, start, seen = b"", True, 0
    for chunk in chunks:
        head += chunk
        if start:
            if len(head) < len(_BOM) and _BOM.startswith(head):
                continue  # a BOM cut across chunks
            head, start = head.removeprefix(_BOM), False
        if rest := head.lstrip(_WHITESPACE):
            return rest[:1]
        seen, head = seen + len(head), b""
        if seen > _SNIFF_LIMIT:
            break
    return b""


def detect_format(path: str, remote: HadoopFiles | None = None) -> str:
    """jsonl | json | parquet from the extension. A `.json` (or `.json.gz`) is a JSON document when its first
    byte past a BOM and whitespace is `[` (an array, one record per element), else JSON Lines (many
    datasets ship them under that name): the first line's content decides nothing, so a malformed or huge
    first line is one reject, not the whole file. Remote files are looked into through `remote`."""
    lower = path.lower()
    if lower.endswith(_PARQUET_EXT):
        return "parquet"
    if lower.endswith(_LINE_EXT):
        return "jsonl"
    if lower.endswith(_JSON_EXT):
        if "://" in path and remote is None:
            raise ValueError(f"ingest: cannot look into {path} to tell JSON from JSON Lines; set format: jsonl|json on this input")
        chunks = remote.chunks(path) if "://" in path else _local_chunks(path)
        try:
            first = first_byte(_gunzipped(chunks) if lower.endswith(".gz") else chunks)
        except (zlib.error, OSError):  # not gzip after all, or unreadable: the JSON reader reports the file
            return "json"
        return "json" if first == b"[" else "jsonl"
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


def input_files(inputs: list[InputConf], remote: HadoopFiles | None = None) -> list[tuple[InputConf, str, str]]:
    """(input, file, format) for every file the inputs name, each file once: a file an earlier input matched
    too is read with that input's settings only (read twice, each record would be a duplicate_key reject
    of itself). A remote `.json` input of format auto is listed through `remote`, so each of its files is
    looked into; other remote inputs pass to Spark as given."""
    seen: dict[str, int] = {}
    out = []
    for i, inp in enumerate(inputs):
        files = expand(inp)
        if inp.format == "auto" and remote is not None:
            files = [f for uri in files for f in (remote.glob(uri) if "://" in uri and uri.lower().endswith(_JSON_EXT) else [uri])]
        for f in files:
            if f in seen:
                log.warning("ingest.inputs.%d (%s) matches %s, which ingest.inputs.%d already reads: read once, with that input's settings", i, inp.path, f, seen[f])
                continue
            seen[f] = i
            out.append((inp, f, inp.format if inp.format != "auto" else detect_format(f, remote)))
    return out


def _numbered_lines(spark: SparkSession, files: list[str], max_record_bytes: int) -> DataFrame:
    """JSON Lines with true 1-based line numbers. Spark splits big files; one cheap pass counts the lines
    of each split so every task can number its own lines without seeing the others. A line over
    max_record_bytes is cut before it reaches Python and becomes an oversize record."""
    # Lines end at LF only, as in gzip files (udfs.records.gzip_lines): Spark's default also splits at a bare
    # CR, which JSON allows as whitespace inside a record. A CRLF's CR is dropped below.
    value = F.col("value").cast("binary")  # the bytes as read, so invalid UTF-8 stays visible
    over = F.octet_length(value) > max_record_bytes
    lines = spark.read.option("lineSep", "\n").text(files).select(
        F.col("_metadata.file_path").alias("input_file"),
        F.col("_metadata.file_block_start").alias("block"),
        F.when(over, F.substring(value, 1, rec.RAW_CAP)).otherwise(value).alias("raw"),
        F.when(over, F.lit(rec.oversize_detail(max_record_bytes))).alias("error"),
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
            raw, error = b.column("raw"), b.column("error")
            raw = pc.if_else(pc.ends_with(raw, pattern="\r"), pc.binary_slice(raw, 0, -1), raw)
            reason = pc.if_else(pc.is_null(error), pa.nulls(b.num_rows, pa.string()), rec.OVERSIZE)
            columns = [b.column("input_file"), pa.array(index), raw, error, reason]
            yield pa.RecordBatch.from_arrays([c.cast(f.type) for c, f in zip(columns, rec.RECORD_SCHEMA)], schema=rec.RECORD_SCHEMA)

    return lines.mapInArrow(number, rec.RECORD_DDL)


def _whole_files(spark: SparkSession, files: list[str], read: Callable, conf: IngestConf) -> DataFrame:
    """Records of files read whole. A file over max_file_bytes is left unread (the binaryFile reader would
    fail the job on it from 2 GiB): one oversize record. Listing the sizes reads no content."""
    sizes = spark.read.format("binaryFile").load(files).select("path", "length").collect()
    small = [r["path"] for r in sizes if r["length"] <= conf.max_file_bytes]
    big = [
        (r["path"], 0, b"", f"file of {r['length']:,} bytes, over ingest.max_file_bytes ({conf.max_file_bytes:,})", rec.OVERSIZE)
        for r in sizes if r["length"] > conf.max_file_bytes
    ]  # fmt: skip
    if big:
        log.warning("ingest: %d file(s) over ingest.max_file_bytes left unread, each one oversize reject: %s", len(big), ", ".join(b[0] for b in big))
    parts = [spark.createDataFrame(big, rec.RECORD_DDL)] if big else []
    if small:
        files_df = spark.read.format("binaryFile").load(small).select("path", "content")
        parts.append(files_df.mapInArrow(rec.from_files(read, conf.max_record_bytes), rec.RECORD_DDL))
    return functools.reduce(DataFrame.unionByName, parts) if parts else spark.createDataFrame([], rec.RECORD_DDL)


def _readers(fmt: str, files: list[str], conf: IngestConf) -> list[tuple[list[str], Callable | None]]:
    """(files, reader) groups for one format; no reader means Spark's text reader, which splits big files
    but would abort the job on one damaged gzip stream."""
    gz = [f for f in files if f.lower().endswith(".gz")]
    plain = [f for f in files if not f.lower().endswith(".gz")]
    if fmt == "jsonl":
        groups = [(plain, None), (gz, functools.partial(rec.gzip_lines, max_record_bytes=conf.max_record_bytes))]
    elif fmt == "json":
        groups = [(plain, rec.json_records), (gz, functools.partial(rec.gzip_json_records, max_file_bytes=conf.max_file_bytes))]
    else:
        groups = [(files, rec.parquet_records)]
    return [(fs, read) for fs, read in groups if fs]


def read_records(spark: SparkSession, conf: IngestConf) -> DataFrame:
    """All inputs as (source, layout, input_file, record_index, raw, error, reason)."""
    by_input: dict[int, tuple[InputConf, dict[str, list[str]]]] = {}
    for inp, f, fmt in input_files(conf.inputs, HadoopFiles(spark)):
        by_input.setdefault(id(inp), (inp, {}))[1].setdefault(fmt, []).append(f)
    parts = []
    for inp, by_format in by_input.values():
        for fmt, files in by_format.items():
            for group, read in _readers(fmt, files, conf):
                df = _numbered_lines(spark, group, conf.max_record_bytes) if read is None else _whole_files(spark, group, read, conf)
                parts.append(df.select(F.lit(inp.source).cast("string").alias("source"), F.lit(inp.layout).alias("layout"), "*"))
    out = parts[0]
    for p in parts[1:]:
        out = out.unionByName(p)
    return out


def run(ctx: Context) -> StageResult:
    conf, spark = ctx.conf.ingest, ctx.spark
    records = read_records(spark, conf)
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
