"""The judge stage through Spark with the real vLLM engine (CPU) on the tiny local model, and best-of-n export.

The tiny model has random weights, so its judgements almost never hold a "[[score]]": the engine tests
check that every response gets a row (score null, output kept as the rationale), that failures become
generation_errors rows, that a re-run judges nothing new, and that the judge prompt reaches the engine
exactly as a plain `vllm.LLM.chat` call sees it. Score parsing is tested on the row builder with fixed
judge outputs, best-of-n selection by writing `judgements` rows straight into the Delta table, and the
whole chain (translate, generate, judge with parseable scores, gated best-of-n export) with the scripted
engine (conf/models/scripted.yaml).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from pyspark.sql import functions as F

from instructlake.jobs import judge
from instructlake.jobs.llm import models as llm_models
from instructlake.jobs.runs import run_stage
from instructlake.jobs.tables import SCHEMAS
from instructlake.udfs import generation as G
from instructlake.udfs import kinds as K
from instructlake.udfs import sinks
from instructlake.udfs.prompts import judge_messages, parse_judge_score
from instructlake.udfs.text import content_hash, prompt_id
from tests.support.judge import judgements, read_export
from tests.support.lake import PROBE, REPO, response
from tests.support.prompts import NOW, real_prompts, seed_prompts

BASE = (
    "generate.input=prompts", "generate.sampling.max_tokens=12", "generate.chunk_rows=4", "generate.tasks=2",
    "judge.sampling.max_tokens=24", "judge.chunk_rows=3", "judge.batch_size=2", "judge.tasks=2",
    "judge.progress_interval_s=5", "generate.progress_interval_s=5",
)  # fmt: skip


@pytest.fixture
def make_ctx(ctx_factory, work_dir, tmp_path):
    return lambda *sets: ctx_factory(
        f"run.work_dir={work_dir}", f"export.path={tmp_path / 'exports'}", *BASE, *sets
    )


def versions(ctx) -> list[int]:
    return [ctx.store.version(n) for n in ("judgements", "generation_errors")]


def test_judge_every_response_errors_and_resume(make_ctx, shared_data, work_dir, tmp_path, backend):
    ctx = make_ctx()
    en = real_prompts(shared_data, "en_dolly_open_qa.jsonl", 3)
    ja = real_prompts(shared_data, "ja_dolly_15k_ja_v0_first5000.jsonl", 2)
    seed_prompts(ctx, [(t, "en") for t in en] + [(t, "ja") for t in ja])
    assert run_stage(ctx, "generate").rows_out == 10  # 5 prompts x 2 samples
    # A response too long for the judge's context (2048 tokens): rejected per row, never retried.
    huge = response("Summarize this text.", 0, "en", text="word " * 3000)
    ctx.store.merge(ctx.spark.createDataFrame([huge], SCHEMAS["responses"]), "responses", run_id="r0", stage="test")
    resp = ctx.store.read("responses").toPandas()
    assert len(resp) == 11

    generated = resp[resp.model == "tiny-chat"].sort_values("response_id")
    bad = generated.response_id.iloc[1]  # its judge request raises inside the engine (the test-only faulty backend)
    faulty = make_ctx("judge.backend=tests.support.engines:faulty", f"judge.engine_args={{fail_keys: ['{bad}']}}")
    task = judge.build_task(faulty)
    result = judge.run(faulty)

    gid = result.stats["gen_config_id"]
    assert gid == task.config_id("judge") != G.gen_config_id(task.gen_config)
    df = judgements(ctx)
    assert result.rows_in == 11 and result.rows_out == len(df) == 9 and result.rows_rejected == 2
    assert set(df.response_id) == set(resp.response_id) - {bad, huge["response_id"]} and df.response_id.is_unique
    assert dict(zip(df.response_id, df.prompt_id)) == {
        r: p for r, p in zip(resp.response_id, resp.prompt_id) if r in set(df.response_id)
    }
    assert (df.judge_model == "tiny-chat").all() and (df.gen_config_id == gid).all() and (df.run_id == faulty.run_id).all()
    # Every row is kept, parseable or not: the judge's output is the rationale, its score whatever parses.
    assert df.rationale.notna().all() and df.finish_reason.isin(["stop", "length"]).all()
    assert ((df.rationale.str.len() > 0) | (df.finish_reason == "stop")).all()
    assert [parse_judge_score(t) for t in df.rationale] == [None if pd.isna(s) else s for s in df.score]
    assert df.completion_tokens.between(1, 24).all() and (df.prompt_tokens > 150).all()  # the MT-Bench prompt is long
    assert result.stats["scored"] + result.stats["unscored"] == 9 and result.stats["commit"] == {"rs": "direct", "spark": "staged"}[backend]
    by_model = result.stats["by_response_model"]  # per answering model; the huge one ("m") was never judged
    assert by_model == {"tiny-chat": {"judged": 9, "scored": result.stats["scored"], "mean_score": result.stats["mean_score"]}}

    errors = ctx.store.read("generation_errors").filter(F.col("task") == "judge").toPandas().set_index("input_id")
    assert set(errors.index) == {bad, huge["response_id"]}  # judge errors name the response in input_id
    assert errors.loc[huge["response_id"], "error_class"] == "prompt_too_long"
    assert errors.loc[bad, "error_class"] == "InjectedFault" and (errors.attempt == 1).all()
    assert (errors.model == "tiny-chat").all() and (errors.gen_config_id == gid).all()
    assert result.stats["errors_by_class"] == {"prompt_too_long": 1, "InjectedFault": 1}

    # Re-run: the failed request is retried (attempt 2), the response that cannot fit never is.
    again = run_stage(make_ctx(), "judge")
    assert again.rows_in == 11 and again.stats["done_before"] == 9 and again.stats["given_up"] == 1
    assert again.rows_out == 1 and set(judgements(ctx).response_id) == set(resp.response_id) - {huge["response_id"]}
    assert ctx.store.read("runs").filter(F.col("stage") == "judge").first().status == "succeeded"

    # Complete: nothing new is judged and no table version moves.
    before = versions(ctx)
    third = run_stage(make_ctx(), "judge")
    assert third.rows_out == 0 and third.stats["todo"] == 0 and third.stats["done_before"] == 10
    assert versions(ctx) == before

    # Greedy judging through Spark equals a plain vllm.LLM.chat over the same judge prompts.
    picked = generated.iloc[[0, 3]]
    spec = {
        "engine_args": llm_models.ModelFile.model_validate(
            __import__("yaml").safe_load((REPO / "conf/models/tiny-local.yaml").read_text())
        ).engine_args,
        "requests": [
            {"messages": judge_messages(q, a), "n": 1, "temperature": 0.0, "top_p": 1.0, "max_tokens": 24,
             "seed": G.request_seed(0, r)}
            for r, q, a in zip(picked.response_id, picked.prompt_text, picked.text)
        ],
    }  # fmt: skip
    (tmp_path / "requests.json").write_text(json.dumps(spec, ensure_ascii=False))
    out = tmp_path / "direct.json"
    proc = subprocess.run(
        [sys.executable, str(PROBE), str(work_dir / "models" / "tiny-chat"), str(tmp_path / "scratch"), str(out),
         "--direct", str(tmp_path / "requests.json")],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    direct = [texts[0] for texts in json.loads(out.read_text(encoding="utf-8"))]
    by_id = dict(zip(judgements(ctx).response_id, judgements(ctx).rationale))
    assert [by_id[r] for r in picked.response_id] == direct


def test_judge_selection_config_and_staged_commits(make_ctx, tmp_path):
    rows = [response(f"Question number {k}?", i, lang) for k, lang in enumerate(["en", "en", "ja"]) for i in range(2)]
    rows += [response("Answer the translation.", 0, "ja", task="respond_translated")]
    other = response("Question number 0?", 0, "en")
    rows.append({**other, "model": "other", "response_id": content_hash(other["prompt_id"], "other", "g", "0")})
    staging = tmp_path / "staging"
    sets = ("judge.commit=staged", f"judge.staging_dir={staging}", "judge.response_models=[m]",
            "judge.response_tasks=[respond]", "judge.langs=[en]")  # fmt: skip
    ctx = make_ctx(*sets)
    ctx.store.merge(ctx.spark.createDataFrame(rows, SCHEMAS["responses"]), "responses", run_id="r0", stage="test")
    en_ids = {r["response_id"] for r in rows[:4]}

    selected = judge.select_responses(ctx, ctx.conf.judge).toPandas()
    assert set(selected.prompt_id) == en_ids  # the engine job's key column carries the response id
    assert set(selected.origin_prompt_id) == {prompt_id("Question number 0?"), prompt_id("Question number 1?")}
    assert set(selected.columns) == set(K.INPUT_COLUMNS + K.kind("judge").extra_inputs) - {"task", "attempt"}
    limited = judge.select_responses(ctx, ctx.conf.judge.model_copy(update={"limit": 2, "sample_seed": 3})).toPandas()
    assert len(limited) == 2 and set(limited.prompt_id) <= en_ids

    result = run_stage(ctx, "judge")  # staged: Parquet files the driver merges on (response_id, judge_model)
    df = judgements(ctx)
    assert result.stats["commit"] == "staged" and result.rows_out == len(df) == 4 and set(df.response_id) == en_ids
    assert sinks.staged_files(str(staging), "judgements") == [] and result.stats["staged"]["judgements"]["inserted"] == 4

    # Another judge config (template) judges again and replaces the rows: one row per response and judge model.
    template = "Q: {question}\nA: {answer}\nScore 0-10 as [[n]]."
    again = run_stage(make_ctx(*sets, f"judge.template={json.dumps(template)}", "judge.system_prompt=null"), "judge")
    df2 = judgements(ctx)
    assert again.rows_out == 4 and len(df2) == 4 and set(df2.gen_config_id) == {again.stats["gen_config_id"]}
    assert again.stats["gen_config_id"] != result.stats["gen_config_id"]

    with pytest.raises(ValueError, match="question"):
        judge.build_task(make_ctx("judge.template='Rate {answer}'"))
    with pytest.raises(ValueError, match="n must be 1"):
        judge.build_task(make_ctx("judge.sampling.n=3", "judge.sampling.temperature=0.7"))


def judgement(resp: dict, score: float | None, judge_model: str = "j") -> dict:
    rationale = f"Rating: [[{score:g}]]" if score is not None else "no verdict"
    return dict(
        response_id=resp["response_id"], prompt_id=resp["prompt_id"], judge_model=judge_model, score=score,
        rationale=rationale, finish_reason="stop", prompt_tokens=300, completion_tokens=20, gen_config_id="jg",
        run_id="r0", created_at=NOW,
    )  # fmt: skip


@pytest.fixture
def judged(make_ctx):
    """Six prompts x 2 samples, with judgements crafted per case; returns (ctx factory, prompt -> response ids)."""
    prompts = {k: f"Prompt {k}: explain something." for k in "ABCDEF"}
    resp = {k: [response(p, i, "en") for i in range(2)] for k, p in prompts.items()}
    resp["D"][0]["finish_reason"] = "length"  # D0: truncated (and the judge liked it)
    scores = [
        (resp["A"][0], 3.0), (resp["A"][1], 8.0),  # A: the higher score wins over the lower sample index
        (resp["B"][0], 6.0), (resp["B"][1], 6.0),  # B: a tie goes to the lowest sample index
        (resp["C"][0], None), (resp["C"][1], 2.0),  # C: unscored ranks after scored, even a low score
        (resp["D"][0], 10.0), (resp["D"][1], 1.0),  # D: a left-out response (truncated) is never chosen
        # E: never judged -> the lowest sample index, as first_ok
    ]
    rows = [judgement(r, s) for r, s in scores]
    # F: two judges; the mean decides (F0: 5, F1: 3) unless export.judge_model picks one.
    rows += [judgement(resp["F"][0], 9.0, "j"), judgement(resp["F"][1], 1.0, "j")]
    rows += [judgement(resp["F"][0], 1.0, "k"), judgement(resp["F"][1], 5.0, "k")]

    def make(*sets):
        ctx = make_ctx(*sets)
        all_rows = [r for pair in resp.values() for r in pair]
        ctx.store.merge(ctx.spark.createDataFrame(all_rows, SCHEMAS["responses"]), "responses", run_id="r0", stage="test")
        ctx.store.merge(ctx.spark.createDataFrame(rows, SCHEMAS["judgements"]), "judgements", run_id="r0", stage="test")
        return ctx

    ids = {k: [r["response_id"] for r in pair] for k, pair in resp.items()}
    return make, {prompt_id(p): k for k, p in prompts.items()}, ids


def chosen(tmp_path: Path, names: dict[str, str], ids: dict[str, list[str]]) -> dict[str, int]:
    """prompt letter -> exported sample index."""
    out = {}
    for pid, recs in read_export(tmp_path / "exports" / "jsonl").items():
        assert len(recs) == 1, recs
        out[names[pid]] = ids[names[pid]].index(recs[0]["response_id"])
    return out


def test_export_best_of_n(judged, tmp_path):
    make, names, ids = judged
    result = run_stage(make("export.select=best"), "export")
    assert chosen(tmp_path, names, ids) == {"A": 1, "B": 0, "C": 1, "D": 1, "E": 0, "F": 0}
    assert result.rows_out == 6 and result.stats["left_out"] == {"truncated": 1, "not_selected": 5}

    run_stage(make("export.select=best", "export.judge_model=k"), "export")
    assert chosen(tmp_path, names, ids)["F"] == 1  # judge k alone prefers F1


def test_export_min_score(judged, tmp_path):
    make, names, ids = judged
    result = run_stage(make("export.select=best", "export.min_score=5"), "export")
    # C1 (2) is too low, so C's unscored sample is exported; A0 (3) and D1 (1) are left out as low_score.
    assert chosen(tmp_path, names, ids) == {"A": 1, "B": 0, "C": 0, "E": 0, "F": 0}
    assert result.stats["left_out"] == {"truncated": 1, "low_score": 4, "not_selected": 2}  # A0, C1, D1, F1 (mean 3)

    every = run_stage(make("export.select=all", "export.min_score=5.5"), "export")
    assert every.rows_out == 12 - 1 - 5 and every.stats["left_out"] == {"truncated": 1, "low_score": 5}


def test_export_best_without_judgements_is_first_ok(make_ctx, tmp_path):
    ctx = make_ctx("export.select=best")
    rows = [response("Why is the sky blue?", i, "en") for i in range(2)]
    rows[0]["finish_reason"] = "length"
    ctx.store.merge(ctx.spark.createDataFrame(rows, SCHEMAS["responses"]), "responses", run_id="r0", stage="test")
    result = run_stage(ctx, "export")
    assert result.rows_out == 1 and not ctx.store.exists("judgements")
    [[rec]] = read_export(tmp_path / "exports" / "jsonl").values()
    assert rec["response_id"] == rows[1]["response_id"]

