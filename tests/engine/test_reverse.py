"""Reverse instructions through Spark with the real vLLM engine (CPU) on the tiny local model.

The fragments are real native sentences (lingua dev set: Japanese, German, English); the tiny model's
outputs are random tokens, so the tests accept every finish reason and score (`finish_reasons=[]`,
`min_score=null`) and check the chain: which step ran on what, that every output lands in reverse_steps
and the pairs in `responses`, that a re-run adds nothing, and that a min_score the pairs do not reach
deletes them. With the scripted engine (conf/models/scripted.yaml: parseable scores, translations that
finish) the last test checks that min_score keeps exactly the pairs scored at or above it.
"""

from __future__ import annotations

import json

import pytest

from instructlake.jobs.llm import models as llm_models
from instructlake.jobs.llm import select as llm_select
from instructlake.jobs.runs import run_stage
from instructlake.jobs.tables import SCHEMAS
from instructlake.udfs import kinds as K
from instructlake.udfs.text import normalize, prompt_id
from tests.support.prompts import NOW, real_prompts

BASE = (
    "reverse.input=prompts", "generate.input=prompts", "reverse.sources=[lingua]", "reverse.finish_reasons=[]",
    "reverse.min_score=null", "reverse.sampling.max_tokens=12", "reverse.chunk_rows=3", "reverse.batch_size=2",
    "reverse.tasks=2", "reverse.progress_interval_s=5",
)  # fmt: skip


@pytest.fixture
def make_ctx(ctx_factory, work_dir):
    return lambda *sets: ctx_factory(f"run.work_dir={work_dir}", *BASE, *sets)


@pytest.fixture
def lake(make_ctx, shared_data):
    """prompts: 7 lingua fragments (3 ja, 2 de, 2 en) and 2 Dolly prompts, as curate writes them."""
    lingua = [json.loads(line) for line in open(shared_data / "langid" / "lingua_sentences_dev.jsonl", encoding="utf-8")]
    picked = [r for lang, k in (("ja", 3), ("de", 2), ("en", 2)) for r in [x for x in lingua if x["lang"] == lang][:k]]
    rows = [(normalize(r["text"]), r["lang"], ["lingua"]) for r in picked]
    rows += [(normalize(t), "en", ["dolly"]) for t in real_prompts(shared_data, "en_dolly_open_qa.jsonl", 2)]
    ctx = make_ctx()
    data = [dict(prompt_id=prompt_id(t), text=t, lang=lang, sources=src, run_id="seed", created_at=NOW) for t, lang, src in rows]
    ctx.store.append(ctx.spark.createDataFrame(data, SCHEMAS["prompts"]), "prompts", run_id="seed", stage="test")
    fragments = {d["prompt_id"]: d for d in data if d["sources"] == ["lingua"]}
    prompts = {d["prompt_id"] for d in data if d["sources"] == ["dolly"]}
    return fragments, prompts


def steps(ctx):
    return ctx.store.read("reverse_steps").toPandas()


def test_corpus_fragments_are_never_prompts(make_ctx, lake):
    fragments, prompts = lake
    ctx = make_ctx()
    assert {r.prompt_id for r in llm_select.select_prompts(ctx, ctx.conf.generate).collect()} == prompts
    assert {r.prompt_id for r in llm_select.select_prompts(ctx, ctx.conf.reverse, corpora="only").collect()} == set(fragments)
    with pytest.raises(ValueError, match="reverse.sources is empty"):
        bare = make_ctx("reverse.sources=[]")
        llm_select.select_prompts(bare, bare.conf.reverse, corpora="only")


def test_four_steps_then_pairs_in_responses(make_ctx, lake):
    fragments, _ = lake
    ctx = make_ctx()
    result = run_stage(ctx, "reverse")
    df = steps(ctx)
    by_step = {s: g.set_index("fragment_id") for s, g in df.groupby("step")}
    native = {f for f, d in fragments.items() if d["lang"] != "en"}
    assert set(by_step[K.TO_EN].index) == native  # English fragments skip the first step
    assert set(by_step[K.INSTRUCT].index) == set(by_step[K.SCORE].index) == set(fragments)
    assert set(by_step[K.TO_NATIVE].index) == native
    for f, d in fragments.items():
        passage = by_step[K.TO_EN].loc[f, "text"] if f in native else d["text"]
        assert by_step[K.TO_EN].loc[f, "input"] == d["text"] if f in native else True
        assert by_step[K.INSTRUCT].loc[f, "input"] == passage  # the instruction is written for the English passage
        assert by_step[K.SCORE].loc[f, "input"] == by_step[K.INSTRUCT].loc[f, "text"]
    for f in native:
        assert by_step[K.TO_NATIVE].loc[f, "input"] == by_step[K.INSTRUCT].loc[f, "text"]
    assert (df.lang == df.fragment_id.map(lambda f: fragments[f]["lang"])).all()

    responses = ctx.store.read("responses").toPandas().set_index("origin_prompt_id")
    assert set(responses.index) == set(fragments) and (responses.task == "reverse_instruction").all()
    for f, d in fragments.items():
        r = responses.loc[f]
        assert r.text == d["text"] and r.lang == d["lang"]  # the native fragment is the answer
        expected = by_step[K.TO_NATIVE].loc[f, "text"] if f in native else by_step[K.INSTRUCT].loc[f, "text"]
        assert r.prompt_text == normalize(expected) and r.prompt_id == prompt_id(normalize(expected))
    assert result.rows_in == 7 and result.rows_out == 7 and result.stats["responses"]["inserted"] == 7

    # A re-run finds every step done: nothing is generated or committed again.
    versions = [ctx.store.version(t) for t in ("reverse_steps", "responses")]
    again = run_stage(make_ctx(), "reverse")
    assert all(s["todo"] == 0 for s in again.stats["steps"].values())
    assert again.stats["responses"] == {"inserted": 0, "updated": 0, "deleted": 0}
    assert [ctx.store.version(t) for t in ("reverse_steps", "responses")] == versions

    # The tiny model never writes a parseable [[score]]: with a min_score no pair passes, and the pairs
    # written before are deleted (their fragments are still selected).
    strict = run_stage(make_ctx("reverse.min_score=5"), "reverse")
    assert strict.stats["kept_pairs"] == 0 and strict.stats["responses"]["deleted"] == 7
    assert ctx.store.read("responses").count() == 0


def test_one_pair_per_distinct_instruction(make_ctx, lake):
    """A generic instruction written for several fragments becomes one prompt: the best-scored pair."""
    from types import SimpleNamespace

    from instructlake.jobs import reverse
    from instructlake.udfs.engine import SamplingConfig

    fragments, _ = lake
    ctx = make_ctx()
    f1, f2, f3 = sorted(fragments)[:3]
    model = llm_models.ResolvedModel("m", "p", "vllm", {}, SamplingConfig(temperature=0.6, max_tokens=64), None)
    selected = ctx.spark.createDataFrame([(f, fragments[f]["text"], fragments[f]["lang"]) for f in (f1, f2, f3)], "prompt_id string, text string, lang string")
    instructions = ctx.spark.createDataFrame(
        [(f1, "Summarize the text.", 6.0), (f2, "Summarize the text.\n", 9.0), (f3, "Who wrote this?", None)],
        "prompt_id string, prompt_text string, score double",
    )  # f1 and f2 normalize to one instruction
    written, deleted, n_pairs, n_repeated = reverse._write(ctx, SimpleNamespace(gids={"s": "g"}), model, selected, instructions)
    got = ctx.store.read("responses").toPandas().set_index("origin_prompt_id")
    assert (n_pairs, n_repeated, written.inserted, deleted) == (2, 1, 2, 0)
    assert set(got.index) == {f2, f3} and got.loc[f2, "text"] == fragments[f2]["text"]  # f2 scored higher
    assert got.loc[f2, "prompt_text"] == "Summarize the text." and got.loc[f2, "prompt_id"] == prompt_id("Summarize the text.")
    assert got.response_id.is_unique


def test_scripted_engine_scores_pairs_and_min_score_keeps_the_good_ones(make_ctx, lake):
    """With parseable scores (the scripted engine), reverse.min_score keeps exactly the pairs scored at or
    above it, and the pairs' prompts are the instructions translated back into the fragment's language."""
    fragments, _ = lake
    sets = ("reverse.model_conf=conf/models/scripted.yaml", "reverse.finish_reasons=[stop]", "reverse.sampling.max_tokens=256")
    ctx = make_ctx(*sets, "reverse.min_score=6")
    result = run_stage(ctx, "reverse")
    df = steps(ctx)
    scores = df[df.step == K.SCORE].set_index("fragment_id").score
    assert set(scores.index) == set(fragments) and scores.between(2, 9).all() and (df.finish_reason == "stop").all()
    good = set(scores[scores >= 6].index)
    assert 0 < len(good) < len(fragments)  # the gate keeps some and drops some
    pairs = ctx.store.read("responses").toPandas().set_index("origin_prompt_id")
    assert set(pairs.index) == good and result.stats["kept_pairs"] == len(good)
    for f in good:
        lang = fragments[f]["lang"]
        assert pairs.loc[f, "text"] == fragments[f]["text"]
        if lang != "en":  # back in the fragment's language (the scripted translation names its target)
            name = {"ja": "Japanese", "de": "German"}[lang]
            assert pairs.loc[f, "prompt_text"].startswith(f"({name}) Write a text like this one:")

