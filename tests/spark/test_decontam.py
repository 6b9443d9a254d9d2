"""Decontamination as a curate step on real Delta tables: the 500 arena-hard prompts stand in for an
evaluation set; planted copies are dropped naming their item (or flagged), other real prompts stay."""

import datetime as dt
import json

import pytest
from pyspark.sql import functions as F

from instructlake.jobs.runs import run_stage
from instructlake.jobs.tables import SCHEMAS
from instructlake.udfs.text import prompt_id


@pytest.fixture
def corpus(tmp_path, real):
    """A real corpus (Dolly open QA) with arena-hard items planted exact, edited and embedded, and a
    Japanese prompt that is clean itself but whose translation is an arena-hard item."""
    src = tmp_path / "in"
    src.mkdir()
    arena = real["arena"]
    planted = {
        "exact": arena[3],
        "edited": arena[4],
        "embedded": arena[5],
    }
    words = planted["edited"]["text"].split()
    words[len(words) // 2] = "kindly"
    rows = [{"id": f"d{i}", "text": t} for i, t in enumerate(real["clean"][:40])]
    rows += [
        {"id": "p-exact", "text": planted["exact"]["text"]},
        {"id": "p-edited", "text": " ".join(words)},
        {"id": "p-embedded", "text": "Quick question from my homework: " + planted["embedded"]["text"] + " Please be brief."},
        {"id": "p-ja", "text": "家で使うメールサーバーのために、固定IPがなくても信頼できる構成を教えてください。"},
    ]
    (src / "corpus.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    bench = tmp_path / "arena_hard.jsonl"
    bench.write_text("".join(json.dumps({"uid": r["id"], "prompt": r["text"]}) + "\n" for r in arena), encoding="utf-8")
    return src, bench, planted, rows


def _ctx(ctx_factory, src, bench, *sets):
    return ctx_factory(
        f"ingest.inputs=[{{path: '{src}/*.jsonl'}}]", "curate.near_dedup.enabled=false", "curate.langid.langs=[]", "curate.langid.und=keep",
        f"curate.decontaminate.benchmarks=[{{name: arena_hard, path: '{bench}', id_field: uid, text_field: prompt}}]", *sets,
    )  # fmt: skip


def test_curate_drops_contaminated_prompts_with_the_item_named(ctx_factory, corpus):
    src, bench, planted, rows = corpus
    ctx = _ctx(ctx_factory, src, bench)
    run_stage(ctx, "ingest")
    ja_id = prompt_id(rows[-1]["text"])
    # The translate stage's row for the Japanese prompt: an English translation that is arena-hard item 0
    # (what a translator writes for a Japanese copy of it; the tiny test model cannot translate).
    now = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    english = real_item_text(bench, 1)
    translation = dict(prompt_id=ja_id, target_lang="en", model="t", translated_prompt_id=prompt_id(english), source_lang="ja",
                       source_text=rows[-1]["text"], text=english, finish_reason="stop", prompt_tokens=1, completion_tokens=1,
                       gen_config_id="g", run_id="r0", created_at=now)  # fmt: skip
    ctx.store.merge(ctx.spark.createDataFrame([translation], SCHEMAS["translations"]), "translations", run_id="r0", stage="translate")
    result = run_stage(ctx, "curate")

    rejected = {r["source_id"]: r["reason"] for r in ctx.store.read("prompts_rejected").collect()}
    for sid, item in (("p-exact", planted["exact"]), ("p-edited", planted["edited"]), ("p-embedded", planted["embedded"])):
        assert rejected[sid] == f"contaminated:arena_hard:{item['id']}", sid
    assert rejected["p-ja"] == f"contaminated:arena_hard:{real_item_id(bench, 1)}"  # cross-lingual, by its translation
    assert not any(k.startswith("d") for k in rejected)  # the real Dolly prompts stay
    kept = ctx.store.read("prompts").count()
    assert kept == 40 and result.rows_out == kept and result.rows_in == len(rows)
    d = result.stats["decontaminate"]
    assert d["items"] == {"arena_hard": 500} and d["prompts"] == {"arena_hard": 4} and d["cross_lingual"] == 1
    assert result.stats["rejected_by_reason"]["contaminated:arena_hard"] == 4
    # A re-run changes nothing.
    again = run_stage(ctx, "curate")
    assert again.stats["prompts_rejected"] == {"inserted": 0, "updated": 0, "deleted": 0}


def test_flag_mode_keeps_the_prompt_and_names_the_item(ctx_factory, corpus):
    src, bench, planted, _ = corpus
    ctx = _ctx(ctx_factory, src, bench, "curate.decontaminate.action=flag", "curate.decontaminate.translations=false")
    run_stage(ctx, "ingest")
    result = run_stage(ctx, "curate")
    flags = {r["text"]: r["flags"] for r in ctx.store.read("prompts").select("text", "flags").collect()}
    assert f"contaminated:arena_hard:{planted['exact']['id']}" in flags[planted["exact"]["text"]]
    assert ctx.store.read("prompts").where(F.array_contains("flags", f"contaminated:arena_hard:{planted['exact']['id']}")).count() == 1
    assert result.stats["flags"]["contaminated:arena_hard"] == 3 and result.stats["decontaminate"]["cross_lingual"] == 0
    assert ctx.store.read("prompts_rejected").where(F.col("reason").startswith("contaminated")).count() == 0


def test_a_benchmark_file_without_the_named_fields_is_a_clear_error(ctx_factory, corpus):
    src, bench, _, _ = corpus
    ctx = _ctx(ctx_factory, src, bench, f"curate.decontaminate.benchmarks=[{{name: arena_hard, path: '{bench}'}}]")
    run_stage(ctx, "ingest")
    with pytest.raises(ValueError, match=r"arena_hard.*no field\(s\) \['id', 'text'\]"):
        run_stage(ctx, "curate")


def real_item_text(bench, i):
    return json.loads(bench.read_text(encoding="utf-8").splitlines()[i])["prompt"]


def real_item_id(bench, i):
    return json.loads(bench.read_text(encoding="utf-8").splitlines()[i])["uid"]

