"""Raw records -> human prompt rows, or a reject row saying why. Pure: bytes in, rows out.

Layouts (public record formats):
- lmsys: `conversation_id, model, conversation[{role, content}], turn, language, openai_moderation[], redacted`
- wildchat: `conversation_hash, model, conversation[{role, content, language, toxic, redacted}], language,
  openai_moderation[], toxic, redacted`
- plain: one prompt per record in `text` | `prompt` | `instruction` (+ `input`), optional `id`, `lang`.
Every record yields one row per extracted user turn, or exactly one reject row, so
rows in = rows kept + rows rejected holds per record: whatever fails while parsing one record rejects that
record only.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from itertools import accumulate
from typing import Any

import pyarrow as pa

from instructlake.udfs.records import RAW_CAP
from instructlake.udfs.text import normalize

# Every output batch is built against this schema, never inferred: a batch whose rows all lack a field
# (no `model` in plain files, rejects only) must still have a string column, not pandas' all-NaN floats.
OUTPUT_SCHEMA = pa.schema(
    [
        ("source", pa.string()), ("source_id", pa.string()), ("turn", pa.int32()), ("text", pa.string()),
        ("source_lang", pa.string()), ("moderation_flagged", pa.bool_()), ("redacted", pa.bool_()),
        ("source_model", pa.string()), ("layout", pa.string()), ("input_file", pa.string()),
        ("record_index", pa.int64()), ("reason", pa.string()), ("detail", pa.string()), ("raw", pa.string()),
    ]
)  # fmt: skip
# Chat records nest four or five levels; anything near Python's recursion limit is an attack or a bug,
# and is rejected before json.loads would recurse into it.
MAX_DEPTH = 100
USER_ROLES = {"user", "human"}
_PLAIN_FIELDS = ("text", "prompt", "instruction")
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKETS = bytes(set(range(256)) - set(b"[]{}"))
_DEPTH_STEP = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}


class Malformed(Exception):
    """A record we cannot take; `reason` becomes the reject reason (malformed:<reason>)."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(reason)
        self.reason, self.detail = reason, detail
        self.source_id: str | None = None  # set once the record parsed far enough to have one


def json_depth(raw: bytes) -> int:
    """Deepest bracket nesting outside JSON strings; cheap for the usual record, which has few brackets."""
    if raw.count(b"[") + raw.count(b"{") <= MAX_DEPTH:
        return 0
    skeleton = _JSON_STRING.sub(b"", raw).translate(None, _NOT_BRACKETS)
    return max(accumulate(_DEPTH_STEP[c] for c in skeleton), default=0)


def _str_or_none(value: Any) -> str | None:
    """An optional tag (language, model) of another type than a string says nothing; it is dropped."""
    return value if isinstance(value, str) and value else None


def detect_layout(record: dict[str, Any]) -> str:
    if "conversation_hash" in record:
        return "wildchat"
    if "conversation" in record or "conversations" in record or "conversation_id" in record:
        return "lmsys"
    return "plain"


def _flagged(entry: Any) -> bool:
    if isinstance(entry, dict):
        return bool(entry.get("flagged", False))
    return bool(entry)


def _user_turns(record: dict[str, Any], layout: str, turns: str) -> list[dict[str, Any]]:
    conv = record.get("conversation", record.get("conversations"))
    if conv is None:
        raise Malformed("missing_conversation", f"{layout} record without a conversation")
    if not isinstance(conv, list):
        raise Malformed("missing_conversation", f"conversation is {type(conv).__name__}, not a list")
    moderation = record.get("openai_moderation")
    moderation = moderation if isinstance(moderation, list) else []
    out = []
    for index, msg in enumerate(conv):
        if not isinstance(msg, dict):
            raise Malformed("bad_message", f"message {index} is {type(msg).__name__}")
        role = msg.get("role", msg.get("from"))
        if str(role).lower() not in USER_ROLES:
            continue
        content = msg.get("content", msg.get("value"))
        if not isinstance(content, str):
            raise Malformed("non_string_content", f"message {index} content is {type(content).__name__}")
        flagged = (index < len(moderation) and _flagged(moderation[index])) or bool(msg.get("toxic", False))
        out.append(
            {
                "text": content,
                "source_lang": _str_or_none(msg.get("language")) or _str_or_none(record.get("language")),
                "moderation_flagged": flagged or (not moderation and bool(record.get("toxic", False))),
                "redacted": bool(msg.get("redacted", False)) or bool(record.get("redacted", False)),
            }
        )
        if turns == "first":
            break
    if not out:
        raise Malformed("no_user_turn", "conversation has no user message")
    return out


def _plain_turn(record: dict[str, Any]) -> list[dict[str, Any]]:
    field = next((f for f in _PLAIN_FIELDS if f in record), None)
    if field is None:
        raise Malformed("missing_text", f"none of {list(_PLAIN_FIELDS)} present")
    text = record[field]
    if not isinstance(text, str):
        raise Malformed("non_string_content", f"{field} is {type(text).__name__}")
    extra = record.get("input") if field == "instruction" else None
    if isinstance(extra, str) and extra.strip():
        text = f"{text}\n\n{extra}"
    return [
        {
            "text": text,
            "source_lang": _str_or_none(record.get("lang")) or _str_or_none(record.get("language")),
            "moderation_flagged": bool(record.get("moderation_flagged", record.get("flagged", False))),
            "redacted": bool(record.get("redacted", False)),
        }
    ]


def _source_id(record: dict[str, Any], layout: str) -> str | None:
    for key in ("conversation_id", "conversation_hash", "id", "source_id") if layout != "plain" else ("id", "source_id"):
        value = record.get(key)
        if value is not None and value != "":
            return str(value)
    return None


def parse_record(raw: bytes, layout: str = "auto", turns: str = "first") -> tuple[str, str | None, list[dict]]:
    """(layout, source_id, user turns) for one raw record; raises Malformed."""
    try:
        line = raw.decode("utf-8-sig")  # a BOM opens many exported files; json.loads refuses it
    except UnicodeDecodeError as e:
        raise Malformed("invalid_utf8", str(e)) from None
    if (depth := json_depth(raw)) > MAX_DEPTH:
        raise Malformed("too_deep", f"nested {depth} levels deep; the limit is {MAX_DEPTH}")
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise Malformed("bad_json", str(e)) from None
    if not isinstance(record, dict):
        raise Malformed("not_an_object", f"record is a JSON {type(record).__name__}")
    layout = detect_layout(record) if layout == "auto" else layout
    source_id = _source_id(record, layout)
    try:
        rows = _plain_turn(record) if layout == "plain" else _user_turns(record, layout, turns)
    except Malformed as e:
        e.source_id = source_id
        raise
    for row in rows:
        row["source_model"] = _str_or_none(record.get("model"))
        # JSON may escape lone surrogates ("\ud800"), which no UTF-8 column can hold.
        for field in ("text", "source_lang", "source_model"):
            if row[field] is not None and not _encodable(row[field]):
                raise Malformed("invalid_unicode", f"{field} holds a lone surrogate")
    if source_id is not None and not _encodable(source_id):
        raise Malformed("invalid_unicode", "the record's id holds a lone surrogate")
    return layout, source_id, rows


def _encodable(value: str) -> bool:
    try:
        value.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def source_from_path(path: str) -> str:
    """Default source name of a file: its base name without compression and format extensions."""
    name = path.rstrip("/").rsplit("/", 1)[-1]
    for ext in (".gz", ".bz2", ".zst", ".jsonl", ".ndjson", ".json", ".parquet"):
        if name.endswith(ext):
            name = name[: -len(ext)]
    return name


def parse_batch(batch: pa.RecordBatch, turns: str) -> pa.RecordBatch:
    """Records (source, layout, input_file, record_index, raw bytes, error, reason) -> OUTPUT_SCHEMA; a null
    source means "name it after the file"; a set error makes the record a reject unparsed: of its reason
    (udfs.records: oversize), else malformed:unreadable_file (the unreadable rest of a file)."""
    out: list[dict[str, Any]] = []
    columns = batch.to_pydict()
    for source, layout, input_file, index, raw, error, reason in zip(
        columns["source"], columns["layout"], columns["input_file"], columns["record_index"], columns["raw"],
        columns["error"], columns["reason"],
    ):  # fmt: skip
        source = source or source_from_path(input_file)
        if error is not None:
            out.append(_reject(raw, input_file, index, source, layout, f"{input_file}#{index}", reason or "malformed:unreadable_file", error))
        else:
            out.extend(_rows(raw, input_file, index, source, layout, turns))
    return pa.RecordBatch.from_pylist(out, schema=OUTPUT_SCHEMA)


def _reject(raw: bytes, input_file: str, index: int, source: str, layout: str, source_id: str, reason: str, detail: str) -> dict:
    text, cut = _raw_text(raw)
    return {
        "source": source, "input_file": input_file, "record_index": index, "source_id": source_id, "turn": 0,
        "layout": layout, "reason": reason,
        "detail": detail[:500].encode("utf-8", "backslashreplace").decode("utf-8") + cut,
        "raw": text,
    }  # fmt: skip


def _raw_text(raw: bytes) -> tuple[str, str]:
    """(the raw record as text, capped at RAW_CAP bytes on a character boundary; the note for `detail`
    when it was cut, else ""): prompts_rejected.raw shows what is wrong, never a whole shard that happens
    to be one line."""
    raw = raw or b""
    if len(raw) <= RAW_CAP:
        return raw.decode("utf-8", errors="backslashreplace"), ""
    end = RAW_CAP
    while end > RAW_CAP - 3 and raw[end] & 0xC0 == 0x80:  # inside a UTF-8 sequence: cut before it
        end -= 1
    return raw[:end].decode("utf-8", errors="backslashreplace"), f" (raw: the first {end} of {len(raw)} bytes)"


def _rows(raw: bytes, input_file: str, index: int, source: str, layout: str, turns: str) -> Iterable[dict]:
    fallback_id = f"{input_file}#{index}"
    try:
        found_layout, source_id, turn_rows = parse_record(raw, layout, turns)
    except Malformed as e:
        yield _reject(raw, input_file, index, source, layout, e.source_id or fallback_id, f"malformed:{e.reason}", e.detail)
        return
    # Any other failure (RecursionError past the depth check, a type no branch foresaw) is this record's
    # alone: it becomes a reject, and the batch goes on.
    except Exception as e:
        yield _reject(raw, input_file, index, source, layout, fallback_id, "malformed:parse_error", f"{type(e).__name__}: {e}")
        return
    base = {"source": source, "input_file": input_file, "record_index": index}
    for turn, row in enumerate(turn_rows):
        text = normalize(row.pop("text"))
        raw_text, cut = (None, "") if text else _raw_text(raw)
        yield {
            **base, **row, "source_id": source_id or fallback_id, "turn": turn, "layout": found_layout, "text": text,
            "reason": None if text else "empty", "detail": cut.strip(" ()") or None, "raw": raw_text,
        }  # fmt: skip
