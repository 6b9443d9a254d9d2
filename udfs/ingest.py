"""Raw records -> human prompt rows, or a reject row saying why. Pure: bytes in, rows out.

Layouts (public record formats):
- lmsys: `conversation_id, model, conversation[{role, content}], turn, language, openai_moderation[], redacted`
- wildchat: `conversation_hash, model, conversation[{role, content, language, toxic, redacted}], language,
  openai_moderation[], toxic, redacted`
- plain: one prompt per record in `text` | `prompt` | `instruction` (+ `input`), optional `id`, `lang`.
Every record yields one row per extracted user turn, or exactly one reject row, so
rows in = rows kept + rows rejected holds per record.
"""

from __future__ import annotations

import json
from typing import Any, Iterable

import pandas as pd

from instructlake.udfs.text import normalize

OUTPUT_COLUMNS = [
    "source", "source_id", "turn", "text", "source_lang", "moderation_flagged", "redacted", "source_model",
    "layout", "input_file", "record_index", "reason", "detail", "raw",
]  # fmt: skip
OUTPUT_DDL = (
    "source string, source_id string, turn int, text string, source_lang string, moderation_flagged boolean, "
    "redacted boolean, source_model string, layout string, input_file string, record_index bigint, "
    "reason string, detail string, raw string"
)
USER_ROLES = {"user", "human"}
_PLAIN_FIELDS = ("text", "prompt", "instruction")


class Malformed(Exception):
    """A record we cannot take; `reason` becomes the reject reason (malformed:<reason>)."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(reason)
        self.reason, self.detail = reason, detail
        self.source_id: str | None = None  # set once the record parsed far enough to have one


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
                "source_lang": msg.get("language") or record.get("language"),
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
            "source_lang": record.get("lang") or record.get("language"),
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
        line = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise Malformed("invalid_utf8", str(e)) from None
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
        row["source_model"] = record.get("model")
    return layout, source_id, rows


def source_from_path(path: str) -> str:
    """Default source name of a file: its base name without compression and format extensions."""
    name = path.rstrip("/").rsplit("/", 1)[-1]
    for ext in (".gz", ".bz2", ".zst", ".jsonl", ".ndjson", ".json", ".parquet"):
        if name.endswith(ext):
            name = name[: -len(ext)]
    return name


def parse_batch(batch: pd.DataFrame, turns: str) -> pd.DataFrame:
    """Rows (source, layout, input_file, record_index, raw bytes) -> OUTPUT_COLUMNS; a null source means
    "name it after the file"."""
    out: list[dict[str, Any]] = []
    for source, layout, input_file, index, raw in zip(
        batch["source"], batch["layout"], batch["input_file"], batch["record_index"], batch["raw"]
    ):
        out.extend(_rows(bytes(raw), input_file, int(index), source or source_from_path(input_file), layout, turns))
    return pd.DataFrame(out, columns=OUTPUT_COLUMNS).astype({"turn": "int32", "record_index": "int64"})


def _rows(raw: bytes, input_file: str, index: int, source: str, layout: str, turns: str) -> Iterable[dict]:
    fallback_id = f"{input_file}#{index}"
    base = {"source": source, "input_file": input_file, "record_index": index}
    try:
        found_layout, source_id, turn_rows = parse_record(raw, layout, turns)
    except Malformed as e:
        yield {
            **base, "source_id": e.source_id or fallback_id, "turn": 0, "layout": layout, "reason": f"malformed:{e.reason}",
            "detail": e.detail[:500], "raw": raw.decode("utf-8", errors="backslashreplace"),
        }  # fmt: skip
        return
    for turn, row in enumerate(turn_rows):
        text = normalize(row.pop("text"))
        yield {
            **base, **row, "source_id": source_id or fallback_id, "turn": turn, "layout": found_layout, "text": text,
            "reason": None if text else "empty", "detail": None,
            "raw": None if text else raw.decode("utf-8", errors="backslashreplace"),
        }  # fmt: skip
