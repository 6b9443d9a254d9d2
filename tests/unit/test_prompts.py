"""Prompt builders and the judge score parser."""

from __future__ import annotations

import pytest

from instructlake.udfs.prompts import (
    judge_messages,
    parse_judge_score,
    respond_messages,
    translate_messages,
)


def test_respond_messages() -> None:
    assert respond_messages("hi") == [{"role": "user", "content": "hi"}]
    assert respond_messages("hi", system="be brief") == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi"},
    ]


def test_translate_messages_fill_the_template_and_keep_braces_in_text() -> None:
    [msg] = translate_messages("Print {x} in Python.")
    assert msg["role"] == "user"
    assert msg["content"].startswith("Translate the following instruction into Japanese.")
    assert msg["content"].endswith("English instruction:\nPrint {x} in Python.")
    [custom] = translate_messages("Bonjour", "German", "French", template="{source_lang}->{target_lang}: {text}")
    assert custom["content"] == "French->German: Bonjour"
    with pytest.raises(ValueError, match="text"):
        translate_messages("x", template="Translate into {target_lang}")


def test_judge_messages_follow_mt_bench_single_grading() -> None:
    system, user = judge_messages("What is 2+2?", "4")
    assert system == {"role": "system", "content": "You are a helpful assistant."}
    assert "scale of 0 to 10" in user["content"]
    assert user["content"].endswith(
        "[Question]\nWhat is 2+2?\n\n[The Start of Assistant's Answer]\n4\n[The End of Assistant's Answer]"
    )


@pytest.mark.parametrize(
    ("judgement", "score"),
    [
        ("Accurate and concise. Rating: [[9]]", 9.0),
        ("Rating: [[ 7.5 ]]", 7.5),
        ("Rating: [[0]]", 0.0),
        ('The format is "Rating: [[5]]". My verdict: [[3]]', 3.0),
        ("Rating: 8/10", None),
        ("Rating: [[11]]", None),
        ("Rating: [[-1]]", None),
        ("", None),
    ],
)
def test_parse_judge_score(judgement: str, score: float | None) -> None:
    assert parse_judge_score(judgement) == score

