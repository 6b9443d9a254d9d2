"""Sinks: where the engine tasks of an LLM stage commit each chunk (udfs.generation.run_partition), and the
staging files' layout that the driver merges (instructlake.jobs.llm.staging).

- DeltaSink (delta-rs backend): the task commits each chunk itself with RsTable.append/merge, tagged with
  an app id `<table>:<stage>:<run>:<job nonce>:<partition>-<chunk>`, so a retried task skips the chunks it
  already committed and a commit race is retried.
- StagingSink (any backend; the only choice with delta-spark, whose writer exists only on the driver): the
  task writes each chunk as a Parquet file under `<root>/<table>/` (temp name + rename, so a file is whole
  or absent); the driver merges the files into the tables on their keys.

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
        return any(self.tables[n].committed(self._app(n, chunk_key)) for n in self.order)

    def commit(self, chunk_key: str, rows: Mapping[str, list[dict[str, Any]]]) -> bool:
        wrote = False
        for name in self.order:
            if not rows.get(name):
                continue
            table, keys = self.tables[name], self.keys[name]
            data = pa.Table.from_pylist(rows[name], schema=table.schema)
            app = self._app(name, chunk_key)
            wrote |= table.merge(data, keys, app) if keys else table.append(data, app)
        return wrote


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

        for name in self.order:
            fs, path = self._path(name, chunk_key)
            if fs.get_file_info(path).type == pafs.FileType.File:
                return True
        return False

    def commit(self, chunk_key: str, rows: Mapping[str, list[dict[str, Any]]]) -> bool:
        wrote = False
        for name in self.order:
            if rows.get(name):
                fs, path = self._path(name, chunk_key)
                stage_file(fs, path, pa.Table.from_pylist(rows[name], schema=self.schemas[name]))
                wrote = True
        return wrote


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
