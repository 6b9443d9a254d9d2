"""File bytes -> records (input_file, record_index, raw, error) for the formats read whole in a Python worker:
gzip JSON Lines, JSON documents and Parquet. Spark's own readers abort the job on one damaged file (a cut
gzip stream, a bad Parquet footer, column types that clash between files); read here, a file's damage
becomes one record with `error` set (the parser turns it into `malformed:unreadable_file`) and every
record before the damage is kept. Each file is read on its own, so files need not share a schema.

Size: a record over ingest.max_record_bytes becomes one record with reason `oversize` (its first RAW_CAP
bytes kept, the limit it passed in `error`), and so does a file over ingest.max_file_bytes (jobs.ingest leaves it
unread: Spark's binaryFile reader fails the job on a file of 2 GiB or more) or a gzip JSON document that
decompresses to more. Batches close at 4,096 records or BATCH_BYTES, whichever first: Arrow's binary column
holds under 2 GiB, which 4,096 big records would pass.
"""

from __future__ import annotations

import json
import re
import zlib
from collections.abc import Callable, Iterator

import pyarrow as pa

# error: why the record is a reject before it is parsed (the damaged rest of a file, its size); reason: the
# reject reason then (null: malformed:unreadable_file).
RECORD_SCHEMA = pa.schema(
    [("input_file", pa.string()), ("record_index", pa.int64()), ("raw", pa.binary()), ("error", pa.string()), ("reason", pa.string())]
)
RECORD_DDL = "input_file string, record_index bigint, raw binary, error string, reason string"
Record = tuple[int, bytes, str | None]  # what a reader yields: index, raw, error
Row = tuple[int, bytes, str | None, str | None]  # a record with its reason

OVERSIZE = "oversize"
_BATCH_ROWS = 4096
BATCH_BYTES = 1 << 30  # a batch closes before its raw bytes pass this; ingest.max_record_bytes is at most it
MAX_FILE_BYTES = (1 << 31) - 1  # the most Spark's binaryFile reader reads of one file; ingest.max_file_bytes is at most it
_GZIP_CHUNK = 1 << 16
RAW_CAP = 1 << 16  # the raw a reject keeps (prompts_rejected.raw): enough to see what is wrong, not a whole shard
_WS = re.compile(r"[ \t\n\r]*")
_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]')


class Unreadable(Exception):
    pass


def gunzip(content: memoryview) -> Iterator[bytes]:
    """Decompressed chunks of all gzip members; raises Unreadable at the damage, after yielding everything
    before it (so a cut file still gives its complete lines)."""
    pos, n = 0, len(content)
    while pos < n:
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        while not d.eof:
            if pos >= n:
                raise Unreadable(f"gzip stream ends early at byte {n} (truncated file)")
            chunk = content[pos : pos + _GZIP_CHUNK]
            try:
                out = d.decompress(chunk)
            except zlib.error as e:
                raise Unreadable(f"not gzip or damaged gzip data at byte {pos}: {e}") from None
            pos += len(chunk) - len(d.unused_data)
            if out:
                yield out
        while pos < n and content[pos] == 0:  # zero padding after a member, which gzip(1) accepts
            pos += 1


def gzip_lines(content: memoryview, max_record_bytes: int) -> Iterator[Record]:
    """1-based lines of a gzip JSON Lines file; a damaged stream ends with one error record holding the
    partial line. A line past max_record_bytes is not held whole (a small file may inflate to any size):
    it is yielded as its first max_record_bytes + 1 bytes, which from_files takes as oversize."""
    index, pending, held = 0, [], 0

    def add(part: bytes) -> None:
        nonlocal held
        if held <= max_record_bytes:
            pending.append(part[: max_record_bytes + 1 - held])
            held += len(pending[-1])

    try:
        for chunk in gunzip(content):
            start = 0
            while (nl := chunk.find(b"\n", start)) >= 0:
                add(chunk[start:nl])
                index += 1
                yield index, b"".join(pending).removesuffix(b"\r"), None
                pending, held, start = [], 0, nl + 1
            add(chunk[start:])
    except Unreadable as e:
        yield index + 1, b"".join(pending)[:RAW_CAP], f"{e}; {index} complete lines read"
        return
    if rest := b"".join(pending):
        yield index + 1, rest.removesuffix(b"\r"), None


def _value_end(text: str, pos: int) -> int:
    """End of the bracketed JSON value at pos, found by counting brackets outside strings: for values too
    deeply nested for the decoder, which the parser then rejects by depth. -1 if it never closes."""
    depth = 0
    for m in _TOKEN.finditer(text, pos):
        token = m.group()
        if token in ("[", "{"):
            depth += 1
        elif token in ("]", "}"):
            depth -= 1
            if depth == 0:
                return m.end()
    return -1


def json_records(content: memoryview) -> Iterator[Record]:
    """A JSON array gives one record per element (0-based), sliced from the file as written; anything else
    is one record for the parser to judge. Decoding with surrogateescape keeps invalid UTF-8 inside one
    element, so that element alone is rejected. Where the array's structure breaks, the rest of the file
    is one error record."""
    data = bytes(content)
    text = data.decode("utf-8", "surrogateescape").removeprefix("\ufeff")
    pos = _WS.match(text).end()
    if not text.startswith("[", pos):
        yield 0, data, None
        return
    decoder, index = json.JSONDecoder(), 0
    pos = _WS.match(text, pos + 1).end()
    if text.startswith("]", pos):
        pos = _WS.match(text, pos + 1).end()
    else:
        while True:
            try:
                end = decoder.raw_decode(text, pos)[1]
            except RecursionError:
                end = _value_end(text, pos)
                if end < 0:
                    yield index, _rest(text, pos), f"JSON array element {index} never closes"
                    return
            except ValueError as e:
                yield index, _rest(text, pos), f"JSON array broken at element {index}: {e}"
                return
            yield index, text[pos:end].encode("utf-8", "surrogateescape"), None
            index += 1
            pos = _WS.match(text, end).end()
            if text.startswith(",", pos):
                pos = _WS.match(text, pos + 1).end()
                continue
            if text.startswith("]", pos):
                pos = _WS.match(text, pos + 1).end()
                break
            yield index, _rest(text, pos), f"JSON array broken after element {index - 1}: expected ',' or ']'"
            return
    if pos < len(text):
        yield index, _rest(text, pos), "content after the JSON array's closing bracket"


class TooBig(Exception):
    """A file that cannot be read in full within ingest.max_file_bytes: the whole file is one oversize record."""


def gzip_json_records(content: memoryview, max_file_bytes: int) -> Iterator[Record]:
    """A gzip JSON document: the elements in its readable part, then one error record for the damage. It is
    parsed whole, so one that decompresses past max_file_bytes is one oversize record (TooBig)."""
    parts, damage, size = [], None, 0
    try:
        for part in gunzip(content):
            size += len(part)
            if size > max_file_bytes:
                raise TooBig(f"gzip JSON document decompressing to over ingest.max_file_bytes ({max_file_bytes:,} bytes)")
            parts.append(part)
    except Unreadable as e:
        damage = str(e)
    index = 0
    for index, raw, error in json_records(memoryview(b"".join(parts))):
        if error is not None and damage is not None:
            break  # the cut seen from the JSON side; the gzip error below says why
        yield index, raw, error
        index += 1
    if damage is not None:
        yield index, b"", damage


def _rest(text: str, pos: int) -> bytes:
    return text[pos : pos + RAW_CAP].encode("utf-8", "surrogateescape")


def parquet_records(content: memoryview) -> Iterator[Record]:
    """Rows of one Parquet file as JSON objects (0-based row index); a file that stops being readable ends
    with one error record."""
    import pyarrow.parquet as pq

    index = 0
    try:
        file = pq.ParquetFile(pa.BufferReader(pa.py_buffer(content)))
        for group in range(file.num_row_groups):  # whole row groups: a damaged one loses no rows before it
            for batch in file.read_row_group(group).to_batches(_BATCH_ROWS):
                for row in batch.to_pylist():
                    yield index, json.dumps(row, ensure_ascii=False, default=str).encode(), None
                    index += 1
    # Whatever pyarrow raises on a damaged file (ArrowInvalid, OSError, a UnicodeDecodeError on bad string
    # data), the file's rest is one reject and the job goes on.
    except Exception as e:
        yield index, b"", f"unreadable Parquet after {index} rows: {type(e).__name__}: {e}"


def oversize(index: int, raw: bytes, what: str) -> Row:
    """A record rejected for its size: its first RAW_CAP bytes, `what` (the limit it passed)."""
    return index, bytes(raw[:RAW_CAP]), what, OVERSIZE


def oversize_detail(max_record_bytes: int) -> str:
    return f"record over ingest.max_record_bytes ({max_record_bytes:,} bytes)"


def sized(records: Iterator[Record], max_record_bytes: int) -> Iterator[Row]:
    """Records with their reason: oversize past max_record_bytes, else None."""
    for index, raw, error in records:
        if len(raw) > max_record_bytes:
            yield oversize(index, raw, oversize_detail(max_record_bytes))
        else:
            yield index, raw, error, None


def batches(path: str, rows: Iterator[Row]) -> Iterator[pa.RecordBatch]:
    """Record batches of one file: _BATCH_ROWS records, or fewer where the next would take the raw bytes past
    BATCH_BYTES (one record is at most ingest.max_record_bytes <= BATCH_BYTES)."""
    pending: list[Row] = []
    held = 0
    for row in rows:
        if pending and (len(pending) == _BATCH_ROWS or held + len(row[1]) > BATCH_BYTES):
            yield _batch(path, pending)
            pending, held = [], 0
        pending.append(row)
        held += len(row[1])
    if pending:
        yield _batch(path, pending)


def from_files(read: Callable[[memoryview], Iterator[Record]], max_record_bytes: int):
    """mapInArrow body over binaryFile rows (path, content): `read` turns each file's bytes into records,
    those over max_record_bytes become oversize ones."""

    def run(batches_in: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for b in batches_in:
            contents = b.column("content")
            for i, path in enumerate(b.column("path").to_pylist()):
                buf = contents[i].as_buffer()
                try:
                    yield from batches(path, sized(read(memoryview(buf) if buf is not None else memoryview(b"")), max_record_bytes))
                except TooBig as e:
                    yield _batch(path, [oversize(0, b"", str(e))])

    return run


def _batch(path: str, rows: list[Row]) -> pa.RecordBatch:
    index, raw, error, reason = zip(*rows)
    columns = [[path] * len(rows), index, raw, error, reason]
    return pa.RecordBatch.from_arrays([pa.array(c, f.type) for c, f in zip(columns, RECORD_SCHEMA)], schema=RECORD_SCHEMA)
