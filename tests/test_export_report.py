"""Export and report over real Delta tables. The responses are written straight into the table (the
generate stage's own tests cover producing them); texts are real prompts from ../shared/data."""

import datetime as dt
import gzip
import json

import pytest

from instructlake.jobs.runs import run_stage
from instructlake.jobs.tables import SCHEMAS
from instructlake.udfs.text import prompt_id

from .conftest import response

@pytest.fixture
def ctx_with_responses(ctx_factory, tmp_path, shared_data):
    def make(*sets):
        ctx = ctx_factory(f"export.path={tmp_path / 'exports'}", f"report.path={tmp_path / 'reports'}", *sets)
        en = [json.loads(l)["text"] for l in open(shared_data / "prompts" / "en_dolly_open_qa.jsonl")][:6]
        ja = [json.loads(l)["text"] for l in open(shared_data / "prompts" / "ja_dolly_15k_ja_v0_first5000.jsonl")][:4]
        rows = [response(p, i, "en") for p in en for i in range(2)] + [response(p, i, "ja") for p in ja for i in range(2)]
        rows[0]["finish_reason"] = "length"  # en prompt 0, sample 0: truncated
        rows[3]["text"] = "   "  # en prompt 1, sample 1: empty
        df = ctx.spark.createDataFrame(rows, SCHEMAS["responses"])
        ctx.store.merge(df, "responses", run_id="r0", stage="generate")
        return ctx, en, ja

    return make


def read_export(root):
    out = {}
    for f in sorted(root.glob("lang=*/part-*.json.gz")):
        lang = f.parent.name.split("=", 1)[1]
        with gzip.open(f, "rt", encoding="utf-8") as fh:
            out.setdefault(lang, []).extend(json.loads(line) for line in fh)
    return out


def test_export_all_samples_as_chat_records(ctx_with_responses, tmp_path):
    ctx, en, ja = ctx_with_responses()
    result = run_stage(ctx, "export")
    assert (result.rows_in, result.rows_out, result.rows_rejected) == (20, 18, 2)
    assert result.stats["left_out"] == {"truncated": 1, "empty_response": 1}
    data = read_export(tmp_path / "exports" / "jsonl")
    assert {k: len(v) for k, v in data.items()} == {"en": 10, "ja": 8}
    rec = next(r for r in data["ja"] if r["prompt_id"] == prompt_id(ja[2]))
    assert [m["role"] for m in rec["messages"]] == ["system", "user", "assistant"]
    assert rec["messages"][1]["content"] == ja[2] and rec["messages"][2]["content"].startswith("answer")
    # Re-running reproduces the same files: nothing is duplicated.
    run_stage(ctx, "export")
    assert read_export(tmp_path / "exports" / "jsonl") == data


def test_export_first_ok_parquet_without_system(ctx_with_responses, tmp_path):
    ctx, en, _ = ctx_with_responses("export.select=first_ok", "export.format=parquet", "export.include_system_prompt=false")
    result = run_stage(ctx, "export")
    assert result.rows_out == 10  # one per prompt
    table = ctx.spark.read.parquet(str(tmp_path / "exports" / "parquet"))
    chosen = {r.prompt_id: r for r in table.collect()}
    # Prompt 0's sample 0 was truncated, so its sample 1 is the one exported.
    assert chosen[prompt_id(en[0])].messages[1].content.startswith("answer 1")
    assert all(len(r.messages) == 2 for r in chosen.values())


def test_report_describes_the_lake(ctx_with_responses, tmp_path):
    ctx, en, _ = ctx_with_responses()
    now = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    errors = [  # a request a later run answered (en[0] has responses), and one still failing
        dict(prompt_id=prompt_id(en[0]), model="m", gen_config_id="g", task="respond", error_class="Timeout", message="t",
             max_model_len=2048, attempt=1, run_id="r0", created_at=now),
        dict(prompt_id="p-unanswered", model="m", gen_config_id="g", task="respond", error_class="Timeout", message="t",
             max_model_len=2048, attempt=2, run_id="r0", created_at=now),
    ]  # fmt: skip
    ctx.store.append(ctx.spark.createDataFrame(errors, SCHEMAS["generation_errors"]), "generation_errors", run_id="r0", stage="t")
    result = run_stage(ctx, "report")
    page = (tmp_path / "reports" / "index.html").read_text()
    assert result.stats["tables"]["responses"] == 20
    assert "Responses per model, task and language" in page and "Finish reasons" in page
    assert page.count("<img") >= 2  # finish reasons, completion tokens
    assert "<b>to</b>" not in page and "&lt;b&gt;to&lt;/b&gt;" in page  # texts are escaped
    assert "<tr><th>error_class</th><th>failing</th><th>resolved_by_retry</th></tr><tr><td>Timeout</td><td>1</td><td>1</td></tr>" in page
