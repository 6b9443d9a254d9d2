"""`instructlake <stage>|pipeline|sql` — also the entry point under spark-submit (deploy/submit.py)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from instructlake.jobs.config import Config, ConfigError, load_config

EX_TEMPFAIL = 75  # sysexits: another run holds a table this one writes; try again later


def _parser() -> argparse.ArgumentParser:
    from instructlake.jobs.runs import STAGES

    p = argparse.ArgumentParser(prog="instructlake", description=__doc__)
    p.add_argument("command", choices=[*STAGES, "pipeline", "sql"], help="a stage, the whole pipeline, or sql")
    p.add_argument("query", nargs="?", help="for sql: the query; tables are views named as in tables.names")
    p.add_argument("--conf", action="append", default=[], help="override file(s) on top of conf/default.yaml")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE", help="override one key")
    p.add_argument("--format", choices=["table", "csv", "json"], default="table", help="sql output format")
    p.add_argument("--max-rows", type=int, default=40, help="sql: rows shown in table format")
    return p


def preflight(conf: Config, stages: list[str]) -> str | None:
    """What would fail only after Spark started (tens of seconds, deep in a traceback): input paths that
    match nothing or cannot be read, a lake that cannot be written. None when all is well."""
    if "ingest" in stages:
        from instructlake.jobs.ingest import expand

        for inp in conf.ingest.inputs:
            try:
                files = expand(inp)
            except FileNotFoundError as e:
                return str(e)
            unreadable = [f for f in files if "://" not in f and not os.access(f, os.R_OK)]
            if unreadable:
                return f"ingest.inputs: cannot read {unreadable[0]!r} (permission denied)"
    root = conf.run.lake_root
    if conf.tables.catalog or "://" in root:
        return None
    path = Path(root).resolve()
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        return f"run.lake_root: {root!r} cannot be created: {str(existing)!r} is not a directory"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"run.lake_root: {root!r} is not writable ({str(existing)!r} denies writing)"
    return None


def main(argv: list[str] | None = None) -> int:
    # Intermixed: `sql --format csv "SELECT ..."` works, not only options after the query.
    args = _parser().parse_intermixed_args(argv)
    try:
        conf = load_config(args.conf, args.sets)
    except ConfigError as e:
        print(f"instructlake: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(level=conf.run.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "sql":
        if not args.query:
            print("instructlake sql: give a query, e.g. instructlake sql 'SELECT count(*) FROM prompts_raw'", file=sys.stderr)
            return 2
        from instructlake.jobs.sql import print_query

        return print_query(conf, args.query, fmt=args.format, max_rows=args.max_rows)

    stages = conf.pipeline.stages if args.command == "pipeline" else [args.command]
    if problem := preflight(conf, stages):
        print(f"instructlake: {problem}", file=sys.stderr)
        return 2

    from instructlake.jobs.lease import LeaseHeld, LeaseLost
    from instructlake.jobs.runs import Context, run_stages

    ctx = Context.create(conf)
    logging.getLogger("instructlake").info("run %s: stages %s, delta backend %s", ctx.run_id, stages, ctx.store.backend)
    try:
        results = run_stages(ctx, stages)
    except LeaseHeld as e:
        print(f"instructlake: {e}", file=sys.stderr)
        return EX_TEMPFAIL
    except LeaseLost as e:  # another run took the tables while this one ran: none of its late commits landed
        print(f"instructlake: {e}", file=sys.stderr)
        return 1
    summary = {
        "run_id": ctx.run_id,
        "delta_backend": ctx.store.backend,
        "stages": [
            {"stage": r.stage, "rows_in": r.rows_in, "rows_out": r.rows_out, "rows_rejected": r.rows_rejected}
            for r in results
        ],
        "tables": {t: ctx.store.location(t) for r in results for t in r.tables},
    }
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
