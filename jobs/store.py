"""All Delta I/O: one interface (TableStore), one class per backend (RsStore, SparkStore), picked by
open_store; the delta-rs handle that Spark tasks commit through is udfs.rs_table.RsTable, so executors
never import this driver module. DuckDB's views over the tables (duckdb_views) are built here too.

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
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pyarrow as pa
from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.pandas.types import to_arrow_schema
from pyspark.sql.types import StructField, StructType

from instructlake.jobs.config import Config
from instructlake.jobs.tables import BOOKKEEPING, KEYS, RENAMED, SCHEMAS
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


def duckdb_views(conf: Config) -> list[tuple[str, str]]:
    """(name, SELECT) for each table in tables.names that exists, over DuckDB's delta extension."""
    if conf.tables.catalog:
        raise ValueError("DuckDB reads path tables; with tables.catalog set, query the metastore with Spark SQL")
    views = []
    for name in conf.tables.names:
        path = table_location(conf, name)
        # The local file system cannot see into an object store: a remote table is taken to exist.
        if "://" in path or (Path(path) / "_delta_log").is_dir():
            views.append((name, "SELECT * FROM delta_scan('" + path.replace("'", "''") + "')"))
    return views


def _columns_ddl(fields, not_null: bool = True) -> str:
    return ", ".join(f"`{f.name}` {f.dataType.simpleString()}{' NOT NULL' if not_null and not f.nullable else ''}" for f in fields)


def _on(keys, prefix: str = "") -> str:
    """The MERGE condition matching stored rows (t.) to source rows (s.) on `keys` (s.`<prefix><key>`)."""
    return " AND ".join(f"t.`{k}` = s.`{prefix}{k}`" for k in keys)


class TableStore(ABC):
    """Create, append, merge, read and inspect the project's Delta tables. What holds on both backends
    lives here (naming, contracts, which rows a merge, delete or dedup touches, the lease guard); each
    subclass commits those rows its own way."""

    backend: ClassVar[str]

    def __init__(self, spark: SparkSession, conf: Config):
        self.spark, self.conf = spark, conf
        self._current: set[str] = set()  # tables created or brought up to their contract by this store
        self._renamed: dict[str, dict[str, str]] = {}  # per table: columns it still has under an old name
        # Set by the stage runner to its lease's check: a driver-side write fails once the lease lapsed.
        self.guard: Callable[[], None] | None = None
        self.fences: dict[str, int] = {}  # table -> the epoch this store took (take_fences), while a stage runs
        self._fenced: set[str] = set()  # the tables to fence: the stage's leased ones
        self._taken_over: set[str] = set()  # those whose lease the stage took from another holder

    # ---- naming -------------------------------------------------------------------------------------
    def physical(self, name: str) -> str:
        return self.conf.tables.names.get(name, name)

    def location(self, name: str) -> str:
        return table_location(self.conf, name)

    # ---- lifecycle ----------------------------------------------------------------------------------
    @abstractmethod
    def exists(self, name: str) -> bool: ...

    def create(self, name: str) -> None:
        """Create the table with its contract schema if it does not exist, or add the contract's columns an
        older table lacks (nullable, so old rows read as null); idempotent, checked once per store."""
        if name in self._current:
            self._ensure_fence(name)
            return
        schema = SCHEMAS[name]
        for attempt in range(5):
            try:
                missing, renamed = self._create(name, schema)
                break
            except Exception:
                # Two runs creating one table at once: the loser's commit of version 0 fails (or it sees the
                # winner's half-made directory); once the winner's commit lands, this one finds the table.
                if attempt == 4:
                    raise
                time.sleep(0.5 * (attempt + 1))
        if missing:
            log.warning("table %s: added columns %s (the table predates them)", name, [f.name for f in missing])
        if renamed:
            log.warning("table %s: columns %s have their old names; read renamed until a stage upgrades the table", name, renamed)
        self._renamed[name] = renamed
        self._current.add(name)
        self._ensure_fence(name)

    def _contract_diff(self, name: str, schema: StructType, have: set[str]) -> tuple[list[StructField], dict[str, str]]:
        """(contract fields the table lacks, {old: new} of those it has under an old name: not missing)."""
        renamed = {old: new for old, new in RENAMED.get(name, {}).items() if old in have and new not in have}
        return [f for f in schema.fields if f.name not in have and f.name not in renamed.values()], renamed

    def upgrade(self, name: str) -> dict[str, str]:
        """Rename the columns that the table still has under an old name (tables.RENAMED), in one commit
        that rewrites the table (the old versions stay in its history); returns what was renamed. Called
        by the stages that write the table (LLMJob.recover, maintain) while they hold its lease, so no
        writer of the old layout commits between the read and the rewrite."""
        self.create(name)
        renamed = self._renamed[name]
        if renamed:
            self._check()
            self._rename_columns(name, renamed)
            self._renamed[name] = {}
            log.warning("table %s: renamed columns %s", name, renamed)
        return renamed

    @abstractmethod
    def _rename_columns(self, name: str, renamed: dict[str, str]) -> None: ...

    @abstractmethod
    def _create(self, name: str, schema: StructType) -> tuple[list[StructField], dict[str, str]]:
        """Create the table if absent, add the fields of `schema` it lacks; returns those fields and the
        columns it has under an old name (_contract_diff)."""

    # ---- reads --------------------------------------------------------------------------------------
    def read(self, name: str) -> DataFrame:
        """The current snapshot as a Spark DataFrame (pinned to one version)."""
        self.create(name)
        df = self._read(name, self._renamed[name])
        for old, new in self._renamed[name].items():
            df = df.withColumnRenamed(old, new)
        return df

    @abstractmethod
    def _read(self, name: str, renamed: dict[str, str]) -> DataFrame:
        """The snapshot with the table's own column names (`renamed`: old -> contract name)."""

    def version(self, name: str) -> int:
        self.create(name)
        return self._version(name)

    @abstractmethod
    def _version(self, name: str) -> int: ...

    def history(self, name: str) -> list[dict[str, Any]]:
        """Commits newest first: version, timestamp, operation, parameters."""
        self.create(name)
        return self._history(name)

    @abstractmethod
    def _history(self, name: str) -> list[dict[str, Any]]: ...

    # ---- upkeep -------------------------------------------------------------------------------------
    @abstractmethod
    def file_stats(self, name: str) -> dict[str, int]:
        """Data files, bytes and rows of the current version (from the log: no data is read on delta-rs)."""

    @abstractmethod
    def compact(self, name: str, target_bytes: int, *, run_id: str, stage: str) -> dict[str, int]:
        """Rewrite the table's small files into files of about target_bytes (OPTIMIZE): one commit, the same
        rows; older versions stay readable until vacuumed. Returns files_removed, files_added."""

    def vacuum(self, name: str, retention_hours: int) -> int | None:
        """Delete data files that no version within retention_hours references, including files that killed
        writers left without a commit; returns how many (None where Delta did not log it). Under Delta's
        168 h default its safety check is turned off for this call only: readers or writers still on an
        older version would lose files."""
        return self._vacuum(name, retention_hours, enforce=retention_hours >= 168)

    @abstractmethod
    def _vacuum(self, name: str, retention_hours: int, enforce: bool) -> int | None: ...

    # ---- writes -------------------------------------------------------------------------------------
    def append(self, df: DataFrame, name: str, *, run_id: str, stage: str, chunk: str = "0") -> int:
        """Append df; idempotent per (table, stage, run, chunk[, partition]). Returns rows written."""
        self._check()
        self.create(name)
        return self._append(self._conform(df, name), name, self._app_id(name, stage, run_id, chunk))

    @abstractmethod
    def _append(self, df: DataFrame, name: str, app: str) -> int:
        """Append the conformed df at most once per app id; returns the rows written."""

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
            return self._upsert_changed(delta, existing, name, run_id=run_id, stage=stage)
        finally:
            delta.unpersist()

    @abstractmethod
    def _upsert_changed(self, delta: DataFrame, existing: DataFrame, name: str, *, run_id: str, stage: str) -> MergeResult:
        """Commit the rows of `delta` (new or changed against `existing`, a snapshot) by key."""

    @abstractmethod
    def _merge_rows(self, df: DataFrame, name: str, *, run_id: str, stage: str) -> None:
        """Upsert df on the table's keys, every row written (no change detection)."""

    def delete(self, keys: DataFrame, name: str, *, run_id: str, stage: str) -> int:
        """Delete the rows whose keys appear in `keys` (a DataFrame with at least the table's key columns).
        Returns the rows deleted; commits nothing when none match."""
        self._check()
        self.create(name)
        k = list(KEYS[name])
        doomed = self.read(name).select(*k).join(keys.select(*k).distinct(), k, "left_semi").persist(StorageLevel.MEMORY_AND_DISK)
        try:
            n = doomed.count()
            if n:
                self._delete_keys(doomed, name, run_id=run_id, stage=stage)
            return n
        finally:
            doomed.unpersist()

    @abstractmethod
    def _delete_keys(self, doomed: DataFrame, name: str, *, run_id: str, stage: str) -> None:
        """Delete the stored rows with the (distinct, stored) keys in `doomed`."""

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
            self._replace_rows(self._conform(keep, name), name, run_id=run_id, stage=stage)
            return int(removed)
        finally:
            counts.unpersist()

    @abstractmethod
    def _replace_rows(self, keep: DataFrame, name: str, *, run_id: str, stage: str) -> None:
        """In one commit per partition of keys: delete every stored row whose key is in `keep` (one row per
        key), insert `keep`."""

    # ---- fencing (udfs.rs_table: FENCE_APP) -----------------------------------------------------------
    def take_fences(self, names: list[str], taken_over: set[str]) -> dict[str, int]:
        """The fence epochs this stage writes its leased tables under (udfs.rs_table): a table whose lease
        this run took over from another holder (expired, or dead by its pid) gets the next epoch, so no
        commit of that holder, executors included, lands from now on; the others keep theirs (the holder
        before released its lease after its last commit). A table created later is fenced as it is made."""
        self._fenced, self._taken_over = set(names), set(taken_over)
        for name in names:
            if self.exists(name):
                self.create(name)
        return dict(self.fences)

    def retire_fences(self) -> None:
        """Move on the fence of every table this stage fenced: no commit of its own handles lands any more."""
        for name in self.fences:
            self.fences[name] = self._take_fence(name)

    def drop_fences(self) -> None:
        self.fences, self._fenced, self._taken_over = {}, set(), set()

    def _ensure_fence(self, name: str) -> None:
        if name in self._fenced and name not in self.fences:
            self.fences[name] = self._take_fence(name) if name in self._taken_over else self._read_fence(name)

    @abstractmethod
    def _read_fence(self, name: str) -> int: ...

    @abstractmethod
    def _take_fence(self, name: str) -> int: ...

    # ---- small driver-side tables (run records, leases) ---------------------------------------------
    def rows(self, name: str, where: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """The rows of a small table (equality filters in `where`) as dicts, timestamps in UTC."""
        self.create(name)
        return self._rows(name, where)

    @abstractmethod
    def _rows(self, name: str, where: dict[str, Any] | None) -> list[dict[str, Any]]: ...

    def upsert_where(self, rows: list[dict[str, Any]], name: str, when: str, keep: dict[str, str] | None = None) -> None:
        """A compare-and-set on a small table: insert rows whose key is absent, update a stored row only
        where the SQL predicate `when` (over t. the stored row, s. the new one) holds on the latest version;
        an updated row's columns in `keep` get their SQL expression (over t. and s.) instead of s.'s value."""
        self.create(name)
        self._upsert_where(rows, name, when, keep or {})

    @abstractmethod
    def _upsert_where(self, rows: list[dict[str, Any]], name: str, when: str, keep: dict[str, str]) -> None: ...

    def delete_where(self, rows: list[dict[str, Any]], name: str, when: str) -> None:
        """Delete the stored rows keyed as in `rows` where the SQL predicate `when` holds (t. stored, s. given)."""
        self.create(name)
        self._delete_where(rows, name, when)

    @abstractmethod
    def _delete_where(self, rows: list[dict[str, Any]], name: str, when: str) -> None: ...

    def write_rows(self, rows: list[dict[str, Any]], name: str, *, run_id: str, stage: str) -> None:
        """Upsert a few driver-side rows (run records): no Spark job on the rs backend."""
        self.create(name)
        self._write_rows(rows, name, run_id=run_id, stage=stage)

    @abstractmethod
    def _write_rows(self, rows: list[dict[str, Any]], name: str, *, run_id: str, stage: str) -> None: ...

    def _app_id(self, name: str, stage: str, run_id: str, part: str) -> str:
        """The app transaction id of one write (a task appends its partition number)."""
        return f"{self.physical(name)}:{stage}:{run_id}:{part}"

    def _check(self) -> None:
        if self.guard:
            self.guard()

    def _conform(self, df: DataFrame, name: str) -> DataFrame:
        """Select the contract's columns in order, cast to its types; fail on missing columns."""
        if self._renamed.get(name):
            raise ValueError(f"table {name} still has the columns {self._renamed[name]} under their old names: run maintain (or the stage that writes it) to upgrade it")
        schema = SCHEMAS[name]
        missing = [f.name for f in schema.fields if f.name not in df.columns]
        if missing:
            raise ValueError(f"table {name}: DataFrame lacks columns {missing}")
        return df.select(*[F.col(f.name).cast(f.dataType).alias(f.name) for f in schema.fields])


class RsStore(TableStore):
    """delta-rs: the driver reads and inspects tables itself; Spark tasks commit their own partitions
    through RsTable, small tables are written from the driver with no Spark job."""

    backend = "rs"

    def __init__(self, spark: SparkSession, conf: Config):
        if conf.tables.catalog:
            raise ValueError("tables.catalog names metastore tables, which need delta.backend=spark")
        super().__init__(spark, conf)

    def rs_table(self, name: str) -> RsTable:
        """The picklable delta-rs handle of a table, for executors that commit their own chunks; it carries
        the table's fence while a stage holds one, so every commit through it is conditional on it."""
        return RsTable(
            uri=self.location(name),
            schema=arrow_schema(SCHEMAS[name]),
            storage_options=dict(self.conf.delta.storage_options),
            retries=self.conf.delta.commit_retries,
            fence=self.fences.get(name),
        )

    def _take_fence(self, name: str) -> int:
        return self.rs_table(name).take_fence()

    def _read_fence(self, name: str) -> int:
        return self.rs_table(name).fence_epoch()

    def _commit_tasks(self, df: DataFrame, name: str, app: str, keys: tuple[str, ...] | None = None, op: str = "merge") -> int:
        """Each partition of df commits itself (commit_partitions); returns the rows committed."""
        results = df.mapInArrow(commit_partitions(self.rs_table(name), app, keys, op), _RESULT_SCHEMA).collect()
        return sum(r["rows"] for r in results)

    def _few_partitions(self, df: DataFrame, keys) -> DataFrame:
        # Few partitions: each is one delta-rs MERGE commit, and concurrent MERGEs retry on conflict.
        return df.repartition(max(1, min(4, self.conf.spark.shuffle_partitions)), *keys)

    def _arrow(self, rows: list[dict[str, Any]], name: str) -> pa.Table:
        return pa.Table.from_pylist(rows, schema=arrow_schema(SCHEMAS[name]))

    def exists(self, name: str) -> bool:
        from deltalake import DeltaTable

        return DeltaTable.is_deltatable(self.location(name), storage_options=self.conf.delta.storage_options or None)

    def _create(self, name: str, schema: StructType) -> list:
        from deltalake import DeltaTable
        from deltalake.schema import Schema

        opts = self.conf.delta.storage_options or None
        if not DeltaTable.is_deltatable(self.location(name), storage_options=opts):
            DeltaTable.create(self.location(name), schema=arrow_schema(schema), mode="ignore", storage_options=opts)
        table = DeltaTable(self.location(name), storage_options=opts)
        missing, renamed = self._contract_diff(name, schema, {f.name for f in table.schema().fields})
        if missing:
            table.alter.add_columns(Schema.from_arrow(arrow_schema(StructType(missing))).fields)
        return missing, renamed

    def _rename_columns(self, name: str, renamed: dict[str, str]) -> None:
        from deltalake import write_deltalake

        table = self.rs_table(name)
        data = table.open().to_pyarrow_table()
        data = table.conform(data.rename_columns([renamed.get(c, c) for c in data.column_names]))
        write_deltalake(table.uri, data, mode="overwrite", schema_mode="overwrite", storage_options=table.storage_options or None)

    def _read(self, name: str, renamed: dict[str, str]) -> DataFrame:
        uris = self.rs_table(name).open().file_uris()
        if not uris:
            return self.spark.createDataFrame([], SCHEMAS[name])
        old = {new: o for o, new in renamed.items()}  # Parquet columns are matched by the files' own names
        schema = StructType([StructField(old.get(f.name, f.name), f.dataType, f.nullable) for f in SCHEMAS[name].fields])
        return self.spark.read.schema(schema).parquet(*uris)

    def _version(self, name: str) -> int:
        return self.rs_table(name).open().version()

    def _history(self, name: str) -> list[dict[str, Any]]:
        return [
            {"version": h.get("version"), "timestamp": h.get("timestamp"), "operation": h.get("operation"), "parameters": h.get("operationParameters")}
            for h in self.rs_table(name).open().history()
        ]

    def file_stats(self, name: str) -> dict[str, int]:
        import pyarrow.compute as pc

        adds = pa.table(self.rs_table(name).open().get_add_actions(flatten=True))
        rows = pc.sum(adds["num_records"]).as_py() if adds.num_rows else 0
        if adds.num_rows and adds["num_records"].null_count:  # a file without stats: count the rows
            rows = self.read(name).count()
        return {"files": adds.num_rows, "bytes": pc.sum(adds["size_bytes"]).as_py() or 0, "rows": rows or 0}

    def compact(self, name: str, target_bytes: int, *, run_id: str, stage: str) -> dict[str, int]:
        from deltalake import CommitProperties

        props = CommitProperties(custom_metadata={"instructlake.run_id": run_id, "instructlake.stage": stage})
        m = self.rs_table(name).open().optimize.compact(target_size=target_bytes, commit_properties=props)
        return {"files_removed": int(m["numFilesRemoved"]), "files_added": int(m["numFilesAdded"])}

    def _vacuum(self, name: str, retention_hours: int, enforce: bool) -> int | None:
        table = self.rs_table(name).open()
        # full: also files no commit ever referenced (the log-only mode sees only removed files).
        return len(table.vacuum(retention_hours=retention_hours, dry_run=False, enforce_retention_duration=enforce, full=True))

    def _append(self, df: DataFrame, name: str, app: str) -> int:
        return self._commit_tasks(df, name, app)

    def _upsert_changed(self, delta: DataFrame, existing: DataFrame, name: str, *, run_id: str, stage: str) -> MergeResult:
        # New rows are appended by the tasks (no scan of the table) and changed ones merged: Delta never
        # makes two appends conflict, but a stage writes a table only under its fence, so no other run's
        # commit lands meanwhile (udfs.rs_table).
        keys = list(KEYS[name])
        new = delta.join(existing.select(*keys), keys, "left_anti")
        updates = delta.join(existing.select(*keys), keys, "left_semi")
        n_updates = updates.count()
        # A merge's rows are worked out afresh on every call (it is idempotent by content), so its commit
        # ids carry a per-call nonce: a repeated call with the same run id (a repaired job) must commit
        # what the first call did not, while a retried task of this call still commits at most once.
        nonce = uuid.uuid4().hex[:12]
        inserted = self.append(new, name, run_id=run_id, stage=stage, chunk=f"insert-{nonce}") if new.count() else 0
        if n_updates:
            self._merge_rows(updates, name, run_id=run_id, stage=f"{stage}-{nonce}")
        return MergeResult(inserted=inserted, updated=n_updates)

    def _merge_rows(self, df: DataFrame, name: str, *, run_id: str, stage: str) -> None:
        keys = KEYS[name]
        self._commit_tasks(self._few_partitions(df, keys), name, self._app_id(name, stage, run_id, "update"), keys)

    def _delete_keys(self, doomed: DataFrame, name: str, *, run_id: str, stage: str) -> None:
        k = tuple(KEYS[name])
        app = self._app_id(name, stage, run_id, f"delete-{uuid.uuid4().hex[:12]}")
        self._commit_tasks(self._few_partitions(doomed, k), name, app, k, "delete")

    def _replace_rows(self, keep: DataFrame, name: str, *, run_id: str, stage: str) -> None:
        k = tuple(KEYS[name])
        app = self._app_id(name, stage, run_id, f"dedup-{uuid.uuid4().hex[:12]}")
        self._commit_tasks(self._few_partitions(keep, k), name, app, k, "replace")

    def _rows(self, name: str, where: dict[str, Any] | None) -> list[dict[str, Any]]:
        return self.rs_table(name).rows(where)

    def _upsert_where(self, rows: list[dict[str, Any]], name: str, when: str, keep: dict[str, str]) -> None:
        self.rs_table(name).upsert_where(self._arrow(rows, name), KEYS[name], when, keep)

    def _delete_where(self, rows: list[dict[str, Any]], name: str, when: str) -> None:
        self.rs_table(name).delete(self._arrow(rows, name), KEYS[name], when=when)

    def _write_rows(self, rows: list[dict[str, Any]], name: str, *, run_id: str, stage: str) -> None:
        self.rs_table(name).merge(self._arrow(rows, name), KEYS[name])


class SparkStore(TableStore):
    """delta-spark: path tables under run.lake_root, or metastore tables (tables.catalog); keyed writes are
    Delta MERGEs, retried on commit conflicts, and appends use Delta's idempotent writes."""

    backend = "spark"

    def _delta_table(self, name: str):
        from delta.tables import DeltaTable

        loc = self.location(name)
        return DeltaTable.forName(self.spark, loc) if self.conf.tables.catalog else DeltaTable.forPath(self.spark, loc)

    def _load(self, reader, name: str) -> DataFrame:
        loc = self.location(name)
        return reader.table(loc) if self.conf.tables.catalog else reader.load(loc)

    def _merge_into(self, name: str, source: DataFrame, cond: str | None = None):
        """A MERGE builder of `source` (s.) into the table (t.), on its keys unless `cond` is given."""
        return self._delta_table(name).alias("t").merge(source.alias("s"), cond or _on(KEYS[name]))

    def exists(self, name: str) -> bool:
        from delta.tables import DeltaTable

        loc = self.location(name)
        if self.conf.tables.catalog:
            return self.spark.catalog.tableExists(loc)
        return DeltaTable.isDeltaTable(self.spark, loc)

    def _create(self, name: str, schema: StructType) -> list:
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
        missing, renamed = self._contract_diff(name, schema, set(self._delta_table(name).toDF().columns))
        if missing:
            target = loc if t.catalog else f"delta.`{loc}`"
            # Added columns stay nullable: the rows already there have no value for them.
            self.spark.sql(f"ALTER TABLE {target} ADD COLUMNS ({_columns_ddl(missing, not_null=False)})")
        return missing, renamed

    def _rename_columns(self, name: str, renamed: dict[str, str]) -> None:
        df = self._read(name, renamed)
        for old, new in renamed.items():
            df = df.withColumnRenamed(old, new)
        # Delta reads the pinned snapshot's files while it writes the new ones, so a table can replace itself.
        writer = df.write.format("delta").mode("overwrite").option("overwriteSchema", "true")
        writer.saveAsTable(self.location(name)) if self.conf.tables.catalog else writer.save(self.location(name))

    def _read(self, name: str, renamed: dict[str, str]) -> DataFrame:
        return self._load(self.spark.read.format("delta").option("versionAsOf", self._version(name)), name)

    def _version(self, name: str) -> int:
        return self._delta_table(name).history(1).select("version").first()[0]

    def _history(self, name: str) -> list[dict[str, Any]]:
        rows = self._delta_table(name).history().select("version", "timestamp", "operation", "operationParameters").collect()
        return [{"version": r[0], "timestamp": r[1], "operation": r[2], "parameters": r[3]} for r in rows]

    def file_stats(self, name: str) -> dict[str, int]:
        detail = self._delta_table(name).detail().select("numFiles", "sizeInBytes").first()
        return {"files": detail[0], "bytes": detail[1], "rows": self.read(name).count()}

    def compact(self, name: str, target_bytes: int, *, run_id: str, stage: str) -> dict[str, int]:
        self.spark.conf.set("spark.databricks.delta.optimize.maxFileSize", str(target_bytes))
        m = self._delta_table(name).optimize().executeCompaction().select("metrics.numFilesRemoved", "metrics.numFilesAdded").first()
        return {"files_removed": int(m[0] or 0), "files_added": int(m[1] or 0)}

    def _vacuum(self, name: str, retention_hours: int, enforce: bool) -> int | None:
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

    def _append(self, df: DataFrame, name: str, app: str) -> int:
        # Delta's idempotent writes: a txnAppId/txnVersion pair is applied at most once.
        before = self.version(name)
        writer = df.write.format("delta").mode("append").option("txnAppId", app).option("txnVersion", 1)
        loc = self.location(name)
        writer.saveAsTable(loc) if self.conf.tables.catalog else writer.save(loc)
        last = self._delta_table(name).history(1).select("version", "operationMetrics").first()
        return int((last[1] or {}).get("numOutputRows", 0)) if last[0] != before else 0

    def _upsert_changed(self, delta: DataFrame, existing: DataFrame, name: str, *, run_id: str, stage: str) -> MergeResult:
        # One MERGE, never an append: it reads the table, so Delta fails it when another writer's commit
        # added rows meanwhile, and the retry matches them (updates, never a second row of a key). An
        # empty source commits nothing: an identical re-run leaves no version.
        if not delta.count():
            return MergeResult(inserted=0, updated=0)
        self._merge_rows(delta, name, run_id=run_id, stage=stage)
        metrics = self._delta_table(name).history(1).select("operationMetrics").first()[0] or {}
        return MergeResult(inserted=int(metrics.get("numTargetRowsInserted", 0)), updated=int(metrics.get("numTargetRowsUpdated", 0)))

    def _merge_rows(self, df: DataFrame, name: str, *, run_id: str, stage: str) -> None:
        self._retry(lambda: self._merge_into(name, df).whenMatchedUpdateAll().whenNotMatchedInsertAll().execute())

    def _read_fence(self, name: str) -> int:
        return 0  # delta-spark's own writes are conflict-checked MERGEs: they need no fence of their own

    def _take_fence(self, name: str) -> int:
        """The next epoch, recorded as the fence app transaction by an empty idempotent append. delta-spark's
        own writes here are MERGEs that Delta conflict-checks; the fence stops delta-rs writers (executors
        of a run on the other backend) on path tables. Metastore tables have no delta-rs writer: 0."""
        if self.conf.tables.catalog:
            return 0
        from deltalake import DeltaTable

        from instructlake.udfs.rs_table import EPOCH_BITS, FENCE_APP, fence_epoch

        recorded = DeltaTable(self.location(name), storage_options=self.conf.delta.storage_options or None).transaction_version(FENCE_APP)
        epoch = fence_epoch(recorded) + 1
        empty = self.spark.createDataFrame([], SCHEMAS[name])
        empty.write.format("delta").mode("append").option("txnAppId", FENCE_APP).option("txnVersion", epoch << EPOCH_BITS).save(self.location(name))
        return epoch

    def _delete_keys(self, doomed: DataFrame, name: str, *, run_id: str, stage: str) -> None:
        self._retry(lambda: self._merge_into(name, doomed).whenMatchedDelete().execute())

    def _replace_rows(self, keep: DataFrame, name: str, *, run_id: str, stage: str) -> None:
        # As RsTable.replace: each row twice, keyed (matches and deletes every stored copy) and with null
        # keys (matches nothing, is inserted).
        k = list(KEYS[name])
        marked = keep
        for c in k:
            marked = marked.withColumn(f"__k_{c}", F.col(c))
        unmarked = keep
        for c in k:
            unmarked = unmarked.withColumn(f"__k_{c}", F.lit(None).cast(keep.schema[c].dataType))
        source = marked.unionByName(unmarked)
        values = {f"`{c}`": f"s.`{c}`" for c in keep.columns}
        self._retry(lambda: self._merge_into(name, source, _on(k, "__k_")).whenMatchedDelete().whenNotMatchedInsert(values=values).execute())

    def _small(self, name: str) -> RsTable | None:
        """The run records and leases of a path lake go through delta-rs, as on the rs backend: a lease's
        compare-and-set and a run record are a few rows, and as Spark jobs they cost seconds a stage run
        (a lease taken, renewed and released, two run records). Metastore tables stay with Spark."""
        if self.conf.tables.catalog or name not in SMALL_TABLES:
            return None
        return RsTable(self.location(name), arrow_schema(SCHEMAS[name]), dict(self.conf.delta.storage_options), self.conf.delta.commit_retries)

    def _rows(self, name: str, where: dict[str, Any] | None) -> list[dict[str, Any]]:
        if small := self._small(name):
            return small.rows(where)
        # The latest snapshot, unpinned: these reads decide a compare-and-set that Delta re-checks anyway.
        df = self._load(self.spark.read.format("delta"), name)
        for col, value in (where or {}).items():
            df = df.filter(F.col(col) == value)
        return [
            {k: v.astimezone(dt.timezone.utc) if isinstance(v, dt.datetime) else v for k, v in r.asDict().items()}
            for r in df.collect()
        ]

    def _upsert_where(self, rows: list[dict[str, Any]], name: str, when: str, keep: dict[str, str]) -> None:
        if small := self._small(name):
            return small.upsert_where(pa.Table.from_pylist(rows, schema=small.schema), KEYS[name], when, keep)
        values = {f"`{c}`": keep.get(c, f"s.`{c}`") for c in SCHEMAS[name].fieldNames()}
        self._retry(lambda: self._merge_small(rows, name).whenMatchedUpdate(condition=when, set=values).whenNotMatchedInsertAll().execute())

    def _delete_where(self, rows: list[dict[str, Any]], name: str, when: str) -> None:
        if small := self._small(name):
            small.delete(pa.Table.from_pylist(rows, schema=small.schema), KEYS[name], when=when)
            return
        self._retry(lambda: self._merge_small(rows, name).whenMatchedDelete(condition=when).execute())

    def _merge_small(self, rows: list[dict[str, Any]], name: str):
        return self._merge_into(name, self.spark.createDataFrame(rows, SCHEMAS[name]))

    def _write_rows(self, rows: list[dict[str, Any]], name: str, *, run_id: str, stage: str) -> None:
        if small := self._small(name):
            small.merge(pa.Table.from_pylist(rows, schema=small.schema), KEYS[name])
            return
        self._merge_rows(self.spark.createDataFrame(rows, SCHEMAS[name]), name, run_id=run_id, stage=stage)

    def _retry(self, op):
        """Run a delta-spark MERGE, again on a commit conflict (Delta's optimistic concurrency: a concurrent
        writer changed what this one read); the retried operation reads the new version."""
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


SMALL_TABLES = ("runs", "leases")  # driver-side bookkeeping, written a few rows at a time by every run


def open_store(spark: SparkSession, conf: Config, backend: str) -> TableStore:
    """The store of `backend` ('rs' or 'spark', as session.choose_backend answers)."""
    classes = {c.backend: c for c in (RsStore, SparkStore)}
    if backend not in classes:
        raise ValueError(f"unknown delta backend {backend!r}")
    return classes[backend](spark, conf)
