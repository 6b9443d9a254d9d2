"""Maintain: table upkeep after the writers. Chunked, exactly-once commits from many tasks leave many small
files; this stage compacts them (OPTIMIZE) and vacuums files that no version within the retention window
needs, including data files of killed writers that no commit references, and staged-commit temp files of
killed tasks.

Each table's row count is taken from the log before and after compaction and must not change; the run
record holds, per table, duplicate rows removed, files and bytes before and after, files rewritten, and
files vacuumed.

First, with `dedup`, a keyed table that holds a key twice (a lake that concurrent runs wrote before
leases existed) keeps only the newest row per key: the repair path for doubled lakes.

A retention under Delta's 168 hours needs `maintain.force` (checked at config load), and never reaches
`runs` and `leases`: every run writes them, at any time, and this stage leases neither, so a VACUUM there
must keep Delta's safety margin for files a concurrent writer is committing.
"""

from __future__ import annotations

import logging

from instructlake.jobs.config import SAFE_RETENTION_HOURS
from instructlake.jobs.llm.staging import staging_root
from instructlake.jobs.runs import Context, StageResult
from instructlake.jobs.tables import SCHEMAS
from instructlake.udfs.sinks import remove_stale_temps

log = logging.getLogger(__name__)

STAGE = "maintain"
UNLEASED = ("runs", "leases")  # written by every run at any time, never leased (jobs.runs.writes)


def vacuum_hours(name: str, retention_hours: int) -> int:
    """The retention a table is vacuumed with: the configured one, but never under 168 hours for the
    tables written unleased."""
    return max(retention_hours, SAFE_RETENTION_HOURS) if name in UNLEASED else retention_hours


def run(ctx: Context) -> StageResult:
    c, store = ctx.conf.maintain, ctx.store
    listed = c.tables or list(SCHEMAS)
    names = [n for n in listed if store.exists(n)]
    stats: dict = {"tables": {}, "absent": [n for n in listed if n not in names]}
    rows_in = rows_out = 0
    for name in names:
        entry: dict = {}
        if renamed := store.upgrade(name):
            entry["renamed_columns"] = renamed
        if c.dedup:
            entry["duplicates_removed"] = store.dedup(name, run_id=ctx.run_id, stage=STAGE)
            if entry["duplicates_removed"]:
                log.warning("maintain %s: removed %d duplicate row(s) by key, kept the newest", name, entry["duplicates_removed"])
        entry["before"] = before = store.file_stats(name)
        if c.compact:
            entry["compacted"] = store.compact(name, c.target_file_mb * 2**20, run_id=ctx.run_id, stage=STAGE)
        if c.vacuum:
            entry["vacuumed_files"] = store.vacuum(name, vacuum_hours(name, c.retention_hours))
        # Only compaction rewrites files (vacuum deletes unreferenced ones); on delta-spark each count of a
        # table costs a snapshot load and a Spark job, so a table compaction left alone is not read again.
        rewritten = entry.get("compacted", {}).get("files_removed")
        entry["after"] = after = store.file_stats(name) if rewritten else before
        if after["rows"] != before["rows"]:  # compaction rewrites files, never rows; anything else is a bug
            raise AssertionError(f"maintain changed {name}: {before['rows']} rows before, {after['rows']} after")
        rows_in, rows_out = rows_in + before["rows"], rows_out + after["rows"]
        stats["tables"][name] = entry
        log.info("maintain %s: %d -> %d files, %s vacuumed", name, before["files"], after["files"], entry.get("vacuumed_files"))
    if c.staging:
        roots = set()
        for llm in ctx.conf.llm_stages().values():
            try:
                roots.add(staging_root(ctx.conf, llm))
            except ValueError:  # a catalog without a staging_dir: staged commits cannot have run
                continue
        stats["staging_temps_removed"] = sum(remove_stale_temps(r, c.retention_hours * 3600) for r in sorted(roots))
    return StageResult(stage=STAGE, rows_in=rows_in, rows_out=rows_out, rows_rejected=0, stats=stats, tables=names)
