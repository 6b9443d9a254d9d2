"""SQL over the Delta outputs without Spark: DuckDB with its delta extension, loaded from the pip package
(a plain `LOAD delta` would try to download it). Every table in tables.names that exists becomes a view
(which tables those are, and how to scan them, is the store's: jobs.store.duckdb_views)."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import duckdb

from instructlake.jobs.config import Config
from instructlake.jobs.store import duckdb_views


def _extension_file() -> Path:
    import duckdb_extension_delta

    root = Path(duckdb_extension_delta.__file__).parent / "extensions" / f"v{duckdb.__version__}"
    found = sorted(root.glob("delta.duckdb_extension"))
    if not found:
        raise FileNotFoundError(f"no DuckDB delta extension for duckdb {duckdb.__version__} under {root}")
    return found[0]


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


# Only signed extensions load: the delta extension the pip package ships is signed by DuckDB, so nothing
# unsigned is needed, and a query (or a file planted beside the package) cannot bring native code in.
# Nothing is installed or auto-loaded behind the query's back either.
_SETTINGS = {
    "allow_unsigned_extensions": "false",
    "allow_community_extensions": "false",
    "autoinstall_known_extensions": "false",
    "autoload_known_extensions": "false",
}


def connect(conf: Config) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with one view per existing Delta table; its configuration locked once set up,
    so a query cannot loosen it."""
    views = duckdb_views(conf)
    con = duckdb.connect(config=_SETTINGS)
    con.execute(f"LOAD '{_extension_file()}'")
    for name, select in views:
        con.execute(f"CREATE VIEW {_ident(name)} AS {select}")
    try:
        con.execute("SET lock_configuration = true")
    except duckdb.CatalogException:  # a DuckDB without the setting: the settings above hold all the same
        pass
    return con


def print_query(conf: Config, query: str, fmt: str = "table", max_rows: int = 40) -> int:
    """Run one query and print its result; any DuckDB error (at bind time or while rows are produced) is
    one line on stderr and exit status 1."""
    try:
        con = connect(conf)
    except (duckdb.Error, ValueError, FileNotFoundError) as e:
        print(f"instructlake sql: {_first_line(e)}", file=sys.stderr)
        return 1
    try:
        rel = con.sql(query)
        if rel is None:
            return 0
        if fmt == "table":
            rel.show(max_rows=max_rows, max_width=200)
            return 0
        columns, rows = rel.columns, rel.fetchall()
    except duckdb.Error as e:
        views = [r[0] for r in con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()]
        available = ", ".join(views) or "none yet, run a stage first"
        print(f"instructlake sql: {_first_line(e)} (tables available: {available})", file=sys.stderr)
        return 1
    if fmt == "csv":
        writer = csv.writer(sys.stdout)
        writer.writerow(columns)
        writer.writerows(rows)
    else:
        for row in rows:
            print(json.dumps(dict(zip(columns, row)), default=str, ensure_ascii=False))
    return 0


def _first_line(e: Exception) -> str:
    return next((line for line in str(e).splitlines() if line.strip()), type(e).__name__)
