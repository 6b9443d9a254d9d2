"""Rows of the store's tables for the store, lease and maintain tests."""

import datetime as dt

from instructlake.jobs.tables import SCHEMAS

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)


def raw_rows(n, run_id="r1", start=0):
    return [
        dict(
            source="s", source_id=str(i), turn=0, text=f"prompt {i}", source_lang="en", moderation_flagged=False,
            redacted=False, source_model=None, layout="plain", input_file="f.jsonl", record_index=i,
            run_id=run_id, created_at=NOW,
        )
        for i in range(start, start + n)
    ]  # fmt: skip


def frame(spark, rows, partitions=4):
    return spark.createDataFrame(rows, SCHEMAS["prompts_raw"]).repartition(partitions)


