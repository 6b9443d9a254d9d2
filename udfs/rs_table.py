"""The delta-rs table handle that Spark tasks commit through: the executor half of the store
(instructlake.jobs.store holds the driver half, and every other Delta access).

It pickles into tasks as a URI, an Arrow schema and options (no live objects), and imports only pyarrow
and deltalake, so an executor that commits a chunk never imports the driver side.

Every commit is decided on one snapshot: whether its app id is already recorded, whether this run still
holds the table's fence, and the commit itself, which carries both as app transactions. Delta's conflict
check then makes a concurrent commit of the same app id, or a concurrent fence change, fail this one; the
retry reads the new snapshot and skips (the chunk is there) or refuses (`Fenced`).

The fence: a run that takes a table's lease over from another holder takes the table's next epoch
(`take_fence`: an empty commit recording the app transaction `instructlake.fence` at version
epoch << EPOCH_BITS), and every commit of a run's handles (`fence=epoch`) requires its epoch on the
snapshot it commits against and records it again. A run whose lease was
taken over (its driver stalled past the TTL, a clock off, a wrongly dead-marked holder) can therefore not
land a single row after the new holder took the table, whatever the leases table says.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

FENCE_APP = "instructlake.fence"
# A fence version is epoch << EPOCH_BITS; the low bits leave room for a writer's own sequence.
EPOCH_BITS = 20


class Fenced(RuntimeError):
    """A commit of a run that no longer holds the table: another run took its fence (and lease) since."""


def fence_epoch(version: int | None) -> int:
    """The epoch of a recorded fence version (0: no run ever fenced the table)."""
    return (version or 0) >> EPOCH_BITS


@dataclass(frozen=True)
class RsTable:
    """A delta-rs table handle that pickles into Spark tasks (a URI, a schema, options: no live objects).
    With `fence`, each commit requires that epoch to be the table's (module docstring)."""

    uri: str
    schema: pa.Schema
    storage_options: dict[str, str]
    retries: int
    fence: int | None = None

    def open(self):
        """The table at its latest version (a live deltalake.DeltaTable)."""
        from deltalake import DeltaTable

        return DeltaTable(self.uri, storage_options=self.storage_options or None)

    def fence_epoch(self) -> int:
        return fence_epoch(self.open().transaction_version(FENCE_APP))

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
        from deltalake import write_deltalake

        data = self.conform(data)
        return self._commit(lambda table, props: write_deltalake(table, data, mode="append", commit_properties=props), app_id)

    def merge(self, data: pa.Table, keys: tuple[str, ...], app_id: str | None = None) -> bool:
        """Upsert `data` on `keys` (update every column when matched, insert when not)."""
        data = self.conform(data)

        def commit(table, props) -> None:
            merger = table.merge(data, predicate=_on(keys), source_alias="s", target_alias="t", commit_properties=props)
            merger.when_matched_update_all().when_not_matched_insert_all().execute()

        return self._commit(commit, app_id)

    def delete(self, data: pa.Table, keys: tuple[str, ...], app_id: str | None = None, when: str | None = None) -> bool:
        """Delete the rows whose `keys` appear in `data` (a MERGE whose only clause deletes matches), only
        those where the SQL predicate `when` (over t. and s.) holds when it is given."""
        cols = list(keys) if when is None else self.schema.names
        data = data.select(cols).cast(pa.schema([self.schema.field(k) for k in cols]))

        def commit(table, props) -> None:
            merger = table.merge(data, predicate=_on(keys), source_alias="s", target_alias="t", commit_properties=props)
            merger.when_matched_delete(predicate=when).execute()

        return self._commit(commit, app_id)

    def upsert_where(self, data: pa.Table, keys: tuple[str, ...], when: str, keep: dict[str, str] | None = None) -> None:
        """Insert the rows of `data` whose keys are absent; update the matched ones only where the SQL
        predicate `when` holds, each column from s. but those in `keep` (SQL over t. and s.). Evaluated
        against the version the commit lands on: a concurrent commit makes this one fail and be retried,
        so the predicate always sees the latest row (a compare-and-set)."""
        data = self.conform(data)
        values = {c: (keep or {}).get(c, f"s.`{c}`") for c in self.schema.names}

        def commit(table, props) -> None:
            merger = table.merge(data, predicate=_on(keys), source_alias="s", target_alias="t", commit_properties=props)
            merger.when_matched_update(values, predicate=when).when_not_matched_insert_all().execute()

        self._commit(commit, None)

    def replace(self, data: pa.Table, keys: tuple[str, ...], app_id: str | None = None) -> bool:
        """In one commit, delete every row whose keys appear in `data` and insert `data` (one row per key).
        The source holds each row twice: keyed (matches, deletes all copies) and with null keys (matches
        nothing, is inserted)."""
        data = self.conform(data)
        marks = [f"__k_{k}" for k in keys]
        keyed = data
        unkeyed = data
        for k, m in zip(keys, marks):
            keyed = keyed.append_column(m, data[k])
            unkeyed = unkeyed.append_column(m, pa.nulls(data.num_rows, data.schema.field(k).type))
        source = pa.concat_tables([keyed, unkeyed])
        predicate = " AND ".join(f"t.`{k}` = s.`{m}`" for k, m in zip(keys, marks))

        def commit(table, props) -> None:
            merger = table.merge(source, predicate=predicate, source_alias="s", target_alias="t", commit_properties=props)
            merger.when_matched_delete().when_not_matched_insert({c: f"s.`{c}`" for c in self.schema.names}).execute()

        return self._commit(commit, app_id)

    def take_fence(self) -> int:
        """Make the caller the table's only writer: record the next epoch (an empty commit whose app
        transaction is the fence); from then on commits of handles with an older epoch fail. Returns it."""
        from deltalake import CommitProperties, Transaction, write_deltalake

        empty = self.schema.empty_table()

        def commit(table) -> int:
            epoch = fence_epoch(table.transaction_version(FENCE_APP)) + 1
            props = CommitProperties(app_transactions=[Transaction(app_id=FENCE_APP, version=epoch << EPOCH_BITS)])
            write_deltalake(table, empty, mode="append", commit_properties=props)
            return epoch

        return self._retry(commit)

    def rows(self, where: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        # Filtered here: delta-rs's string_view columns match no pyarrow filter kernel for a str.
        where = where or {}
        return [r for r in self.open().to_pyarrow_table().to_pylist() if all(r[k] == v for k, v in where.items())]

    def _commit(self, body, app_id: str | None) -> bool:
        """body(table, commit_properties) on one snapshot, after the app id's and the fence's checks on it
        (module docstring); False when the app id was already committed."""
        from deltalake import CommitProperties, Transaction

        def attempt(table) -> bool:
            if app_id and table.transaction_version(app_id) is not None:
                return False
            txns = [Transaction(app_id=app_id, version=1)] if app_id else []
            if self.fence is not None:
                recorded = table.transaction_version(FENCE_APP)
                if fence_epoch(recorded) != self.fence:
                    raise Fenced(
                        f"{self.uri}: this run writes as epoch {self.fence}, the table is epoch {fence_epoch(recorded)}: "
                        "another run took the table (and its lease) since; this commit is refused"
                    )
                txns.append(Transaction(app_id=FENCE_APP, version=recorded or 0))
            body(table, CommitProperties(app_transactions=txns) if txns else None)
            return True

        return self._retry(attempt)

    def _retry(self, attempt):
        """attempt(table) on a fresh snapshot, again after a commit conflict (jittered backoff)."""
        from deltalake.exceptions import CommitFailedError

        for n in range(self.retries + 1):
            try:
                return attempt(self.open())
            except CommitFailedError:
                if n == self.retries:
                    raise
                # Jittered backoff: concurrent tasks that collided should not collide again in lockstep.
                time.sleep(min(2.0, 0.05 * 2**n) * (0.5 + random.random()))
        raise AssertionError("unreachable")


def _on(keys: tuple[str, ...]) -> str:
    return " AND ".join(f"t.`{k}` = s.`{k}`" for k in keys)


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
