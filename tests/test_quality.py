"""Rule checks (real fastText, real PII detectors) and Great Expectations suites over real Delta tables."""

import json

import pandas as pd
import pytest

from instructlake.jobs.runs import run_stage
from instructlake.jobs.tables import SCHEMAS
from instructlake.udfs.checks import check_batch, repeated_ratio

from .conftest import response

EN_PROMPT = "Why can camels survive for long without water?"
JA_PROMPT = "ヴァージン・オーストラリアはいつから運航を開始したのですか？"
GOOD_EN = "Camels store fat in their humps and their kidneys conserve water, so they can go a long time without drinking."
GOOD_JA = "ヴァージン・オーストラリアは2000年8月31日にヴァージン・ブルーとして運航を開始しました。当初は2機の航空機で一つの路線を運航していました。"

CASES = {  # check -> (firing response, prompt, lang, finish_reason)
    "empty": (" \n ", EN_PROMPT, "en", "stop"),
    "truncated": (GOOD_EN, EN_PROMPT, "en", "length"),
    "repetition": ("The camel walks. " * 30, EN_PROMPT, "en", "stop"),
    "wrong_language": (GOOD_EN, JA_PROMPT, "ja", "stop"),
    "refusal": ("I'm sorry, but I can't help with that request.", EN_PROMPT, "en", "stop"),
    "self_identification": ("As an AI language model, I think camels are great animals for deserts.", EN_PROMPT, "en", "stop"),
    "pii_leak": (GOOD_EN + " Write to camel.facts@desert-tours.co.uk for more.", EN_PROMPT, "en", "stop"),
}


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


@pytest.fixture
def quality_ctx(ctx_factory, tmp_path):
    def make(*sets):
        ctx = ctx_factory(f"export.path={tmp_path / 'exports'}", *sets)
        rows = [response(EN_PROMPT, 0, "en", text=GOOD_EN), response(JA_PROMPT, 0, "ja", text=GOOD_JA)]
        rows += [response(EN_PROMPT, 1, "en", text=CASES["refusal"][0]), response(JA_PROMPT, 1, "ja", text=GOOD_EN)]
        ctx.store.merge(ctx.spark.createDataFrame(rows, SCHEMAS["responses"]), "responses", run_id="r0", stage="generate")
        return ctx

    return make


def test_quality_stage_writes_checks_and_expectations_then_export_filters(quality_ctx):
    failing = "quality.expectations.responses=[{type: expect_column_values_to_be_between, kwargs: {column: completion_tokens, max_value: 5}}]"
    ctx = quality_ctx(failing)
    result = run_stage(ctx, "quality")
    assert (result.rows_in, result.rows_out, result.rows_rejected) == (4, 2, 2)
    assert result.stats["checks_failed"]["refusal"] == 1 and result.stats["checks_failed"]["wrong_language"] == 1
    checks = {r.response_id: r for r in ctx.store.read("response_checks").collect()}
    assert sorted(r.passed for r in checks.values()) == [False, False, True, True]

    ge = {(r.table_name, r.expectation.split("(")[0]): r for r in ctx.store.read("expectation_results").collect()}
    assert ge[("responses", "expect_column_values_to_be_between")].success is False  # sample 1 has 6 tokens
    assert json.loads(ge[("responses", "expect_column_values_to_be_between")].details)["unexpected_count"] == 2
    assert ge[("response_checks", "expect_column_values_to_be_unique")].success is True
    assert ge[("runs", "expect_column_values_to_be_in_set")].success is True
    assert result.stats["expectations"]["failed"] == [
        'responses: expect_column_values_to_be_between({"column": "completion_tokens", "max_value": 5})'
    ]

    version = ctx.store.version("response_checks")
    run_stage(ctx, "quality")
    assert ctx.store.version("response_checks") == version  # re-run: nothing new

    exported = run_stage(ctx, "export")
    assert exported.rows_out == 2 and exported.stats["left_out"] == {"failed_checks": 2}


def test_fail_on_expectation_fails_the_stage_after_storing(quality_ctx):
    ctx = quality_ctx(
        "quality.fail_on_expectation=true",
        "quality.expectations={responses: [{type: expect_table_row_count_to_equal, kwargs: {value: 99}}]}",
    )
    with pytest.raises(RuntimeError, match="1 expectation"):
        run_stage(ctx, "quality")
    assert ctx.store.read("expectation_results").filter("NOT success").count() == 1
    assert ctx.store.read("runs").filter("stage = 'quality'").first().status == "failed"


def test_unknown_expectation_is_a_clear_error(quality_ctx):
    ctx = quality_ctx("quality.expectations={responses: [{type: expect_the_unexpected}]}")
    with pytest.raises(ValueError, match="unknown Great Expectations expectation 'expect_the_unexpected'"):
        run_stage(ctx, "quality")
