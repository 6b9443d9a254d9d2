"""Table store on both Delta backends (delta-rs and delta-spark) with a real local SparkSession and real Delta tables."""

import multiprocessing as mp

import pyarrow as pa
import pytest
from pyspark.sql import functions as F

from instructlake.jobs.store import arrow_schema
from instructlake.jobs.tables import SCHEMAS
from instructlake.udfs.rs_table import RsTable
from tests.support.rows import NOW, frame, raw_rows


@pytest.mark.backends
def test_round_trip_and_history(ctx_factory):
    ctx = ctx_factory()
    store = ctx.store
    assert store.read("prompts_raw").count() == 0
    written = store.append(frame(ctx.spark, raw_rows(500)), "prompts_raw", run_id="r1", stage="t")
    assert written == 500
    back = store.read("prompts_raw")
    # File sources report every column nullable; names and types are the contract's.
    assert [(f.name, f.dataType) for f in back.schema] == [(f.name, f.dataType) for f in SCHEMAS["prompts_raw"]]
    assert sorted(r.text for r in back.collect()) == sorted(f"prompt {i}" for i in range(500))
    ops = [h["operation"] for h in store.history("prompts_raw")]
    assert ops[-1] == "CREATE TABLE" and "WRITE" in ops


@pytest.mark.backends
def test_append_is_idempotent_per_run_stage_chunk(ctx_factory):
    ctx = ctx_factory()
    df = frame(ctx.spark, raw_rows(100))
    assert ctx.store.append(df, "prompts_raw", run_id="r1", stage="t", chunk="a") == 100
    version = ctx.store.version("prompts_raw")
    assert ctx.store.append(df, "prompts_raw", run_id="r1", stage="t", chunk="a") == 0
    assert ctx.store.version("prompts_raw") == version
    assert ctx.store.read("prompts_raw").count() == 100
    assert ctx.store.append(df, "prompts_raw", run_id="r1", stage="t", chunk="b") == 100


@pytest.mark.backends
def test_merge_identical_rerun_writes_nothing(ctx_factory):
    ctx = ctx_factory()
    first = ctx.store.merge(frame(ctx.spark, raw_rows(300)), "prompts_raw", run_id="r1", stage="t")
    assert (first.inserted, first.updated) == (300, 0)
    version = ctx.store.version("prompts_raw")
    # Same content from a later run (bookkeeping columns differ): no change, no new table version.
    again = ctx.store.merge(frame(ctx.spark, raw_rows(300, run_id="r2")), "prompts_raw", run_id="r2", stage="t")
    assert (again.inserted, again.updated) == (0, 0)
    assert ctx.store.version("prompts_raw") == version


@pytest.mark.backends
def test_merge_upserts_changed_and_new(ctx_factory):
    ctx = ctx_factory()
    ctx.store.merge(frame(ctx.spark, raw_rows(100)), "prompts_raw", run_id="r1", stage="t")
    changed = frame(ctx.spark, raw_rows(110, run_id="r2")).withColumn(
        "text", F.when(F.col("source_id") == "7", F.lit("edited")).otherwise(F.col("text"))
    )
    result = ctx.store.merge(changed, "prompts_raw", run_id="r2", stage="t")
    assert (result.inserted, result.updated) == (10, 1)
    table = ctx.store.read("prompts_raw")
    assert table.count() == 110
    assert table.filter("source_id = '7'").first().text == "edited"
    assert table.groupBy("source", "source_id", "turn").count().filter("count > 1").count() == 0


@pytest.mark.backends
def test_sixteen_concurrent_spark_tasks_lose_nothing(ctx_factory, backend):
    ctx = ctx_factory("delta.commit_retries=50")
    df = frame(ctx.spark, raw_rows(1600), partitions=16)
    assert df.rdd.getNumPartitions() == 16
    assert ctx.store.append(df, "prompts_raw", run_id="r1", stage="t") == 1600
    assert ctx.store.read("prompts_raw").select("source_id").distinct().count() == 1600
    assert ctx.store.append(df, "prompts_raw", run_id="r1", stage="t") == 0  # a retried job: nothing twice
    assert ctx.store.read("prompts_raw").count() == 1600
    writes = [h for h in ctx.store.history("prompts_raw") if h["operation"] == "WRITE"]
    # delta-rs: each task commits its own rows once; delta-spark: the tasks write files, the driver commits.
    assert len(writes) == (16 if backend == "rs" else 1)


def _append_worker(args):
    uri, i = args
    table = RsTable(uri=uri, schema=arrow_schema(SCHEMAS["prompts_raw"]), storage_options={}, retries=100)
    data = pa.Table.from_pylist(raw_rows(50, start=i * 50), schema=table.schema)
    return table.append(data, app_id=f"worker-{i}")


def test_sixteen_processes_racing_on_one_table_lose_nothing(ctx_factory):
    """True contention (local[2] runs only two Spark tasks at once): 16 processes commit together. Only
    delta-rs commits from executors; delta-spark commits on the driver."""
    ctx = ctx_factory()
    ctx.store.create("prompts_raw")
    uri = ctx.store.location("prompts_raw")
    with mp.get_context("spawn").Pool(16) as pool:
        assert all(pool.map(_append_worker, [(uri, i) for i in range(16)]))
        assert not any(pool.map(_append_worker, [(uri, i) for i in range(16)]))  # every app id already done
    assert ctx.store.read("prompts_raw").select("source_id").distinct().count() == 800
    assert ctx.store.read("prompts_raw").count() == 800


@pytest.mark.backends
def test_append_rejects_nulls_in_key_columns(ctx_factory):
    ctx = ctx_factory()
    rows = raw_rows(3)
    rows[1]["source_id"] = None
    schema = SCHEMAS["prompts_raw"]
    nullable = type(schema)([type(f)(f.name, f.dataType, True) for f in schema.fields])
    with pytest.raises(Exception, match="(?i)null"):
        ctx.store.append(ctx.spark.createDataFrame(rows, nullable), "prompts_raw", run_id="r1", stage="t")


@pytest.mark.backends
def test_missing_columns_fail_clearly(ctx_factory):
    ctx = ctx_factory()
    with pytest.raises(ValueError, match=r"lacks columns \['text'"):
        ctx.store.append(frame(ctx.spark, raw_rows(2)).drop("text"), "prompts_raw", run_id="r", stage="t")


def test_delta_jars_come_from_the_ivy_cache_under_the_work_dir(spark):
    """The session fixture resolved delta.packages once into IVY_DIR; the session runs on those jars."""
    from tests.support.lake import IVY_DIR

    (resolved,) = IVY_DIR.glob("*/resolved.txt")
    jars = resolved.read_text().split()
    assert any("delta-spark_4.2_2.13-4.4.0.jar" in j for j in jars) and all(j.startswith(str(IVY_DIR)) for j in jars)
    assert set(spark.conf.get("spark.jars").split(",")) == set(jars)


@pytest.mark.backends
def test_merge_repeated_with_the_same_run_id_commits_what_is_missing(ctx_factory):
    """A repaired job re-runs a stage under the same run id: rows the first call did not write must land."""
    ctx = ctx_factory()
    ctx.store.merge(frame(ctx.spark, raw_rows(50)), "prompts_raw", run_id="r1", stage="t")
    result = ctx.store.merge(frame(ctx.spark, raw_rows(80)), "prompts_raw", run_id="r1", stage="t")
    assert (result.inserted, result.updated) == (30, 0)
    assert ctx.store.read("prompts_raw").count() == 80


@pytest.mark.backends
def test_a_table_of_an_older_layout_reads_as_the_contract_and_upgrades_to_it(ctx_factory, monkeypatch):
    from deltalake import DeltaTable

    from instructlake.jobs import store as store_module
    from instructlake.jobs.tables import ddl

    ctx = ctx_factory()
    # generation_errors as an older version wrote it: the input's id under prompt_id, no max_model_len.
    old = ddl("""prompt_id STRING NOT NULL, model STRING NOT NULL, gen_config_id STRING NOT NULL, task STRING NOT NULL,
        error_class STRING, message STRING, attempt INT, run_id STRING, created_at TIMESTAMP""")
    monkeypatch.setitem(store_module.SCHEMAS, "generation_errors", old)
    monkeypatch.delitem(store_module.RENAMED, "generation_errors")  # that version knew no rename
    row = dict(prompt_id="p1", model="m", gen_config_id="g", task="respond", error_class="E", message="x", attempt=1, run_id="r1", created_at=NOW)
    ctx.store.append(ctx.spark.createDataFrame([row], old), "generation_errors", run_id="r1", stage="t")
    monkeypatch.undo()

    store = ctx_factory().store  # a new store (a new run of the upgraded code) on the same lake
    first = store.read("generation_errors")
    assert set(first.columns) == set(SCHEMAS["generation_errors"].fieldNames())  # read as renamed, the new column null
    assert [(r.input_id, r.max_model_len) for r in first.collect()] == [("p1", None)]
    new = ctx.spark.createDataFrame([dict(row, input_id="p2", max_model_len=512, run_id="r2")], SCHEMAS["generation_errors"])
    with pytest.raises(ValueError, match="under their old names"):  # never a row written under the wrong name
        store.append(new, "generation_errors", run_id="r2", stage="t")

    assert store.upgrade("generation_errors") == {"prompt_id": "input_id"}
    assert store.upgrade("generation_errors") == {} and ctx_factory().store.upgrade("generation_errors") == {}
    store.append(new, "generation_errors", run_id="r2", stage="t")
    got = {r.input_id: r.max_model_len for r in ctx_factory().store.read("generation_errors").collect()}
    assert got == {"p1": None, "p2": 512}
    names = [f.name for f in DeltaTable(store.location("generation_errors")).schema().fields]
    assert names[0] == "input_id" and "prompt_id" not in names and "max_model_len" in names

