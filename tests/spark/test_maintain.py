"""Maintain stage on real Delta tables (delta-rs): compaction keeps every row, vacuum removes only what no
version within the retention needs, and temp files of killed staging tasks go once they are old."""

import os
import time

import pytest

from instructlake.jobs.runs import run_stage
from tests.support.rows import frame, raw_rows

DAY = 24 * 3600


def _age(path, seconds):
    t = time.time() - seconds
    os.utime(path, (t, t))


def _data_files(table_dir):
    return sorted(p.name for p in table_dir.iterdir() if p.suffix == ".parquet")


@pytest.mark.backends
def test_compact_then_vacuum_within_retention(ctx_factory, tmp_path):
    # prompts_raw is the table under test (each other table's upkeep costs seconds on delta-spark for nothing);
    # the staging sweep covers every LLM stage's dir whatever the tables listed.
    ctx = ctx_factory(
        "maintain.retention_hours=1", "maintain.force=true", "maintain.tables=[prompts_raw]",
        f"reverse.staging_dir={tmp_path / 'reverse_staging'}",
    )  # fmt: skip
    store = ctx.store
    for i in range(10):  # ten commits of a chunked writer: ten small files
        store.append(frame(ctx.spark, raw_rows(30, start=30 * i), partitions=1), "prompts_raw", run_id="r", stage="t", chunk=str(i))
    rows = sorted(r.source_id for r in store.read("prompts_raw").collect())
    version = store.version("prompts_raw")
    table_dir = tmp_path / "lake" / "prompts_raw"
    (table_dir / "part-killed-old.parquet").write_bytes(b"a writer killed before its commit")
    _age(table_dir / "part-killed-old.parquet", 2 * DAY)
    (table_dir / "part-killed-young.parquet").write_bytes(b"maybe a writer still committing")
    staging = tmp_path / "lake" / "_staging" / "responses"
    staging.mkdir(parents=True)
    for name in (".tmp-old-a.parquet", ".tmp-young-b.parquet", "run-0-1.parquet"):
        (staging / name).write_bytes(b"x")
    _age(staging / ".tmp-old-a.parquet", 2 * DAY)
    reverse_staging = tmp_path / "reverse_staging" / "reverse_steps"  # every LLM stage's staging dir is swept
    reverse_staging.mkdir(parents=True)
    (reverse_staging / ".tmp-old-c.parquet").write_bytes(b"x")
    _age(reverse_staging / ".tmp-old-c.parquet", 2 * DAY)

    result = run_stage(ctx, "maintain")
    s = result.stats["tables"]["prompts_raw"]
    assert s["before"] == {"files": 10, "bytes": s["before"]["bytes"], "rows": 300} and s["after"]["files"] == 1
    assert s["compacted"] == {"files_removed": 10, "files_added": 1}
    assert sorted(r.source_id for r in store.read("prompts_raw").collect()) == rows
    assert "OPTIMIZE" in [h["operation"] for h in store.history("prompts_raw")]
    # Within the hour: the old orphan goes; the compacted-away files and the young orphan stay, so the
    # version before compaction is still readable.
    assert s["vacuumed_files"] == 1 and "part-killed-old.parquet" not in _data_files(table_dir)
    assert "part-killed-young.parquet" in _data_files(table_dir) and len(_data_files(table_dir)) == 12
    from deltalake import DeltaTable

    assert DeltaTable(str(table_dir), version=version).to_pyarrow_table().num_rows == 300
    assert result.stats["staging_temps_removed"] == 2
    assert sorted(p.name for p in staging.iterdir()) == [".tmp-young-b.parquet", "run-0-1.parquet"]
    assert list(reverse_staging.iterdir()) == []
    assert result.rows_in == result.rows_out == sum(t["before"]["rows"] for t in result.stats["tables"].values())

    # Once nothing needs them (retention 0): every unreferenced file goes; the rows stay.
    again = run_stage(ctx_factory("maintain.retention_hours=0", "maintain.force=true", "maintain.tables=[prompts_raw]"), "maintain")
    s = again.stats["tables"]["prompts_raw"]
    assert s["compacted"] == {"files_removed": 0, "files_added": 0} and s["vacuumed_files"] == 11
    assert len(_data_files(table_dir)) == 1
    assert sorted(r.source_id for r in store.read("prompts_raw").collect()) == rows


@pytest.mark.backends
def test_maintain_only_the_listed_tables_that_exist(ctx_factory):
    ctx = ctx_factory("maintain.tables=[prompts_raw, prompts]")
    ctx.store.append(frame(ctx.spark, raw_rows(5)), "prompts_raw", run_id="r", stage="t")
    ctx.store.append(frame(ctx.spark, raw_rows(5, start=5)), "prompts_raw", run_id="r", stage="t", chunk="1")
    result = run_stage(ctx, "maintain")
    assert list(result.stats["tables"]) == ["prompts_raw"] and result.stats["absent"] == ["prompts"]
    assert not ctx.store.exists("prompts") and result.rows_in == result.rows_out == 10

