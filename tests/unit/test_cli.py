"""The command line without Spark: `instructlake sql` over DuckDB, and the checks that fail before Spark
starts (config errors, missing inputs, an unwritable lake), each one line on stderr with its exit status."""

import time

import pyarrow as pa

from tests.support.cli import cli


def test_sql_errors_list_tables(tmp_path):
    q = cli("sql", "SELECT * FROM nope", "--set", f"run.lake_root={tmp_path}")
    assert q.returncode == 1 and "nope" in q.stderr and "tables available" in q.stderr


def test_config_error_exit_code_names_key(tmp_path):
    run = cli("ingest", "--set", "spark.mastr=local[1]")
    assert run.returncode == 2
    assert "spark.mastr: unknown key (from --set spark.mastr)" in run.stderr


def test_missing_input_fails_before_spark_starts(tmp_path):
    started = time.monotonic()
    run = cli("ingest", "--set", f"run.lake_root={tmp_path / 'lake'}", "--set", f"ingest.inputs=[{{path: '{tmp_path}/none*.jsonl'}}]")
    assert run.returncode == 2 and time.monotonic() - started < 20  # a Spark start alone takes 10-25 s
    assert run.stderr.strip().splitlines() == [f"instructlake: ingest.inputs: nothing matches '{tmp_path}/none*.jsonl'"]
    assert not (tmp_path / "lake").exists()


def test_unwritable_lake_fails_before_spark_starts(tmp_path, shared_data):
    (tmp_path / "a_file").write_text("not a directory")
    inputs = f"ingest.inputs=[{{path: '{shared_data}/prompts/en_self_instruct_seed_tasks.jsonl'}}]"
    run = cli("ingest", "--set", f"run.lake_root={tmp_path / 'a_file' / 'lake'}", "--set", inputs)
    assert run.returncode == 2
    [line] = run.stderr.strip().splitlines()
    assert line.startswith("instructlake: run.lake_root:") and "is not a directory" in line


def test_sql_options_before_the_query_quoted_paths_and_one_line_errors(tmp_path):
    from deltalake import write_deltalake

    lake = tmp_path / "it's a lake"  # a quote in the path must not break delta_scan('...')
    write_deltalake(str(lake / "prompts_raw"), pa.table({"source": ["a", "b", "a"]}))
    sets = ["--set", f"run.lake_root={lake}"]
    q = cli("sql", "--format", "csv", "SELECT source, count(*) AS n FROM prompts_raw GROUP BY 1 ORDER BY 1", *sets)
    assert q.returncode == 0, q.stderr
    assert q.stdout.splitlines() == ["source,n", "a,2", "b,1"]

    q = cli("sql", "--format", "json", "SELECT CAST(source AS INTEGER) FROM prompts_raw", *sets)  # fails while running
    assert q.returncode == 1 and "Traceback" not in q.stderr
    [line] = q.stderr.strip().splitlines()
    assert line.startswith("instructlake sql: Conversion Error:") and "tables available: prompts_raw" in line

