"""Export and report over real Delta tables. The responses are written straight into the table (the
generate stage's own tests cover producing them); texts are real prompts from ../shared/data."""

import datetime as dt
import gzip
import json

import pytest

from instructlake.jobs.runs import run_stage
from instructlake.jobs.tables import SCHEMAS
from instructlake.udfs.text import prompt_id
from tests.support.lake import response


@pytest.fixture
def ctx_with_responses(ctx_factory, tmp_path, shared_data):
    def make(*sets):
        ctx = ctx_factory(f"export.path={tmp_path / 'exports'}", f"report.path={tmp_path / 'reports'}", *sets)
        en = [json.loads(line)["text"] for line in open(shared_data / "prompts" / "en_dolly_open_qa.jsonl")][:6]
        ja = [json.loads(line)["text"] for line in open(shared_data / "prompts" / "ja_dolly_15k_ja_v0_first5000.jsonl")][:4]
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
        dict(input_id=prompt_id(en[0]), model="m", gen_config_id="g", task="respond", error_class="Timeout", message="t",
             max_model_len=2048, attempt=1, run_id="r0", created_at=now),
        dict(input_id="p-unanswered", model="m", gen_config_id="g", task="respond", error_class="Timeout", message="t",
             max_model_len=2048, attempt=2, run_id="r0", created_at=now),
    ]  # fmt: skip
    ctx.store.append(ctx.spark.createDataFrame(errors, SCHEMAS["generation_errors"]), "generation_errors", run_id="r0", stage="t")
    rejected = [
        dict(source="s", source_id=str(i), turn=0, stage="curate", reason=reason, run_id="r0", created_at=now)
        for i, reason in enumerate(["near_duplicate_of:c1", "near_duplicate_of:c2", "duplicate_of:p1", "lang_not_selected:fr"])
    ]
    ctx.store.merge(ctx.spark.createDataFrame(rejected, SCHEMAS["prompts_rejected"]), "prompts_rejected", run_id="r0", stage="t")
    # Run records as the generate and export stages write them: two GPU-hours of generation, 18 exported.
    gen = {"model": "m", "devices": "gpu", "requests": 10, "prompt_tokens": 100, "completion_tokens": 110, "engine_s": 3600.0, "device_s": 7200.0}
    runs = [
        dict(run_id="g1", stage="generate", status="succeeded", stats=json.dumps(gen)),
        dict(run_id="e1", stage="export", status="succeeded", stats=json.dumps({"per_model_lang": {"m": {"en": 10, "ja": 8}}})),
    ]
    runs = [{"config": "{}", "rows_in": 0, "rows_out": 0, "rows_rejected": 0, "started_at": now, "finished_at": now, "error": None,
             "created_at": now, **r} for r in runs]  # fmt: skip
    ctx.store.write_rows(runs, "runs", run_id="r0", stage="t")
    result = run_stage(ctx, "report")
    page = (tmp_path / "reports" / "index.html").read_text()
    assert result.stats["tables"]["responses"] == 20
    assert "Responses per model, task and language" in page and "Finish reasons" in page
    assert page.count("<img") >= 2  # finish reasons, completion tokens
    assert "<b>to</b>" not in page and "&lt;b&gt;to&lt;/b&gt;" in page  # texts are escaped
    # One row per reason class: clusters and kept copies are not listed one by one.
    assert "<tr><td>curate</td><td>near_duplicate_of:*</td><td>2</td></tr>" in page
    assert "<tr><td>curate</td><td>duplicate_of:*</td><td>1</td></tr>" in page
    assert "<td>lang_not_selected:fr</td>" in page and "near_duplicate_of:c1" not in page
    # Cost: en has 66 of the model's 110 completion tokens (6 prompts x 2 samples of 5 and 6 tokens), ja 44.
    assert "<tr><td>generate</td><td>m</td><td>gpu</td><td>10</td><td>100</td><td>110</td><td>1.0</td><td>2.0</td><td>0.0</td></tr>" in page
    assert "<tr><td>m</td><td>en</td><td>12</td><td>12</td><td>12</td><td>10</td><td>120.0</td></tr>" in page
    assert "<tr><td>m</td><td>ja</td><td>8</td><td>8</td><td>8</td><td>8</td><td>100.0</td></tr>" in page
    assert "All LLM stages: 2.0000 device-hours for 18 exported examples = 111.1111 device-hours per 1,000." in page
    assert "<tr><th>error_class</th><th>failing</th><th>resolved_by_retry</th></tr><tr><td>Timeout</td><td>1</td><td>1</td></tr>" in page


def test_export_writes_a_dataset_card_that_datasets_loads(ctx_factory, tmp_path, shared_data):
    """Real prompts through ingest and curate, answers written as generate writes them, the checks stage,
    judge rows; then the card's figures against the tables, and the export loaded by the real `datasets`."""
    datasets = pytest.importorskip("datasets")
    from huggingface_hub import DatasetCard

    from instructlake.udfs.text import content_hash

    src = tmp_path / "in"
    src.mkdir()
    en = [json.loads(line) for line in open(shared_data / "prompts" / "en_dolly_open_qa.jsonl")][:8]
    ja = [json.loads(line) for line in open(shared_data / "prompts" / "ja_dolly_15k_ja_v0_first5000.jsonl")][:5]
    (src / "en_dolly_open_qa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [*en, {**en[0], "id": "copy"}]))
    (src / "ja_dolly_15k_ja_v0_first5000.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ja))
    (tmp_path / "mystery.jsonl").write_text(json.dumps({"id": "m1", "text": "What is the tallest mountain in Africa and how tall is it?"}) + "\n")
    ctx = ctx_factory(
        f"ingest.inputs=[{{path: '{src}/*.jsonl'}}, {{path: '{tmp_path}/mystery.jsonl', source: 'mystery | <b>src'}}]", f"export.path={tmp_path / 'exports'}", "curate.near_dedup.enabled=false",
        "export.card.pretty_name=Camel SFT",
    )  # fmt: skip
    for stage in ("ingest", "curate"):
        run_stage(ctx, stage)
    prompts = ctx.store.read("prompts").select("prompt_id", "text", "lang").collect()
    rows = [response(p["text"], i, p["lang"]) for p in prompts for i in range(2)]
    for r in rows:
        r["text"] = ("Kilimanjaro is 5,895 metres tall and it is the highest mountain in Africa. " if r["lang"] == "en"
                     else "キリマンジャロはアフリカで最も高い山で、標高は五千八百九十五メートルです。") * (1 + r["sample_index"])  # fmt: skip
    rows[0]["text"] = "I'm sorry, but I can't help with that request."  # fails the refusal check
    ctx.store.merge(ctx.spark.createDataFrame(rows, SCHEMAS["responses"]), "responses", run_id="r0", stage="generate")
    run_stage(ctx, "quality")
    now = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    judged = [dict(response_id=r["response_id"], prompt_id=r["prompt_id"], judge_model="j", score=float(3 + i % 7), rationale="[[n]]",
                   finish_reason="stop", prompt_tokens=1, completion_tokens=1, gen_config_id="g", run_id="r0", created_at=now)
              for i, r in enumerate(rows)]  # fmt: skip
    ctx.store.merge(ctx.spark.createDataFrame(judged, SCHEMAS["judgements"]), "judgements", run_id="r0", stage="judge")
    result = run_stage(ctx, "export")

    root = tmp_path / "exports"
    card = DatasetCard.load(root / "README.md")
    per_lang = result.stats["per_lang"]
    assert sum(per_lang.values()) == len(rows) - 1  # the refusal failed its checks
    meta = card.data.to_dict()
    assert meta["pretty_name"] == "Camel SFT"
    assert meta["language"] == sorted(per_lang) == ["en", "ja"]
    assert meta["license"] == "other"  # the mystery source declares none
    assert meta["size_categories"] == ["n<1K"]
    assert [c["config_name"] for c in meta["configs"]] == ["en", "ja"]
    text = card.text
    assert "mystery \\| &lt;b&gt;src" in text and "<b>" not in text  # source names are escaped
    assert "| en_dolly_open_qa | cc-by-sa-3.0 | 9 | 8 |" in text  # 9 ingested rows, 8 distinct prompts kept
    assert "- near dedup: off" in text
    assert "No benchmark was checked" in text
    assert "| curate | duplicate_of | 1 |" in text
    assert "- exact duplicates removed (normalized text): 1" in text
    assert "| refusal | 1 |" in text and f"{len(rows)} generated responses checked, {len(rows) - 1} passed" in text
    n_seven = sum(1 for i, r in enumerate(rows) if i and 3 + i % 7 == 7)  # judged 7, exported (all but rows[0])
    assert f"| j | 7 | {n_seven} |" in text
    assert "| failed_checks | 1 |" in text
    assert f"run id: `{ctx.run_id}`" in text
    digest = content_hash(ctx.store.read("runs").where(f"run_id = '{ctx.run_id}' AND stage = 'export'").first()["config"])
    assert f"config digest: `{digest}`" in text

    # The Hub's loaders read the export as it lies: by the card's configs, and by data_files.
    for lang, n in per_lang.items():
        by_config = datasets.load_dataset(str(root), lang, split="train")
        assert by_config.num_rows == n
        assert by_config[0]["messages"][-1]["role"] == "assistant"
        by_files = datasets.load_dataset("json", data_files=str(root / "jsonl" / f"lang={lang}" / "*.json.gz"), split="train")
        assert sorted(by_files["response_id"]) == sorted(by_config["response_id"])

