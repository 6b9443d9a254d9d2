"""The quality stage on real Delta tables: rule checks into response_checks, Great Expectations suites into
expectation_results, and export leaving out what failed."""

import json

import pytest

from instructlake.jobs.runs import run_stage
from instructlake.jobs.tables import SCHEMAS
from tests.support.lake import response
from tests.support.quality import CASES, EN_PROMPT, GOOD_EN, GOOD_JA, JA_PROMPT


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

