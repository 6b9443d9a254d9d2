"""The delta-rs table handle that Spark tasks commit through: the executor half of the store
(instructlake.jobs.store holds the driver half, and every other Delta access).

It pickles into tasks as a URI, an Arrow schema and options (no live objects), and imports only pyarrow
and deltalake, so an executor that commits a chunk never imports the driver side.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa


@dataclass(frozen=True)
class RsTable:
    """A delta-rs table handle that pickles into Spark tasks (a URI, a schema, options: no live objects)."""

    uri: str
    schema: pa.Schema
    storage_options: dict[str, str]
    retries: int

    def open(self):
        """The table at its latest version (a live deltalake.DeltaTable)."""
        from deltalake import DeltaTable

        return DeltaTable(self.uri, storage_options=self.storage_options or None)

    def committed(self, app_id: str) -> bool:
        return self.open().transaction_version(app_id) is not None

    def num_rows(self) -> int:
        """Rows in the current version, from the log's per-file counts (no data read)."""
        actions = pa.table(self.open().get_add_actions(flatten=True))
        return int(sum(n or 0 for n in actions.column("num_records").to_pylist()))

    def conform(self, data: pa.Table) -> pa.Table:
        return data.select(self.schema.names).cast(self.schema)

    def append(self, data: pa.Table, app_id: str | None = None) -> bool:
        """Commit `data`; with an app_id, at most once ever. Returns False when it was already committed."""
        from deltalake import CommitProperties, Transaction, write_deltalake

        data = self.conform(data)
        props = CommitProperties(app_transactions=[Transaction(app_id=app_id, version=1)]) if app_id else None
        return self._retry(lambda: write_deltalake(self.uri, data, mode="append", storage_options=self.storage_options or None, commit_properties=props), app_id)

    def merge(self, data: pa.Table, keys: tuple[str, ...], app_id: str | None = None) -> bool:
        """Upsert `data` on `keys` (update every column when matched, insert when not)."""
        from deltalake import CommitProperties, Transaction

        data = self.conform(data)
        predicate = " AND ".join(f"t.`{k}` = s.`{k}`" for k in keys)
        props = CommitProperties(app_transactions=[Transaction(app_id=app_id, version=1)]) if app_id else None

        def commit() -> None:
            (
                self.open()
                .merge(data, predicate=predicate, source_alias="s", target_alias="t", commit_properties=props)
                .when_matched_update_all()
                .when_not_matched_insert_all()
                .execute()
            )

        return self._retry(commit, app_id)

    def delete(self, data: pa.Table, keys: tuple[str, ...], app_id: str | None = None, when: str | None = None) -> bool:
        """Delete the rows whose `keys` appear in `data` (a MERGE whose only clause deletes matches), only
        those where the SQL predicate `when` (over t. and s.) holds when it is given."""
        from deltalake import CommitProperties, Transaction

        cols = list(keys) if when is None else self.schema.names
        data = data.select(cols).cast(pa.schema([self.schema.field(k) for k in cols]))
        predicate = " AND ".join(f"t.`{k}` = s.`{k}`" for k in keys)
        props = CommitProperties(app_transactions=[Transaction(app_id=app_id, version=1)]) if app_id else None

        def commit() -> None:
            merger = self.open().merge(data, predicate=predicate, source_alias="s", target_alias="t", commit_properties=props)
            merger.when_matched_delete(predicate=when).execute()

        return self._retry(commit, app_id)

    def upsert_where(self, data: pa.Table, keys: tuple[str, ...], when: str) -> None:
        """Insert the rows of `data` whose keys are absent; update the matched ones only where the SQL
        predicate `when` holds. Evaluated against the version the commit lands on: a concurrent commit
        makes this one fail and be retried, so the predicate always sees the latest row (a compare-and-set)."""
        data = self.conform(data)
        predicate = " AND ".join(f"t.`{k}` = s.`{k}`" for k in keys)

        def commit() -> None:
            merger = self.open().merge(data, predicate=predicate, source_alias="s", target_alias="t")
            merger.when_matched_update_all(predicate=when).when_not_matched_insert_all().execute()

        self._retry(commit, None)

    def replace(self, data: pa.Table, keys: tuple[str, ...], app_id: str | None = None) -> bool:
        """In one commit, delete every row whose keys appear in `data` and insert `data` (one row per key).
        The source holds each row twice: keyed (matches, deletes all copies) and with null keys (matches
        nothing, is inserted)."""
        from deltalake import CommitProperties, Transaction

        data = self.conform(data)
        marks = [f"__k_{k}" for k in keys]
        keyed = data
        unkeyed = data
        for k, m in zip(keys, marks):
            keyed = keyed.append_column(m, data[k])
            unkeyed = unkeyed.append_column(m, pa.nulls(data.num_rows, data.schema.field(k).type))
        source = pa.concat_tables([keyed, unkeyed])
        predicate = " AND ".join(f"t.`{k}` = s.`{m}`" for k, m in zip(keys, marks))
        props = CommitProperties(app_transactions=[Transaction(app_id=app_id, version=1)]) if app_id else None

        def commit() -> None:
            merger = self.open().merge(source, predicate=predicate, source_alias="s", target_alias="t", commit_properties=props)
            merger.when_matched_delete().when_not_matched_insert({c: f"s.`{c}`" for c in self.schema.names}).execute()

        return self._retry(commit, app_id)

    def rows(self, where: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        # Filtered here: delta-rs's string_view columns match no pyarrow filter kernel for a str.
        where = where or {}
        return [r for r in self.open().to_pyarrow_table().to_pylist() if all(r[k] == v for k, v in where.items())]

    def _retry(self, commit, app_id: str | None) -> bool:
        from deltalake.exceptions import CommitFailedError

        for attempt in range(self.retries + 1):
            if app_id and self.committed(app_id):
                return False
            try:
                commit()
                return True
            except CommitFailedError:
                if attempt == self.retries:
                    raise
                # Jittered backoff: concurrent tasks that collided should not collide again in lockstep.
                time.sleep(min(2.0, 0.05 * 2**attempt) * (0.5 + random.random()))
        raise AssertionError("unreachable")


def commit_partitions(target: RsTable, app_prefix: str, keys: tuple[str, ...] | None, op: str = "merge"):
    """mapInArrow body: each task commits its rows once: an append without keys, else `op` on the keys
    (merge, delete or replace)."""

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from pyspark import TaskContext

        pid = TaskContext.get().partitionId()
        batches = list(batches)
        rows = sum(b.num_rows for b in batches)
        skipped = False
        if rows:
            data = pa.Table.from_batches(batches)
            app_id = f"{app_prefix}/{pid}"
            done = getattr(target, op)(data, keys, app_id) if keys else target.append(data, app_id)
            skipped = not done
        yield pa.RecordBatch.from_pylist(
            [{"partition": pid, "rows": 0 if skipped else rows, "skipped": skipped}],
            schema=pa.schema([("partition", pa.int32()), ("rows", pa.int64()), ("skipped", pa.bool_())]),
        )

    return run
