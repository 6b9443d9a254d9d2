"""Ingest's record parser as a pure function: each malformed shape gets its reason; layouts, BOMs and tags."""

import pytest

from instructlake.udfs.ingest import Malformed, parse_record, source_from_path
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

