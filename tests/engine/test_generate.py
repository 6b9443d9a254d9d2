"""Generate and translate through Spark with the real vLLM engine (CPU) on the tiny local model.

Every test here shares one work dir, hence one engine spec: each Spark Python worker builds its engine
once (importing vllm takes ~10 s) and the following tests reuse it. The tests that kill tasks on purpose
(fault injection) come last, since a failed task takes its Python worker, and the engine in it, along.
Faults come from the test-only engine backend `tests.support.engines:faulty` around vLLM: another spec, so
the workers build it (and vLLM again for the next test).
Prompts are written straight into `prompts` / `prompts_raw` (real prompts from ../shared/data), so no
test pays for ingest and curate.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from pyspark.sql import functions as F

from instructlake.jobs import generate, store
from instructlake.jobs.llm import models as llm_models
from instructlake.jobs.llm import select as llm_select
from instructlake.jobs.llm import staging as llm_staging
from instructlake.jobs.runs import run_stage
from instructlake.jobs.tables import SCHEMAS
from instructlake.udfs import generation as G
from instructlake.udfs import kinds as K
from instructlake.udfs import sinks
from instructlake.udfs.text import normalize, prompt_id
from tests.support.lake import PROBE, REPO
from tests.support.prompts import NOW, real_prompts, seed_prompts

# Small and fast, the same engine everywhere (sampling is per request, so it may differ per test).
BASE = (
    "generate.input=prompts", "translate.input=prompts", "generate.sampling.max_tokens=16",
    "generate.chunk_rows=3", "generate.batch_size=2", "generate.progress_interval_s=5",
    "translate.sampling.max_tokens=24", "translate.chunk_rows=3", "translate.progress_interval_s=5",
)  # fmt: skip
FAULTY = "tests.support.engines:faulty"  # the test-only engine backend that fails on demand


@pytest.fixture
def make_ctx(ctx_factory, work_dir):
    return lambda *sets: ctx_factory(f"run.work_dir={work_dir}", *BASE, *sets)


@pytest.fixture
def prompts(shared_data) -> list[tuple[str, str]]:
    en = real_prompts(shared_data, "en_dolly_open_qa.jsonl", 30)
    ja = real_prompts(shared_data, "ja_dolly_15k_ja_v0_first5000.jsonl", 10)
    return [(t, "en") for t in en] + [(t, "ja") for t in ja]


def responses(ctx):
    return ctx.store.read("responses").toPandas()


def test_generate_through_spark_equals_direct_llm_chat(make_ctx, prompts, work_dir, tmp_path, backend):
    ctx = make_ctx("generate.tasks=2")
    ids = seed_prompts(ctx, prompts[:5] + prompts[-3:])
    result = run_stage(ctx, "generate")

    df = responses(ctx)
    assert result.rows_in == 8 and result.rows_out == len(df) == 16 and result.rows_rejected == 0
    assert sorted(set(df.prompt_id)) == sorted(ids) and (df.groupby("prompt_id").size() == 2).all()
    gid = result.stats["gen_config_ids"]["respond"]
    assert (df.gen_config_id == gid).all() and (df.model == "tiny-chat").all() and (df.task == "respond").all()
    expected_ids = {K.response_id(p, "tiny-chat", gid, i) for p in ids for i in range(2)}
    assert set(df.response_id) == expected_ids
    assert (df.origin_prompt_id == df.prompt_id).all() and set(df.lang) == {"en", "ja"}
    assert (df.temperature == 0.6).all() and (df.top_p == 1.0).all() and (df.max_tokens == 16).all() and (df.n == 2).all()
    assert df.engine_version.str.startswith("vllm-").all() and (df.engine == "vllm").all()
    assert (df.completion_tokens.between(1, 16)).all() and (df.prompt_tokens > 5).all() and (df.latency_s > 0).all()
    assert df.finish_reason.isin(["stop", "length"]).all() and (df.run_id == ctx.run_id).all()
    run = ctx.store.read("runs").filter(F.col("stage") == "generate").first()
    assert run.status == "succeeded" and run.rows_out == 16
    stats = result.stats
    assert stats["commit"] == {"rs": "direct", "spark": "staged"}[backend] and stats["chunks"] >= 3 and stats["completion_tokens"] == df.completion_tokens.sum()
    # The cost record: on the CPU each engine task holds one device, so device seconds are engine seconds.
    assert stats["model"] == df.model.iloc[0] and stats["devices"] == "cpu" and stats["requests"] == df.prompt_id.nunique()
    assert stats["device_s"] == pytest.approx(stats["engine_s"], abs=0.01) and stats["engine_s"] > 0
    # Engine-busy time and tokens per busy second, per task and summed: the engines' own speed.
    tasks = stats["engine_tasks"]
    assert sum(t["engine_s"] for t in tasks) == pytest.approx(stats["engine_s"], abs=0.01) and all(t["tokens_per_engine_s"] > 0 for t in tasks)
    assert stats["tokens_per_engine_s"] == pytest.approx(stats["completion_tokens"] / stats["engine_s"], rel=0.01)
    assert all(v == 1 for v in stats["engine_builds_per_worker"].values())

    # The reference: one plain vllm.LLM + LLM.chat call in a process of its own, same prompts and seeds.
    texts = dict(zip(ids, [normalize(t) for t, _ in prompts[:5] + prompts[-3:]]))
    model_file = llm_models.ModelFile.model_validate(__import__("yaml").safe_load((REPO / "conf/models/tiny-local.yaml").read_text()))
    spec = {
        "engine_args": model_file.engine_args,
        "requests": [
            {"messages": [{"role": "user", "content": texts[p]}], "n": 2, "temperature": 0.6, "top_p": 1.0,
             "max_tokens": 16, "seed": G.request_seed(0, p)}
            for p in ids
        ],
    }  # fmt: skip
    (tmp_path / "requests.json").write_text(json.dumps(spec, ensure_ascii=False))
    out = tmp_path / "direct.json"
    model = work_dir / "models" / "tiny-chat"
    proc = subprocess.run(
        [sys.executable, str(PROBE), str(model), str(tmp_path / "scratch"), str(out), "--direct", str(tmp_path / "requests.json")],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    direct = json.loads(out.read_text(encoding="utf-8"))
    through_spark = [list(df[df.prompt_id == p].sort_values("sample_index").text) for p in ids]
    assert through_spark == direct


def test_one_engine_per_worker_across_partitions_and_jobs(make_ctx, prompts):
    ctx = make_ctx("generate.tasks=6", "generate.chunk_rows=2")
    seed_prompts(ctx, prompts[:12])
    result = run_stage(ctx, "generate")
    assert result.rows_out == 24
    builds = result.stats["engine_builds_per_worker"]
    # No worker built its engine twice (the counts are per worker lifetime: across these six tasks and the
    # previous test's job), and fewer workers than tasks served them, so engines served several tasks.
    # How many workers local[2]'s pool holds depends on earlier tests (a task with two Python UDFs holds
    # two workers; the suite's pool reached 4): the invariant is one engine per worker, not two workers.
    assert set(builds.values()) == {1}
    assert len(result.stats["engine_start_s"]) <= len(builds) < 6


def test_oversize_prompt_and_failing_request_become_error_rows(make_ctx, prompts):
    huge = "word " * 3000  # > max_model_len 2048 of the tiny model
    ids = seed_prompts(make_ctx(), prompts[:6] + [(huge, "en")])
    bad, huge_id = ids[2], ids[-1]
    # One request raises in the engine: the test-only faulty backend around vLLM (tests/support/engines.py).
    faulty = (f"generate.backend={FAULTY}", f"generate.engine_args={{fail_keys: ['{bad}']}}")
    ctx = make_ctx("generate.tasks=2", "generate.batch_size=8", *faulty)
    result = generate.run(ctx)

    errors = ctx.store.read("generation_errors").toPandas().set_index("input_id")
    assert set(errors.index) == {bad, huge_id}
    assert errors.loc[huge_id, "error_class"] == "prompt_too_long" and "max_model_len" in errors.loc[huge_id, "message"]
    assert errors.loc[bad, "error_class"] == "InjectedFault" and (errors.attempt == 1).all()
    assert (errors.task == "respond").all() and (errors.model == "tiny-chat").all()
    df = responses(ctx)
    assert set(df.prompt_id) == set(ids) - {bad, huge_id} and len(df) == 10
    assert result.rows_rejected == 2 and result.stats["errors_by_class"] == {"prompt_too_long": 1, "InjectedFault": 1}

    # A second run retries the failed request (attempt 2) but never the prompt that cannot fit.
    again = run_stage(make_ctx("generate.tasks=2"), "generate")
    assert again.rows_in == 7 and again.stats["given_up"] == 1 and again.stats["done_before"] == 5
    assert again.rows_out == 2 and set(responses(ctx).prompt_id) == set(ids) - {huge_id}
    status = llm_select.error_status(ctx.store).toPandas().set_index("input_id")["resolved"].to_dict()
    assert status == {bad: True, huge_id: False}  # the retried request was answered; its error row is history


def test_prompt_too_long_is_retried_once_max_model_len_is_raised(make_ctx, prompts):
    long_text = "word " * 250  # about 750 tokens: over a 512 context, within the model's 2048
    (pid,) = seed_prompts(make_ctx(), [(long_text, "en")])
    small = ("generate.tasks=1", "generate.engine_args.max_model_len=512")
    first = run_stage(make_ctx(*small), "generate")
    errors = make_ctx().store.read("generation_errors").toPandas()
    assert first.rows_out == 0 and errors.set_index("input_id").loc[pid, "max_model_len"] == 512
    assert run_stage(make_ctx(*small), "generate").stats["given_up"] == 1  # the same context: it cannot fit

    raised = run_stage(make_ctx("generate.tasks=1", "generate.engine_args.max_model_len=2048"), "generate")
    assert raised.stats["given_up"] == 0 and raised.rows_out == 2
    assert set(responses(make_ctx()).prompt_id) == {pid}


def test_translate_to_japanese_then_answer_the_translations(make_ctx, prompts):
    ctx = make_ctx("translate.langs=[en]", "translate.tasks=2", "translate.target_lang=ja")
    ids = seed_prompts(ctx, prompts[:5] + prompts[-2:])  # 5 en, 2 ja (left alone: already Japanese)
    result = run_stage(ctx, "translate")
    tr = ctx.store.read("translations").toPandas()
    assert result.rows_out == len(tr) == 5 and set(tr.prompt_id) == set(ids[:5])
    assert (tr.target_lang == "ja").all() and (tr.model == "tiny-chat").all() and (tr.source_lang == "en").all()
    assert list(tr.translated_prompt_id) == [prompt_id(normalize(t)) for t in tr.text]
    assert set(tr.source_text) == {normalize(t) for t, _ in prompts[:5]}
    assert (tr.completion_tokens.between(1, 24)).all() and tr.finish_reason.isin(["stop", "length"]).all()
    v = ctx.store.version("translations")
    assert run_stage(make_ctx("translate.langs=[en]"), "translate").rows_out == 0  # done: nothing to translate
    assert ctx.store.version("translations") == v

    # Answer the translated instructions (the tiny model rarely ends a translation: take truncated ones too).
    gen = run_stage(make_ctx("generate.source=translations", "generate.translation_finish_reasons=[]"), "generate")
    df = responses(ctx)
    tr = tr[tr.text.str.strip() != ""]  # an empty translation is no prompt
    assert gen.rows_out == len(df) == 2 * tr.translated_prompt_id.nunique() > 0
    assert (df.task == "respond_translated").all() and (df.lang == "ja").all()
    assert set(df.prompt_id) == set(tr.translated_prompt_id) and set(df.origin_prompt_id) <= set(ids[:5])
    by_origin = dict(zip(tr.translated_prompt_id, tr.prompt_id))
    assert all(by_origin[p] == o for p, o in zip(df.prompt_id, df.origin_prompt_id))
    assert set(df.prompt_text) == set(tr.text)

    # source: both answers the originals too, under the respond task; the translated ones are done.
    both = run_stage(make_ctx("generate.source=both", "generate.translation_finish_reasons=[]"), "generate")
    assert both.rows_out == 2 * 7 and set(responses(ctx).task) == {"respond", "respond_translated"}


def test_prompts_raw_input_uses_text_hash_ids(make_ctx, spark):
    ctx = make_ctx("generate.input=prompts_raw", "generate.langs=[en]")
    rows = [
        dict(source="s", source_id=str(i), turn=0, text=t, source_lang=lang, run_id="r", created_at=NOW)
        for i, (t, lang) in enumerate([("Why is the sky blue?", "en"), ("Why is the sky blue?", "en"), ("空は青い", "ja")])
    ]
    ctx.store.append(spark.createDataFrame(rows, SCHEMAS["prompts_raw"]), "prompts_raw", run_id="r", stage="test")
    selected = llm_select.select_prompts(ctx, ctx.conf.generate).toPandas()
    assert list(selected.prompt_id) == [prompt_id("Why is the sky blue?")] and list(selected.lang) == ["en"]
    auto = ctx.conf.generate.model_copy(update={"input": "auto"})
    assert llm_select.prompt_table(ctx, auto) == "prompts"  # curate is in the default pipeline
    assert llm_select.prompt_table(make_ctx("pipeline.stages=[ingest, generate]"), auto) == "prompts_raw"


def _response_rows(pids: list[str], run_id: str = "r1", text: str = "t") -> list[dict]:
    return [
        dict(response_id=K.response_id(p, "m", "g", i), prompt_id=p, origin_prompt_id=p, task="respond", lang="en",
             model="m", gen_config_id="g", sample_index=i, n=2, text=text, run_id=run_id, created_at=NOW)
        for p in pids for i in range(2)
    ]  # fmt: skip


@pytest.mark.backends
def test_commit_staged_merges_once_and_cleans_up(make_ctx, tmp_path):
    ctx = make_ctx()
    root = str(tmp_path / "staging")
    schemas = {n: store.arrow_schema(SCHEMAS[n]) for n in ("responses", "generation_errors")}
    sink = sinks.StagingSink(root, schemas, ("responses", "generation_errors"), "generate-r1-abc")
    assert not sink.done("0-0")
    assert sink.commit("0-0", {"responses": _response_rows(["a", "b"]), "generation_errors": []})
    assert sink.commit("1-0", {"responses": _response_rows(["c"]), "generation_errors": [
        dict(input_id="d", model="m", gen_config_id="g", task="respond", error_class="X", message="m", attempt=1,
             run_id="r1", created_at=NOW)]})  # fmt: skip
    sink.commit("1-1", {"responses": _response_rows(["c"], text="t")})  # the same keys staged twice
    assert sink.done("0-0") and sink.done("1-0")
    (tmp_path / "staging" / "responses" / ".tmp-deadbeef-x.parquet").write_bytes(b"partial")  # a killed writer's
    assert len(sinks.staged_files(root, "responses")) == 3

    names = ("responses", "generation_errors")
    out = llm_staging.commit_staged(ctx.store, root, names, run_id="r2", stage="generate")
    assert out["responses"]["inserted"] == 6 and out["generation_errors"]["inserted"] == 1
    assert sinks.staged_files(root, "responses") == [] and ctx.store.read("responses").count() == 6
    versions = [ctx.store.version(n) for n in names]
    assert llm_staging.commit_staged(ctx.store, root, names, run_id="r3", stage="generate") == {}
    # A crash between merge and delete: the same rows staged again merge into nothing.
    sink.commit("0-0", {"responses": _response_rows(["a", "b"])})
    assert llm_staging.commit_staged(ctx.store, root, names, run_id="r4", stage="generate")["responses"]["inserted"] == 0
    assert [ctx.store.version(n) for n in names] == versions


@pytest.mark.backends
def test_staged_chunks_of_a_crashed_driver_are_recovered_by_the_next_run(make_ctx, prompts, tmp_path):
    staging = tmp_path / "staging"
    ctx = make_ctx("generate.commit=staged", f"generate.staging_dir={staging}")
    ids = seed_prompts(ctx, prompts[:4])
    model, task = generate.build_task(ctx)
    # What a driver that died mid-job leaves: chunks staged by its tasks, never merged.
    sink = sinks.StagingSink(str(staging), {n: store.arrow_schema(SCHEMAS[n]) for n in ("responses", "generation_errors")},
                           ("responses", "generation_errors"), "generate-dead-0")  # fmt: skip
    frame = __import__("pandas").DataFrame(
        dict(prompt_id=ids[:2], origin_prompt_id=ids[:2], task="respond", lang="en", text=["x", "y"], attempt=1)
    )
    fake = [G.E.Result(p, ["a", "b"], ["stop", "stop"], 3, [1, 1], 0.1) for p in ids[:2]]
    sink.commit("0-0", G.rows_for(task, frame, fake, "vllm-test", 2048))
    result = run_stage(ctx, "generate")
    assert result.stats["recovered"]["responses"]["inserted"] == 4
    assert result.stats["done_before"] == 2 and result.rows_out == 4  # only the other two prompts ran
    assert result.stats["commit"] == "staged" and sinks.staged_files(str(staging), "responses") == []
    assert (responses(ctx).groupby("prompt_id").size() == 2).all()


@pytest.mark.parametrize("commit", ["direct", "staged"])
@pytest.mark.backends
def test_fault_after_k_chunks_then_resume_answers_every_prompt_exactly_n_times(make_ctx, prompts, commit, tmp_path, backend):
    sets = ("generate.tasks=2", f"generate.commit={commit}", f"generate.staging_dir={tmp_path / 'staging'}")
    # Each engine task dies on its second generate call, one chunk per call (batch_size >= chunk_rows): it
    # fails right after committing its first chunk (EngineDeadError is fatal: no bisection, no error rows).
    dying = (f"generate.backend={FAULTY}", "generate.engine_args={die_after_calls: 1}", "generate.batch_size=3")
    ctx = make_ctx(*sets, *dying)
    ids = seed_prompts(ctx, prompts[:20])
    if backend == "spark" and commit == "direct":  # executors commit only through delta-rs
        with pytest.raises(ValueError, match="generate.commit=direct needs the delta-rs backend"):
            run_stage(ctx, "generate")
        return
    with pytest.raises(Exception, match="EngineDeadError"):
        run_stage(ctx, "generate")
    partial = responses(ctx)
    # Each task stopped right after its first committed chunk (3 prompts x 2 samples): nothing else landed.
    assert 6 <= len(partial) <= 12 and len(partial) % 6 == 0
    assert (partial.groupby("prompt_id").size() == 2).all()
    assert ctx.store.read("runs").filter(F.col("stage") == "generate").first().status == "failed"

    second = run_stage(make_ctx(*sets), "generate")
    df = responses(ctx)
    # Staged mode: a chunk a task staged after the failing driver's last merge is recovered by this run.
    recovered = second.stats.get("recovered", {}).get("responses", {}).get("inserted", 0)
    assert second.stats["done_before"] * 2 == len(partial) + recovered
    assert second.rows_out == 40 - len(partial) - recovered
    assert len(df) == 40 and df.response_id.is_unique and set(df.prompt_id) == set(ids)
    assert (df.groupby("prompt_id").size() == 2).all()

    versions = [ctx.store.version(n) for n in ("responses", "generation_errors")]
    third = run_stage(make_ctx(*sets), "generate")
    assert third.rows_out == 0 and third.stats["done_before"] == 20
    assert [ctx.store.version(n) for n in ("responses", "generation_errors")] == versions


def test_several_models_answer_the_same_prompts_and_each_resumes_on_its_own(make_ctx, prompts):
    from instructlake.jobs import report

    one = "generate.models=[conf/models/tiny-local.yaml]"
    two = "generate.models=[conf/models/tiny-local.yaml, {model_conf: conf/models/tiny-local-b.yaml, tasks: 1, sampling: {n: 1}}]"
    ctx = make_ctx(one)
    ids = seed_prompts(ctx, prompts[:4])
    first = run_stage(ctx, "generate")
    assert first.rows_out == 8 and first.stats["model"] == "tiny-chat"  # one entry: the one-model record

    second = run_stage(make_ctx(two), "generate")
    a, b = second.stats["models"]
    assert (a["model"], a["done_before"], a["rows_written"]) == ("tiny-chat", 4, 0)  # resume is per model
    assert (b["model"], b["done_before"], b["rows_written"], b["tasks"]) == ("tiny-chat-b", 0, 4, 1)
    assert second.rows_in == 8 and second.rows_out == 4
    df = responses(ctx)
    assert df.groupby(["model", "prompt_id"]).size().to_dict() == {
        **{("tiny-chat", p): 2 for p in ids}, **{("tiny-chat-b", p): 1 for p in ids}
    }
    assert set(df[df.model == "tiny-chat-b"].n) == {1} and df.response_id.is_unique
    by_model = df[df.sample_index == 0].pivot(index="prompt_id", columns="model", values="text")
    assert (by_model["tiny-chat"] != by_model["tiny-chat-b"]).any()  # other weights, other answers

    versions = [ctx.store.version(n) for n in ("responses", "generation_errors")]
    third = run_stage(make_ctx(two), "generate")
    assert third.rows_out == 0 and [m["done_before"] for m in third.stats["models"]] == [4, 4]
    assert [ctx.store.version(n) for n in ("responses", "generation_errors")] == versions
    cost, _, _ = report.llm_cost(ctx)  # the report reads each model's engine job out of the nested record
    by = {r["model"]: r for r in cost if r["stage"] == "generate"}
    assert by["tiny-chat"]["requests"] == 4 and by["tiny-chat-b"]["requests"] == 4
    assert by["tiny-chat-b"]["completion_tokens"] == int(df[df.model == "tiny-chat-b"].completion_tokens.sum())


@pytest.mark.gpu
@pytest.mark.skipif(not Path("/dev/nvidiactl").exists(), reason="needs a CUDA GPU and the CUDA vllm package (no GPU here)")
def test_generate_on_a_gpu(make_ctx, prompts):
    ctx = make_ctx("generate.device=cuda", "generate.tasks=1")
    seed_prompts(ctx, prompts[:8])
    result = run_stage(ctx, "generate")
    assert result.rows_out == 16 and result.stats["engine_version"].startswith("vllm-")

