"""Rule checks as pure functions (real fastText, real PII detectors) on planted English and Japanese answers."""

import pandas as pd
import pytest

from instructlake.udfs.checks import check_batch, repeated_ratio
from tests.support.quality import CASES, EN_PROMPT, GOOD_EN, GOOD_JA, JA_PROMPT


def run_checks(rows):
    df = pd.DataFrame(rows, columns=["text", "prompt_text", "lang", "finish_reason"])
    return check_batch(df)


@pytest.mark.parametrize("check", sorted(CASES))
def test_each_check_fires_alone(check):
    out = run_checks([CASES[check]]).iloc[0]
    assert out[check], check
    others = [c for c in CASES if c != check and out[c] and not (check == "empty" and c == "truncated")]
    assert others == [], f"{check} also tripped {others}"


def test_clean_responses_pass_every_check():
    out = run_checks([(GOOD_EN, EN_PROMPT, "en", "stop"), (GOOD_JA, JA_PROMPT, "ja", "stop")])
    assert not out[list(CASES)].to_numpy().any()
    assert list(out["response_lang"]) == ["en", "ja"]


def test_japanese_checks():
    out = run_checks(
        [
            ("申し訳ありませんが、そのご質問にはお答えできません。", JA_PROMPT, "ja", "stop"),
            ("私はAIアシスタントです。" + GOOD_JA, JA_PROMPT, "ja", "stop"),
            ("運航を開始しました。" * 20, JA_PROMPT, "ja", "stop"),
        ]
    )
    assert list(out["refusal"]) == [True, False, False]
    assert list(out["self_identification"]) == [False, True, False]
    assert list(out["repetition"]) == [False, False, True]


def test_pii_in_prompt_is_not_a_leak():
    prompt = "Reply to bob.smith@desert-tours.co.uk about the camel tour."
    out = run_checks([("I wrote to bob.smith@desert-tours.co.uk as you asked: " + GOOD_EN, prompt, "en", "stop")])
    assert not out["pii_leak"].iloc[0]


def test_code_samples_and_documentation_addresses_are_not_a_leak():
    code = "```python\nSENDER = 'ops@desert-tours.co.uk'\n```\n"
    out = run_checks(
        [
            (GOOD_EN + "\n\n" + code + "Set SENDER to your own address.", EN_PROMPT, "en", "stop"),
            (GOOD_EN + " Write to someone@example.com or admin@camels.test.", EN_PROMPT, "en", "stop"),
            (GOOD_EN + " Write to ops@desert-tours.co.uk.", EN_PROMPT, "en", "stop"),
        ]
    )
    assert list(out["pii_leak"]) == [False, False, True]


def test_wrong_language_reads_prose_only_and_respects_a_requested_language():
    code = "```python\n" + "def hump(camel):\n    return camel.fat_reserve_kg * 9000  # kcal\n" * 5 + "```"
    out = run_checks(
        [
            (code, JA_PROMPT, "ja", "stop"),  # code only: no prose to judge
            ("- A: 30kW -> 0kW\n- B: 100kW -> 130kW\n" * 4, JA_PROMPT, "ja", "stop"),  # data lines only
            (GOOD_EN, "次の文を英語に翻訳してください: " + JA_PROMPT, "ja", "stop"),
            (GOOD_JA, "Translate into Japanese: " + EN_PROMPT, "en", "stop"),
            (GOOD_EN + "\n\n" + code, JA_PROMPT, "ja", "stop"),  # English prose beside the code: wrong
        ]
    )
    assert list(out["wrong_language"]) == [False, False, False, False, True]


def test_a_run_of_one_unit_is_repetition_but_markup_is_not():
    table = "| step | kcal |\n|" + "-" * 150 + "|------|\n| 1 | 9000 |\n"
    out = run_checks(
        [
            (GOOD_JA + " " + "#" * 120, JA_PROMPT, "ja", "stop"),  # rinna 3.6B's loop
            ("#" * 300, JA_PROMPT, "ja", "stop"),
            (GOOD_EN + "\n\n" + table, EN_PROMPT, "en", "stop"),
            (GOOD_EN + "\n\n```\n" + "#" * 200 + "\n```", EN_PROMPT, "en", "stop"),
        ]
    )
    assert list(out["repetition"]) == [True, True, False, False]
    assert out["repeated_ratio"].iloc[1] == 0.0  # no word characters: only the run can see it


def test_repeated_ratio_bounds():
    assert repeated_ratio("a b c d e f g h i j k l") == 0.0
    assert repeated_ratio("spam " * 50) > 0.9

