"""The whole judge chain with the scripted engine (conf/models/scripted.yaml: translations that finish,
parseable `[[n]]` scores): translate -> generate -> judge -> gated best-of-n export, on real Delta tables."""

from __future__ import annotations

from instructlake.jobs.runs import run_stage
from tests.support.judge import judgements, read_export
from tests.support.prompts import real_prompts, seed_prompts


def test_scripted_engine_translate_generate_judge_then_gated_best_of_n_export(ctx_factory, shared_data, tmp_path):
    """What the tiny random model cannot show: translate -> generate (prompts and finished translations)
    -> judge with parseable scores -> export of the best-scored sample per prompt and task, above min_score."""
    ctx = ctx_factory(
        "llm.model_conf=conf/models/scripted.yaml", "llm.chunk_rows=4", "generate.input=prompts", "translate.input=prompts",
        "translate.limit=3", "generate.limit=null", "generate.source=both", "generate.sampling.n=3",
        "export.select=best", "export.min_score=6", f"export.path={tmp_path / 'exports'}",
    )  # fmt: skip
    en = real_prompts(shared_data, "en_dolly_open_qa.jsonl", 4)
    seed_prompts(ctx, [(t, "en") for t in en] + [(t, "ja") for t in real_prompts(shared_data, "ja_dolly_15k_ja_v0_first5000.jsonl", 2)])

    assert run_stage(ctx, "translate").rows_out == 3
    tr = ctx.store.read("translations").toPandas()
    assert (tr.finish_reason == "stop").all() and tr.text.str.startswith("(Japanese) ").all()
    gen = run_stage(ctx, "generate")
    assert gen.rows_out == (6 + 3) * 3  # every prompt and every finished translation, 3 samples each
    resp = ctx.store.read("responses").toPandas()
    assert resp.groupby("task").size().to_dict() == {"respond": 18, "respond_translated": 9}

    jr = run_stage(ctx, "judge")
    assert jr.rows_out == 27 and jr.stats["scored"] == 27 and jr.stats["by_response_model"]["scripted"]["judged"] == 27
    scores = judgements(ctx).set_index("response_id").score
    assert scores.between(2, 9).all()

    ex = run_stage(ctx, "export")
    resp["score"] = resp.response_id.map(scores)
    best = resp.sort_values(["score", "sample_index"], ascending=[False, True]).groupby(["prompt_id", "task"]).head(1)
    want = set(best[best.score >= 6].response_id)
    got = {r["response_id"] for recs in read_export(tmp_path / "exports" / "jsonl").values() for r in recs}
    assert got == want and ex.rows_out == len(want) > 0
    left = ex.stats["left_out"]
    assert left.get("low_score", 0) == int((resp.score < 6).sum()) and left["not_selected"] == 27 - len(want) - left.get("low_score", 0)

