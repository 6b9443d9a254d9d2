"""`instructlake sql`'s DuckDB connection: the signed delta extension loads, nothing unsigned does."""

import duckdb
import pytest

from instructlake.jobs.config import load_config
from instructlake.jobs.sql import _extension_file, connect


def test_sql_connection_refuses_unsigned_extensions(tmp_path):
    con = connect(load_config([], [f"run.lake_root={tmp_path / 'lake'}"]))
    assert con.execute("SELECT current_setting('allow_unsigned_extensions')").fetchone()[0] is False
    # An extension file whose metadata is valid (the delta extension's own footer) but whose signature is not.
    with open(_extension_file(), "rb") as f:
        f.seek(-512, 2)
        footer = f.read()
    fake = tmp_path / "unsigned.duckdb_extension"
    fake.write_bytes(b"\x7fELF" + bytes(4096) + footer)
    with pytest.raises(duckdb.IOException, match="unsigned extensions are disabled"):
        con.execute(f"LOAD '{fake}'")
    with pytest.raises(duckdb.InvalidInputException):
        con.execute("SET allow_unsigned_extensions = true")
    assert con.execute("SELECT current_setting('lock_configuration')").fetchone()[0] is True
