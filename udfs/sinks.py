"""Sinks: where the engine tasks of an LLM stage commit each chunk (udfs.generation.run_partition), and the
staging files' layout that the driver merges (instructlake.jobs.llm.staging).

- DeltaSink (delta-rs backend): the task commits each chunk itself with RsTable.append/merge, tagged with
  an app id `<table>:<stage>:<run>:<job nonce>:<partition>-<chunk>`, so a retried (or speculative) task
  attempt skips the chunks already committed and a commit race is retried; through handles that carry the
  stage's fence, so a run that lost its tables commits nothing (udfs.rs_table).
- StagingSink (any backend; the only choice with delta-spark, whose writer exists only on the driver): the
  task writes each chunk as a Parquet file under `<root>/<table>/` (temp name + rename, so a file is whole
  or absent); the driver merges the files into the tables on their keys.

Both write a chunk's other tables first and its main table last, always (an empty commit or file when the
chunk has no main rows): a chunk is done when its main table holds it, so a task killed between two
tables' commits redoes the chunk and loses none of its rows (the others' commits are idempotent).

Executor code: pyarrow and deltalake only, never the driver side (instructlake.jobs).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from instructlake.udfs.rs_table import RsTable

TMP_PREFIX = ".tmp-"  # staged files being written; hidden from staged_files


@dataclass(frozen=True)
class DeltaSink:
    """Commits each chunk straight into the Delta tables from the executor (delta-rs)."""

    tables: dict[str, RsTable]
    keys: dict[str, tuple[str, ...] | None]  # None: append; keys: merge (upsert)
    order: tuple[str, ...]  # main table first
    scope: str  # <stage>:<run>:<job nonce>

    def _app(self, name: str, chunk_key: str) -> str:
        return f"{name}:{self.scope}:{chunk_key}"

    def done(self, chunk_key: str) -> bool:
        main = self.order[0]
        return self.tables[main].committed(self._app(main, chunk_key))

    def commit(self, chunk_key: str, rows: Mapping[str, list[dict[str, Any]]]) -> bool:
        """Commit the chunk's rows, the main table last and always; False when it was already committed."""
        main, *others = self.order
        for name in others:
            if rows.get(name):
                self._commit(name, chunk_key, rows[name])
        return self._commit(main, chunk_key, rows.get(main) or [])

    def _commit(self, name: str, chunk_key: str, rows: list[dict[str, Any]]) -> bool:
        table, keys = self.tables[name], self.keys[name]
        data = pa.Table.from_pylist(rows, schema=table.schema)
        app = self._app(name, chunk_key)
        return table.merge(data, keys, app) if keys and rows else table.append(data, app)


def filesystem(uri: str):
    """(pyarrow filesystem, path) for a local path or a URI (s3a:// read as s3://)."""
    from pyarrow import fs as pafs

    if "://" not in uri:
        return pafs.LocalFileSystem(), str(Path(uri).expanduser().resolve())
    if uri.startswith("s3a://"):
        uri = "s3://" + uri[len("s3a://") :]
    return pafs.FileSystem.from_uri(uri)


@dataclass(frozen=True)
class StagingSink:
    """Writes each chunk as Parquet files under `<root>/<table>/` for the driver to merge."""

    root: str
    schemas: dict[str, pa.Schema]
    order: tuple[str, ...]
    scope: str  # <stage>-<run>-<job nonce>, safe in a file name

    def _path(self, name: str, chunk_key: str) -> tuple[Any, str]:
        fs, base = filesystem(self.root)
        return fs, f"{base}/{name}/{self.scope}-{chunk_key}.parquet"

    def done(self, chunk_key: str) -> bool:
        from pyarrow import fs as pafs

        fs, path = self._path(self.order[0], chunk_key)
        return fs.get_file_info(path).type == pafs.FileType.File

    def commit(self, chunk_key: str, rows: Mapping[str, list[dict[str, Any]]]) -> bool:
        """Stage the chunk's files, the main table's last and always (the chunk's done marker)."""
        main, *others = self.order
        for name in [*(n for n in others if rows.get(n)), main]:
            fs, path = self._path(name, chunk_key)
            stage_file(fs, path, pa.Table.from_pylist(rows.get(name) or [], schema=self.schemas[name]))
        return True


def stage_file(fs: Any, path: str, data: pa.Table) -> None:
    """Write `data` to `path` so that readers see the whole file or none of it: a local (or HDFS-like)
    file system gets a hidden temp name then a rename; an object store's single PUT is already atomic."""
    import pyarrow.parquet as pq
    from pyarrow import fs as pafs

    parent, name = path.rsplit("/", 1)
    fs.create_dir(parent, recursive=True)
    if isinstance(fs, pafs.LocalFileSystem) or type(fs).__name__ == "HadoopFileSystem":
        tmp = f"{parent}/{TMP_PREFIX}{uuid.uuid4().hex}-{name}"
        pq.write_table(data, tmp, filesystem=fs)
        fs.move(tmp, path)
    else:
        pq.write_table(data, path, filesystem=fs)


def remove_stale_temps(root: str, older_than_s: float) -> int:
    """Delete `stage_file` temp files under `root` older than older_than_s (left by tasks killed between
    the write and the rename); returns how many. Younger ones may belong to a task still writing."""
    from pyarrow import fs as pafs

    fs, base = filesystem(root)
    cutoff_ns = (time.time() - older_than_s) * 1e9
    removed = 0
    for info in fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True)):
        if info.type == pafs.FileType.File and info.base_name.startswith(TMP_PREFIX) and (info.mtime_ns or cutoff_ns) < cutoff_ns:
            fs.delete_file(info.path)
            removed += 1
    return removed


def staged_files(root: str, name: str) -> list[str]:
    """Staged Parquet files of one table, as URIs under `root` (what Spark reads)."""
    from pyarrow import fs as pafs

    fs, base = filesystem(root)
    selector = pafs.FileSelector(f"{base}/{name}", allow_not_found=True)
    names = sorted(i.base_name for i in fs.get_file_info(selector) if i.type == pafs.FileType.File)
    return [f"{root}/{name}/{n}" for n in names if n.endswith(".parquet") and not n.startswith((".", "_"))]
