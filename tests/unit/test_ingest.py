"""Ingest as pure functions: the record parser (each malformed shape gets its reason; layouts, BOMs and tags,
the raw text a reject keeps), how a JSON file is told from JSON Lines, and which files the inputs name."""

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pytest

from instructlake.udfs.ingest import Malformed, parse_batch, parse_record, source_from_path
from instructlake.udfs.text import normalize


@pytest.mark.parametrize(
    "raw, reason",
    [
        (b"[1, 2]", "not_an_object"),
        (b'{"conversation": "hello"}', "missing_conversation"),
        (b'{"conversation": [{"role": "assistant", "content": "x"}]}', "no_user_turn"),
        (b'{"conversation": [7]}', "bad_message"),
        (b'{"id": 1}', "missing_text"),
        (b'{"text": ["a"]}', "non_string_content"),
        (b'{"text": ' + b"[" * 10_000 + b"]" * 10_000 + b"}", "too_deep"),
        (b'{"id": "s", "text": "\\udc00"}', "invalid_unicode"),
    ],
)
def test_parse_record_reasons(raw, reason):
    with pytest.raises(Malformed) as e:
        parse_record(raw)
    assert e.value.reason == reason


def test_parse_record_bom_brackets_in_strings_and_odd_tags():
    _, sid, rows = parse_record(b'\xef\xbb\xbf{"id": "b", "text": "' + b"[{" * 200 + b'", "lang": 5, "model": {}}')
    assert (sid, rows[0]["text"], rows[0]["source_lang"], rows[0]["source_model"]) == ("b", "[{" * 200, None, None)


def test_parse_record_sharegpt_and_instruction_input():
    layout, sid, rows = parse_record(b'{"id": "x", "conversations": [{"from": "human", "value": "hi"}]}')
    assert (layout, sid, rows[0]["text"]) == ("lmsys", "x", "hi")
    _, _, rows = parse_record(b'{"instruction": "Sort these", "input": "3, 1, 2"}')
    assert rows[0]["text"] == "Sort these\n\n3, 1, 2"


def test_normalize_and_source_names():
    assert normalize("  caf\u0065\u0301\r\n\n\n\nx\u00a0y\u200b  \n    code()  ") == "caf\u00e9\n\nx y\n    code()"
    assert source_from_path("file:///d/lmsys-00001.parquet") == "lmsys-00001"
    assert source_from_path("/d/wild.jsonl.gz") == "wild"



def test_json_or_json_lines_by_the_first_byte(tmp_path):
    """`[` (after a BOM and whitespace) opens a JSON array; anything else is JSON Lines, whatever the first
    line holds: a malformed or huge first line must not make 200 good records one reject."""
    from instructlake.jobs.ingest import detect_format

    good = b"".join(json.dumps({"id": f"g{i}", "text": f"prompt {i}"}).encode() + b"\n" for i in range(200))
    files = {
        "bad_first.json": b'{"id": "broken", "text": "cut\n' + good,
        "huge_first.json": b'{"text": "' + b"x" * (1 << 20) + b'"}\n' + good,
        "lines.json": good,
        "array.json": b"\xef\xbb\xbf \r\n\t[\n" + good.replace(b"\n", b",\n").rstrip(b",\n") + b"\n]\n",
        "document.json": b'{"text": "one document"}',
        "bad_first.json.gz": gzip.compress(b"{broken\n" + good),
        "array.json.gz": gzip.compress(b"\n  [1, 2]"),
        "not_gzip.json.gz": b"[1, 2]",  # the gzip JSON reader reports it unreadable
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    found = {name: detect_format(str(tmp_path / name)) for name in files}
    assert found == {
        "bad_first.json": "jsonl", "huge_first.json": "jsonl", "lines.json": "jsonl", "array.json": "json",
        "document.json": "jsonl", "bad_first.json.gz": "jsonl", "array.json.gz": "json", "not_gzip.json.gz": "json",
    }  # fmt: skip


def _records(raws: list[bytes]) -> pa.RecordBatch:
    n = len(raws)
    return pa.RecordBatch.from_pydict(
        {"source": ["s"] * n, "layout": ["auto"] * n, "input_file": ["/d/f.jsonl"] * n, "record_index": list(range(1, n + 1)),
         "raw": raws, "error": [None] * n, "reason": [None] * n}  # fmt: skip
    )


def test_reject_raw_is_capped_with_its_length_in_detail():
    cut = b'{"id": "big", "text": "' + "あ".encode() * 50_000  # 150 KB of JSON that never closes
    empty = b'{"id": "blank", "text": "' + "\u200b".encode() * 70_000 + b'"}'  # parses, but no visible text
    small = b'{"id": "s", "text": 5}'
    out = parse_batch(_records([cut, empty, small]), "first").to_pylist()
    assert [r["reason"] for r in out] == ["malformed:bad_json", "empty", "malformed:non_string_content"]
    for row, raw in zip(out[:2], (cut, empty)):
        assert len(row["raw"].encode()) <= 64 * 1024 and "\\x" not in row["raw"]  # cut on a character boundary
        assert raw.decode().startswith(row["raw"]) and f"of {len(raw)} bytes" in row["detail"]
    assert out[2]["raw"] == small.decode() and "bytes" not in out[2]["detail"]


def test_a_file_two_inputs_match_is_read_once_with_the_first_inputs_settings(tmp_path, caplog):
    from instructlake.jobs.config import InputConf
    from instructlake.jobs.ingest import input_files

    for name in ("a.jsonl", "b.jsonl"):
        (tmp_path / name).write_bytes(b'{"text": "x"}\n')
    inputs = [InputConf(path=f"{tmp_path}/a.jsonl", source="first"), InputConf(path=f"{tmp_path}/*.jsonl", source="glob")]
    found = [(inp.source, Path(f).name, fmt) for inp, f, fmt in input_files(inputs)]
    assert found == [("first", "a.jsonl", "jsonl"), ("glob", "b.jsonl", "jsonl")]
    assert "ingest.inputs.1" in caplog.text and "a.jsonl" in caplog.text


def _file_batch(path: str, content: bytes) -> pa.RecordBatch:
    """A binaryFile row, as from_files gets it."""
    return pa.RecordBatch.from_pydict({"path": [path], "content": [content]})


def test_oversize_records_and_documents_become_counted_rejects():
    """A record over ingest.max_record_bytes is one `oversize` reject holding its first bytes, whatever the
    reader (a line of a gzip file is never held whole); a gzip JSON document that inflates past
    max_file_bytes is one; every other record is kept."""
    from instructlake.udfs import records as rec

    small = json.dumps({"text": "a short prompt"}).encode()
    big = json.dumps({"text": "x" * 5000}).encode()
    lines = gzip.compress(b"\n".join([small, big, small]) + b"\n")
    gz = list(rec.from_files(lambda c: rec.gzip_lines(c, max_record_bytes=1000), 1000)([_file_batch("f.jsonl.gz", lines)]))
    rows = pa.Table.from_batches(gz).to_pylist()
    assert [(r["record_index"], r["reason"], len(r["raw"])) for r in rows] == [(1, None, len(small)), (2, "oversize", 1001), (3, None, len(small))]
    assert rows[1]["error"] == "record over ingest.max_record_bytes (1,000 bytes)"
    array = json.dumps([{"text": "ok"}, {"text": "y" * 80_000}]).encode()
    (batch,) = rec.from_files(rec.json_records, 1000)([_file_batch("a.json", array)])
    parsed = parse_batch(_with_source(batch), "first").to_pylist()
    assert [(p["reason"], p["text"]) for p in parsed] == [(None, "ok"), ("oversize", None)]
    assert len(parsed[1]["raw"]) == rec.RAW_CAP and "max_record_bytes" in parsed[1]["detail"]
    doc = gzip.compress(json.dumps([{"text": "z" * 3000}]).encode())
    (whole,) = rec.from_files(lambda c: rec.gzip_json_records(c, max_file_bytes=2000), 1 << 20)([_file_batch("d.json.gz", doc)])
    assert whole.to_pylist() == [{"input_file": "d.json.gz", "record_index": 0, "raw": b"", "reason": "oversize",
                                  "error": "gzip JSON document decompressing to over ingest.max_file_bytes (2,000 bytes)"}]  # fmt: skip


def test_a_batch_closes_before_its_raw_bytes_pass_the_batch_budget(monkeypatch):
    """4,096 records of 1 MiB would pass Arrow's 2 GiB per column; batches close by bytes as well as count."""
    from instructlake.udfs import records as rec

    monkeypatch.setattr(rec, "BATCH_BYTES", 250)
    rows = [(i, b"r" * 100, None, None) for i in range(7)]
    assert [b.num_rows for b in rec.batches("f", iter(rows))] == [2, 2, 2, 1]
    assert sum(b.num_rows for b in rec.batches("f", iter([(0, b"r" * 999, None, None), (1, b"s", None, None)]))) == 2


def _with_source(batch: pa.RecordBatch) -> pa.RecordBatch:
    n = batch.num_rows
    return pa.RecordBatch.from_pydict({"source": ["s"] * n, "layout": ["auto"] * n, **batch.to_pydict()})
