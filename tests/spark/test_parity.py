"""The demo pipeline on delta-rs and on delta-spark gives the same tables, and SQL reads what delta-spark wrote.

Both runs share the session (it holds delta-spark's jars; `delta.backend` picks the writer), the real
prompts of ../shared/data (two files, so the module stays quick), the tiny models and their seeds. The
config is the demo's (conf/local.yaml + conf/demo.yaml: decontamination against Arena-Hard and Rakuda, two
models answering), so `make demo`'s pipeline runs here on both backends.
"""

from __future__ import annotations

import pandas as pd
import pytest

from instructlake.jobs.runs import Context, run_stage
from instructlake.jobs.tables import BOOKKEEPING, KEYS
from tests.support.lake import make_conf

# Everything the demo writes that depends only on input and config; `runs` holds timings and paths, and
# latency_s is a wall-clock measurement.
TABLES = ("prompts_raw", "prompts_rejected", "prompts", "responses", "generation_errors", "response_checks", "expectation_results")


VOLATILE = {"latency_s"}


DEMO = ("conf/local.yaml", "conf/demo.yaml")


@pytest.fixture(scope="module")
def lakes(spark, shared_data, tmp_path_factory):
    work = tmp_path_factory.mktemp("parity_work")
    inputs = f"ingest.inputs=[{{path: '{shared_data}/prompts/en_self_instruct_seed_tasks.jsonl'}}, {{path: '{shared_data}/prompts/en_arena_hard_v0.1.jsonl'}}]"
    sets = (inputs, f"run.work_dir={work}", "generate.limit=12", "generate.sampling.max_tokens=16", "generate.chunk_rows=4")
    out = {}
    for backend in ("rs", "spark"):
        conf = make_conf(tmp_path_factory.mktemp(f"parity_{backend}"), f"delta.backend={backend}", *sets, files=DEMO)
        ctx = Context.create(conf, spark=spark)
        assert ctx.store.backend == backend
        out[backend] = {"ctx": ctx, "results": {s: run_stage(ctx, s) for s in conf.pipeline.stages}}
    return out


def contents(ctx, name: str) -> pd.DataFrame:
    df = ctx.store.read(name).toPandas()
    df = df.drop(columns=[c for c in df.columns if c in BOOKKEEPING or c in VOLATILE])
    keys = [k for k in KEYS[name] if k not in BOOKKEEPING] or list(df.columns)
    # Lists and maps compare as their text: sort_values cannot order them.
    df = df.map(lambda v: repr(list(v)) if hasattr(v, "__len__") and not isinstance(v, (str, bytes)) else v)
    return df.sort_values(keys).reset_index(drop=True)


@pytest.mark.parametrize("name", TABLES)
def test_both_backends_write_the_same_table(lakes, name):
    rs, spark = (contents(lakes[b]["ctx"], name) for b in ("rs", "spark"))
    if name in ("prompts_raw", "prompts", "responses"):
        assert len(rs) > 0
    pd.testing.assert_frame_equal(rs, spark, check_dtype=False)


def test_both_backends_report_the_same_counts(lakes):
    counts = {b: {s: (r.rows_in, r.rows_out, r.rows_rejected) for s, r in lakes[b]["results"].items()} for b in lakes}
    assert counts["rs"] == counts["spark"]
    assert counts["spark"]["generate"][1] == 48  # 12 prompts x 2 samples x 2 models


def test_the_demo_drops_the_benchmark_it_ingested_and_answers_with_two_models(lakes, shared_data):
    ctx = lakes["spark"]["ctx"]
    rejected = ctx.store.read("prompts_rejected").toPandas()
    contaminated = rejected[rejected.reason.str.startswith("contaminated:")]
    # Arena-Hard is one of the two ingested files and a demo benchmark: every prompt of it that reaches the
    # step (not an exact duplicate, not filtered before) is dropped, naming its own item id; nothing else is.
    assert set(contaminated.source) == {"en_arena_hard_v0.1"} and len(contaminated) >= 490
    named = contaminated.reason.str.removeprefix("contaminated:arena-hard:")
    assert set(named) <= set(pd.read_json(shared_data / "prompts" / "en_arena_hard_v0.1.jsonl", lines=True).id)
    # Mostly its own item; a prompt that also holds another item (Arena-Hard repeats some questions under
    # other ids) names the item loaded first (the smallest id).
    assert (named == contaminated.source_id).mean() > 0.95 and (named <= contaminated.source_id).all()
    stats = lakes["spark"]["results"]["curate"].stats["decontaminate"]
    assert stats["prompts"] == {"arena-hard": len(contaminated), "rakuda": 0}
    assert stats["items"] == {"arena-hard": 500, "rakuda": 40}  # Rakuda's file holds 8 answers per question
    models = ctx.store.read("responses").groupBy("model").count().toPandas().set_index("model")["count"].to_dict()
    assert models == {"tiny-chat": 24, "tiny-chat-b": 24}


def test_duckdb_reads_the_tables_delta_spark_wrote(lakes):
    from instructlake.jobs.sql import connect

    ctx = lakes["spark"]["ctx"]
    con = connect(ctx.conf)
    got = dict(con.sql("SELECT source, count(*) FROM prompts_raw GROUP BY 1").fetchall())
    want = {r["source"]: r["count"] for r in ctx.store.read("prompts_raw").groupBy("source").count().collect()}
    assert got == want and len(got) == 2
    assert con.sql("SELECT count(DISTINCT prompt_id) FROM responses").fetchone()[0] == 12


def test_spark_sql_over_path_tables(lakes, spark):
    ctx = lakes["spark"]["ctx"]
    n = spark.sql(f"SELECT count(*) AS n FROM delta.`{ctx.store.location('responses')}` WHERE sample_index = 1").first().n
    assert n == 24


def test_metastore_tables_with_a_catalog(spark, tmp_path, shared_data):
    """tables.catalog: named tables in the session's metastore, created with their schema, queried by name."""
    conf = make_conf(
        tmp_path, "delta.backend=spark", "tables.catalog=spark_catalog", "tables.schema=instructlake_it",
        f"ingest.inputs=[{{path: '{shared_data}/prompts/en_self_instruct_seed_tasks.jsonl'}}]",
    )  # fmt: skip
    ctx = Context.create(conf, spark=spark)
    assert ctx.store.location("prompts_raw") == "`spark_catalog`.`instructlake_it`.`prompts_raw`"
    first = run_stage(ctx, "ingest")
    again = run_stage(Context.create(conf, spark=spark), "ingest")
    assert first.rows_out == 175 and again.stats["prompts_raw"]["inserted"] == 0
    assert spark.sql("SELECT count(*) AS n FROM spark_catalog.instructlake_it.prompts_raw").first().n == 175
    assert spark.sql("SELECT status FROM spark_catalog.instructlake_it.runs").collect()[0].status == "succeeded"
    assert "prompts_raw" in [t.name for t in spark.catalog.listTables("instructlake_it")]

