"""All Delta I/O, behind one API, on two backends (the delta-rs handle that Spark tasks commit through is
udfs.rs_table.RsTable, so executors never import this driver module).

`spark` (delta-spark): clusters with the Delta jars and Databricks. `rs` (delta-rs, embedded): everywhere
else; Spark tasks commit Arrow batches straight into the table, each commit tagged with an app transaction
(table, stage, run, partition) so a retried task or a re-run of the same run never writes twice, and our
own retry loop rides out commit races between concurrent tasks. Spark reads an rs table through the
snapshot's file list, so reads are pinned to one table version.

Keyed writes go through `merge`: Spark itself works out which source rows are new or changed (ignoring
the bookkeeping columns run_id/created_at), so an identical re-run writes nothing on either backend, and
only real changes are sent to the Delta writer.
"""

from __future__ import annotations

import datetime as dt
import logging
import random
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pyarrow as pa
from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.pandas.types import to_arrow_schema
from pyspark.sql.types import StructType

from instructlake.jobs.config import Config
from instructlake.jobs.tables import BOOKKEEPING, KEYS, SCHEMAS
from instructlake.udfs.rs_table import RsTable, commit_partitions

log = logging.getLogger(__name__)

_RESULT_SCHEMA = "partition INT, rows BIGINT, skipped BOOLEAN"


@dataclass(frozen=True)
class MergeResult:
    inserted: int
    updated: int


def arrow_schema(schema: StructType) -> pa.Schema:
    return to_arrow_schema(schema, timezone="UTC")


def table_location(conf: Config, name: str) -> str:
    """Fully qualified table name (catalog mode) or the table's absolute path/URI under run.lake_root."""
    t = conf.tables
    physical = t.names.get(name, name)
    if t.catalog:
        # Quoted: a part may be an SQL keyword (Spark 4 parses `...instructlake.runs` as one).
        return ".".join(f"`{p}`" for p in (t.catalog, t.schema_, physical) if p)
    root = conf.run.lake_root
    return f"{root.rstrip('/')}/{physical}" if "://" in root else str(Path(root).resolve() / physical)


def _columns_ddl(fields, not_null: bool = True) -> str:
    return ", ".join(f"`{f.name}` {f.dataType.simpleString()}{' NOT NULL' if not_null and not f.nullable else ''}" for f in fields)


class TableStore:
    """Create, append, merge, read and inspect the project's Delta tables."""

    def __init__(self, spark: SparkSession, conf: Config, backend: str):
        if backend not in ("spark", "rs"):
            raise ValueError(f"unknown delta backend {backend!r}")
        self.spark, self.conf, self.backend = spark, conf, backend
        self._current: set[str] = set()  # tables created or brought up to their contract by this store
        # Set by the stage runner to its lease's check: a driver-side write fails once the lease lapsed.
        self.guard: Callable[[], None] | None = None
        if backend == "rs" and conf.tables.catalog:
            raise ValueError("tables.catalog names metastore tables, which need delta.backend=spark")

    # ---- naming -------------------------------------------------------------------------------------
    def physical(self, name: str) -> str:
        return self.conf.tables.names.get(name, name)

    def location(self, name: str) -> str:
        return table_location(self.conf, name)

    def rs_table(self, name: str) -> RsTable:
        """The picklable delta-rs handle of a table, for executors that commit their own chunks (rs backend)."""
        return RsTable(
            uri=self.location(name),
            schema=arrow_schema(SCHEMAS[name]),
            storage_options=dict(self.conf.delta.storage_options),
            retries=self.conf.delta.commit_retries,
        )

    def _delta_table(self, name: str):
        from delta.tables import DeltaTable

        loc = self.location(name)
        return DeltaTable.forName(self.spark, loc) if self.conf.tables.catalog else DeltaTable.forPath(self.spark, loc)

    # ---- lifecycle ----------------------------------------------------------------------------------
    def exists(self, name: str) -> bool:
        if self.backend == "rs":
            from deltalake import DeltaTable

            return DeltaTable.is_deltatable(self.location(name), storage_options=self.conf.delta.storage_options or None)
        from delta.tables import DeltaTable

        loc = self.location(name)
        if self.conf.tables.catalog:
            return self.spark.catalog.tableExists(loc)
        return DeltaTable.isDeltaTable(self.spark, loc)

    def create(self, name: str) -> None:
        """Create the table with its contract schema if it does not exist, or add the contract's columns an
        older table lacks (nullable, so old rows read as null); idempotent, checked once per store."""
        if name in self._current:
            return
        schema = SCHEMAS[name]
        for attempt in range(5):
            try:
                missing = self._create(name, schema)
                break
            except Exception:
                # Two runs creating one table at once: the loser's commit of version 0 fails (or it sees the
                # winner's half-made directory); once the winner's commit lands, this one finds the table.
                if attempt == 4:
                    raise
                time.sleep(0.5 * (attempt + 1))
        if missing:
            log.warning("table %s: added columns %s (the table predates them)", name, [f.name for f in missing])
        self._current.add(name)

    def _create(self, name: str, schema: StructType) -> list:
        if self.backend == "rs":
            from deltalake import DeltaTable
            from deltalake.schema import Schema

            opts = self.conf.delta.storage_options or None
            if not DeltaTable.is_deltatable(self.location(name), storage_options=opts):
                DeltaTable.create(self.location(name), schema=arrow_schema(schema), mode="ignore", storage_options=opts)
            table = DeltaTable(self.location(name), storage_options=opts)
            have = {f.name for f in table.schema().fields}
            missing = [f for f in schema.fields if f.name not in have]
            if missing:
                table.alter.add_columns(Schema.from_arrow(arrow_schema(StructType(missing))).fields)
        else:
            from delta.tables import DeltaTable

            loc = self.location(name)
            t = self.conf.tables
            # Asked first: on Unity Catalog a user may use a schema that they may not create.
            if t.catalog and t.schema_ and not self.spark.catalog.databaseExists(f"`{t.catalog}`.`{t.schema_}`"):
                self.spark.sql(f"CREATE SCHEMA IF NOT EXISTS `{t.catalog}`.`{t.schema_}`")
            if t.catalog:
                # SQL rather than the builder: its tableName() takes no three-part names outside Databricks.
                self.spark.sql(f"CREATE TABLE IF NOT EXISTS {loc} ({_columns_ddl(schema.fields)}) USING DELTA")
            else:
                DeltaTable.createIfNotExists(self.spark).addColumns(schema).location(loc).execute()
            have = set(self._delta_table(name).toDF().columns)
            missing = [f for f in schema.fields if f.name not in have]
            if missing:
                target = loc if self.conf.tables.catalog else f"delta.`{loc}`"
                # Added columns stay nullable: the rows already there have no value for them.
                self.spark.sql(f"ALTER TABLE {target} ADD COLUMNS ({_columns_ddl(missing, not_null=False)})")
        return missing

    # ---- reads --------------------------------------------------------------------------------------
    def read(self, name: str) -> DataFrame:
        """The current snapshot as a Spark DataFrame (pinned to one version)."""
        self.create(name)
        if self.backend == "spark":
            loc = self.location(name)
            version = self._delta_table(name).history(1).select("version").first()[0]
            reader = self.spark.read.format("delta").option("versionAsOf", version)
            return reader.table(loc) if self.conf.tables.catalog else reader.load(loc)
        uris = self.rs_table(name).open().file_uris()
        if not uris:
            return self.spark.createDataFrame([], SCHEMAS[name])
        return self.spark.read.schema(SCHEMAS[name]).parquet(*uris)

    def version(self, name: str) -> int:
        self.create(name)
        if self.backend == "rs":
            return self.rs_table(name).open().version()
        return self._delta_table(name).history(1).select("version").first()[0]

    def history(self, name: str) -> list[dict[str, Any]]:
        """Commits newest first: version, timestamp, operation, parameters."""
        self.create(name)
        if self.backend == "rs":
            return [
                {"version": h.get("version"), "timestamp": h.get("timestamp"), "operation": h.get("operation"), "parameters": h.get("operationParameters")}
                for h in self.rs_table(name).open().history()
            ]
        rows = self._delta_table(name).history().select("version", "timestamp", "operation", "operationParameters").collect()
        return [{"version": r[0], "timestamp": r[1], "operation": r[2], "parameters": r[3]} for r in rows]

    # ---- upkeep -------------------------------------------------------------------------------------
    def file_stats(self, name: str) -> dict[str, int]:
        """Data files, bytes and rows of the current version (from the log: no data is read on delta-rs)."""
        if self.backend == "rs":
            import pyarrow.compute as pc

            adds = pa.table(self.rs_table(name).open().get_add_actions(flatten=True))
            rows = pc.sum(adds["num_records"]).as_py() if adds.num_rows else 0
            if adds.num_rows and adds["num_records"].null_count:  # a file without stats: count the rows
                rows = self.read(name).count()
            return {"files": adds.num_rows, "bytes": pc.sum(adds["size_bytes"]).as_py() or 0, "rows": rows or 0}
        detail = self._delta_table(name).detail().select("numFiles", "sizeInBytes").first()
        return {"files": detail[0], "bytes": detail[1], "rows": self.read(name).count()}

    def compact(self, name: str, target_bytes: int, *, run_id: str, stage: str) -> dict[str, int]:
        """Rewrite the table's small files into files of about target_bytes (OPTIMIZE): one commit, the same
        rows; older versions stay readable until vacuumed."""
        if self.backend == "rs":
            from deltalake import CommitProperties

            props = CommitProperties(custom_metadata={"instructlake.run_id": run_id, "instructlake.stage": stage})
            m = self.rs_table(name).open().optimize.compact(target_size=target_bytes, commit_properties=props)
            return {"files_removed": int(m["numFilesRemoved"]), "files_added": int(m["numFilesAdded"])}
        self.spark.conf.set("spark.databricks.delta.optimize.maxFileSize", str(target_bytes))
        m = self._delta_table(name).optimize().executeCompaction().select("metrics.numFilesRemoved", "metrics.numFilesAdded").first()
        return {"files_removed": int(m[0] or 0), "files_added": int(m[1] or 0)}

    def vacuum(self, name: str, retention_hours: int) -> int | None:
        """Delete data files that no version within retention_hours references, including files that killed
        writers left without a commit; returns how many (None where Delta did not log it). Under Delta's
        168 h default its safety check is turned off for this call only: readers or writers still on an
        older version would lose files."""
        enforce = retention_hours >= 168
        if self.backend == "rs":
            table = self.rs_table(name).open()
            # full: also files no commit ever referenced (the log-only mode sees only removed files).
            return len(table.vacuum(retention_hours=retention_hours, dry_run=False, enforce_retention_duration=enforce, full=True))
        # Delta 4.4 ignores a RETAIN other than 0 unless told not to (it would use the table property).
        settings = {
            "spark.databricks.delta.retentionDurationCheck.enabled": str(enforce).lower(),
            "spark.databricks.delta.vacuum.retentionWindowIgnore.enabled": "false",
        }
        previous = {k: self.spark.conf.get(k, None) for k in settings}
        for k, v in settings.items():
            self.spark.conf.set(k, v)
        try:
            table = self._delta_table(name)
            table.vacuum(retention_hours)
        finally:
            for k, v in previous.items():
                self.spark.conf.unset(k) if v is None else self.spark.conf.set(k, v)
        last = table.history(1).select("operation", "operationMetrics").first()
        if last and last[0] == "VACUUM END" and last[1] and "numDeletedFiles" in last[1]:
            return int(last[1]["numDeletedFiles"])
        return None

    # ---- writes -------------------------------------------------------------------------------------
    def append(self, df: DataFrame, name: str, *, run_id: str, stage: str, chunk: str = "0") -> int:
        """Append df; idempotent per (table, stage, run, chunk[, partition]). Returns rows written."""
        self._check()
        self.create(name)
        df = self._conform(df, name)
        app = f"{self.physical(name)}:{stage}:{run_id}:{chunk}"
        if self.backend == "spark":
            # Delta's idempotent writes: a txnAppId/txnVersion pair is applied at most once.
            before = self.version(name)
            writer = df.write.format("delta").mode("append").option("txnAppId", app).option("txnVersion", 1)
            loc = self.location(name)
            writer.saveAsTable(loc) if self.conf.tables.catalog else writer.save(loc)
            last = self._delta_table(name).history(1).select("version", "operationMetrics").first()
            return int((last[1] or {}).get("numOutputRows", 0)) if last[0] != before else 0
        results = df.mapInArrow(commit_partitions(self.rs_table(name), app, None), _RESULT_SCHEMA).collect()
        return sum(r["rows"] for r in results)

    def merge(self, df: DataFrame, name: str, *, run_id: str, stage: str) -> MergeResult:
        """Upsert df on the table's keys. Rows identical to the stored ones (bookkeeping aside) are not
        written, so a re-run with the same input commits nothing. df must hold each key at most once."""
        self._check()
        self.create(name)
        keys = KEYS[name]
        df = self._conform(df, name)
        compare = [c for c in df.columns if c not in BOOKKEEPING]
        existing = self.read(name)
        changed = df.select(*compare).subtract(existing.select(*compare)).select(*keys)
        delta = df.join(changed, list(keys), "left_semi").persist(StorageLevel.MEMORY_AND_DISK)
        try:
            new = delta.join(existing.select(*keys), list(keys), "left_anti")
            updates = delta.join(existing.select(*keys), list(keys), "left_semi")
            n_updates = updates.count()
            # A merge's rows are worked out afresh on every call (it is idempotent by content), so its commit
            # ids carry a per-call nonce: a repeated call with the same run id (a repaired job) must commit
            # what the first call did not, while a retried task of this call still commits at most once.
            nonce = uuid.uuid4().hex[:12]
            # An empty append is still a commit on delta-spark: an identical re-run must leave no version.
            inserted = self.append(new, name, run_id=run_id, stage=stage, chunk=f"insert-{nonce}") if new.count() else 0
            if n_updates:
                self._merge_rows(updates, name, run_id=run_id, stage=f"{stage}-{nonce}")
            return MergeResult(inserted=inserted, updated=n_updates)
        finally:
            delta.unpersist()

    def _merge_rows(self, df: DataFrame, name: str, *, run_id: str, stage: str) -> None:
        keys = KEYS[name]
        if self.backend == "spark":
            cond = " AND ".join(f"t.`{k}` = s.`{k}`" for k in keys)
            self._spark_retry(lambda: self._delta_table(name).alias("t").merge(df.alias("s"), cond).whenMatchedUpdateAll().whenNotMatchedInsertAll().execute())
            return
        # Few partitions: each is one delta-rs MERGE commit, and concurrent MERGEs retry on conflict.
        df = df.repartition(max(1, min(4, self.conf.spark.shuffle_partitions)), *keys)
        app = f"{self.physical(name)}:{stage}:{run_id}:update"
        df.mapInArrow(commit_partitions(self.rs_table(name), app, keys), _RESULT_SCHEMA).collect()

    def delete(self, keys: DataFrame, name: str, *, run_id: str, stage: str) -> int:
        """Delete the rows whose keys appear in `keys` (a DataFrame with at least the table's key columns).
        Returns the rows deleted; commits nothing when none match."""
        self._check()
        self.create(name)
        k = list(KEYS[name])
        doomed = self.read(name).select(*k).join(keys.select(*k).distinct(), k, "left_semi").persist(StorageLevel.MEMORY_AND_DISK)
        try:
            n = doomed.count()
            if not n:
                return 0
            if self.backend == "spark":
                cond = " AND ".join(f"t.`{c}` = s.`{c}`" for c in k)
                self._spark_retry(lambda: self._delta_table(name).alias("t").merge(doomed.alias("s"), cond).whenMatchedDelete().execute())
            else:
                parts = doomed.repartition(max(1, min(4, self.conf.spark.shuffle_partitions)), *k)
                app = f"{self.physical(name)}:{stage}:{run_id}:delete-{uuid.uuid4().hex[:12]}"
                parts.mapInArrow(commit_partitions(self.rs_table(name), app, tuple(k), "delete"), _RESULT_SCHEMA).collect()
            return n
        finally:
            doomed.unpersist()

    def dedup(self, name: str, *, run_id: str, stage: str) -> int:
        """Repair a keyed table that holds a key more than once (a lake written by concurrent runs before
        leases): keep the newest row per key (created_at, then run_id), in one commit per partition of keys.
        Returns the rows removed; commits nothing when every key is unique."""
        self._check()
        self.create(name)
        k = list(KEYS[name])
        table = self.read(name)
        counts = table.groupBy(*k).count().filter("count > 1").persist(StorageLevel.MEMORY_AND_DISK)
        try:
            if not counts.count():
                return 0
            removed = counts.agg(F.sum(F.col("count") - 1)).first()[0]
            from pyspark.sql.window import Window

            newest = Window.partitionBy(*k).orderBy(F.col("created_at").desc_nulls_last(), F.col("run_id").desc_nulls_last())
            keep = (
                table.join(counts.select(*k), k, "left_semi")
                .withColumn("__rank", F.row_number().over(newest))
                .filter("__rank = 1")
                .drop("__rank")
            )
            keep = self._conform(keep, name)
            if self.backend == "spark":
                marked = keep
                for c in k:
                    marked = marked.withColumn(f"__k_{c}", F.col(c))
                unmarked = keep
                for c in k:
                    unmarked = unmarked.withColumn(f"__k_{c}", F.lit(None).cast(keep.schema[c].dataType))
                source = marked.unionByName(unmarked)
                cond = " AND ".join(f"t.`{c}` = s.`__k_{c}`" for c in k)
                values = {f"`{c}`": f"s.`{c}`" for c in keep.columns}
                self._spark_retry(
                    lambda: self._delta_table(name).alias("t").merge(source.alias("s"), cond).whenMatchedDelete().whenNotMatchedInsert(values=values).execute()
                )
            else:
                parts = keep.repartition(max(1, min(4, self.conf.spark.shuffle_partitions)), *k)
                app = f"{self.physical(name)}:{stage}:{run_id}:dedup-{uuid.uuid4().hex[:12]}"
                parts.mapInArrow(commit_partitions(self.rs_table(name), app, tuple(k), "replace"), _RESULT_SCHEMA).collect()
            return int(removed)
        finally:
            counts.unpersist()

    # ---- small driver-side tables (run records, leases) ---------------------------------------------
    def rows(self, name: str, where: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """The rows of a small table (equality filters in `where`) as dicts, timestamps in UTC."""
        self.create(name)
        if self.backend == "rs":
            return self.rs_table(name).rows(where)
        loc = self.location(name)
        # The latest snapshot, unpinned: these reads decide a compare-and-set that Delta re-checks anyway.
        df = self.spark.read.format("delta").table(loc) if self.conf.tables.catalog else self.spark.read.format("delta").load(loc)
        for col, value in (where or {}).items():
            df = df.filter(F.col(col) == value)
        return [
            {k: v.astimezone(dt.timezone.utc) if isinstance(v, dt.datetime) else v for k, v in r.asDict().items()}
            for r in df.collect()
        ]

    def upsert_where(self, rows: list[dict[str, Any]], name: str, when: str) -> None:
        """A compare-and-set on a small table: insert rows whose key is absent, update a stored row only
        where the SQL predicate `when` (over t. the stored row, s. the new one) holds on the latest version."""
        self.create(name)
        if self.backend == "rs":
            self.rs_table(name).upsert_where(pa.Table.from_pylist(rows, schema=arrow_schema(SCHEMAS[name])), KEYS[name], when)
            return
        self._spark_retry(lambda: self._merge_small(rows, name).whenMatchedUpdateAll(condition=when).whenNotMatchedInsertAll().execute())

    def delete_where(self, rows: list[dict[str, Any]], name: str, when: str) -> None:
        """Delete the stored rows keyed as in `rows` where the SQL predicate `when` holds (t. stored, s. given)."""
        self.create(name)
        if self.backend == "rs":
            self.rs_table(name).delete(pa.Table.from_pylist(rows, schema=arrow_schema(SCHEMAS[name])), KEYS[name], when=when)
            return
        self._spark_retry(lambda: self._merge_small(rows, name).whenMatchedDelete(condition=when).execute())

    def _merge_small(self, rows: list[dict[str, Any]], name: str):
        """A delta-spark MERGE builder of driver-side rows into the table, on its keys."""
        df = self.spark.createDataFrame(rows, SCHEMAS[name])
        cond = " AND ".join(f"t.`{k}` = s.`{k}`" for k in KEYS[name])
        return self._delta_table(name).alias("t").merge(df.alias("s"), cond)

    def _check(self) -> None:
        if self.guard:
            self.guard()

    def _spark_retry(self, op):
        """Run a delta-spark MERGE/DELETE, again on a commit conflict (Delta's optimistic concurrency: a
        concurrent writer changed what this one read); the retried operation reads the new version."""
        from delta import exceptions as E

        conflicts = (
            E.ConcurrentAppendException, E.ConcurrentDeleteDeleteException, E.ConcurrentDeleteReadException,
            E.ConcurrentTransactionException, E.ConcurrentWriteException, E.MetadataChangedException,
        )  # fmt: skip
        retries = self.conf.delta.commit_retries
        for attempt in range(retries + 1):
            try:
                return op()
            except conflicts:
                if attempt == retries:
                    raise
                time.sleep(min(2.0, 0.05 * 2**attempt) * (0.5 + random.random()))
        raise AssertionError("unreachable")

    def write_rows(self, rows: list[dict[str, Any]], name: str, *, run_id: str, stage: str) -> None:
        """Upsert a few driver-side rows (run records): no Spark job on the rs backend."""
        self.create(name)
        if self.backend == "rs":
            self.rs_table(name).merge(pa.Table.from_pylist(rows, schema=arrow_schema(SCHEMAS[name])), KEYS[name])
            return
        self._merge_rows(self.spark.createDataFrame(rows, SCHEMAS[name]), name, run_id=run_id, stage=stage)

    def _conform(self, df: DataFrame, name: str) -> DataFrame:
        """Select the contract's columns in order, cast to its types; fail on missing columns."""
        schema = SCHEMAS[name]
        missing = [f.name for f in schema.fields if f.name not in df.columns]
        if missing:
            raise ValueError(f"table {name}: DataFrame lacks columns {missing}")
        return df.select(*[F.col(f.name).cast(f.dataType).alias(f.name) for f in schema.fields])
