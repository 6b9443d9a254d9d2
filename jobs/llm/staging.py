"""Staged commits on the driver: where a stage's engine tasks stage their chunks (udfs.sinks.StagingSink)
and merging the staged files into the tables."""

from __future__ import annotations

import logging
import uuid
from pathlib import Path

from pyspark.sql import Window
from pyspark.sql import functions as F

from instructlake.jobs.config import Config, LLMStageConf
from instructlake.jobs.store import TableStore
from instructlake.jobs.tables import KEYS, SCHEMAS
from instructlake.udfs import sinks
from instructlake.udfs.sinks import staged_files

log = logging.getLogger(__name__)


def staging_root(conf: Config, llm: LLMStageConf) -> str:
    if llm.staging_dir:
        return llm.staging_dir.rstrip("/")
    if conf.tables.catalog:
        raise ValueError("staged commits need a staging_dir on shared storage (a Volume path) when tables.catalog is set")
    root = conf.run.lake_root
    return f"{root.rstrip('/')}/_staging" if "://" in root else str(Path(root).resolve() / "_staging")


def commit_staged(store: TableStore, root: str, names: tuple[str, ...], *, run_id: str, stage: str) -> dict[str, dict]:
    """Merge every staged file of `names` into its table on the table's keys, then delete the files.

    Backend-neutral (TableStore.merge): used by the staged sink on both Delta backends. Idempotent: a
    crash after the merge and before the delete leaves files whose rows are already in the table, and
    merging them again commits nothing. A key staged twice keeps its newest row.
    """
    out: dict[str, dict] = {}
    for name in names:
        files = staged_files(root, name)
        if not files:
            continue
        keys = list(KEYS[name])
        latest = Window.partitionBy(*keys).orderBy(F.col("created_at").desc_nulls_last(), F.col("run_id").desc())
        df = (
            store.spark.read.schema(SCHEMAS[name])
            .parquet(*files)
            .withColumn("_rank", F.row_number().over(latest))
            .filter("_rank = 1")
            .drop("_rank")
        )
        # A fresh stage label per call: the store's idempotent-write ids include it, and two merges in one
        # run (recovery, then the job's own files) must not be mistaken for one.
        result = store.merge(df, name, run_id=run_id, stage=f"{stage}-staged-{uuid.uuid4().hex[:8]}")
        fs, base = sinks.filesystem(root)
        for f in files:
            fs.delete_file(f"{base}/{name}/{f.rsplit('/', 1)[1]}")
        out[name] = {"files": len(files), "inserted": result.inserted, "updated": result.updated}
        log.info("%s: merged %d staged file(s) into %s: %s", stage, len(files), name, out[name])
    return out
