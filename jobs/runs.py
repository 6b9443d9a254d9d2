"""What every stage run shares: the context it runs in, its result, and its row in the `runs` table."""

from __future__ import annotations

import importlib
import json
import logging
import secrets
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyspark.sql import SparkSession

from instructlake.jobs.config import Config, scrub
from instructlake.jobs.lease import Lease, mark_abandoned, utcnow
from instructlake.jobs.session import build_session, choose_backend
from instructlake.jobs.store import TableStore, open_store
from instructlake.jobs.tables import SCHEMAS

log = logging.getLogger(__name__)

# Stage name -> module with `run(ctx) -> StageResult`, in pipeline order; imported only when run.
STAGES: dict[str, str] = {
    "ingest": "instructlake.jobs.ingest",
    "curate": "instructlake.jobs.curate",
    "translate": "instructlake.jobs.translate",
    "generate": "instructlake.jobs.generate",
    "judge": "instructlake.jobs.judge",
    "reverse": "instructlake.jobs.reverse",
    "quality": "instructlake.jobs.quality",
    "export": "instructlake.jobs.export",
    "report": "instructlake.jobs.report",
    "maintain": "instructlake.jobs.maintain",
}


# What each stage writes: leased for its run, so two runs never write one table at once. `runs` and
# `leases` are left out: every run writes its own rows there, by key, through conflict-checked MERGEs.
WRITES: dict[str, tuple[str, ...]] = {
    "ingest": ("prompts_raw", "prompts_rejected"),
    "curate": ("prompts", "prompts_rejected"),
    "translate": ("translations", "generation_errors"),
    "generate": ("responses", "generation_errors"),
    "judge": ("judgements", "generation_errors"),
    "reverse": ("reverse_steps", "generation_errors", "responses"),
    "quality": ("response_checks", "expectation_results"),
}


def writes(conf: Config, stage: str) -> list[str]:
    """The resources a stage run leases: tables by name, output directories as `path:<location>`. A URI
    stays a URI, so runs on any host or working directory name one export alike: scheme case-folded, s3a://
    and s3n:// as s3:// (one bucket, other Hadoop connectors), credentials in it dropped (the lease row is
    stored), no trailing slash. Only a local path is resolved, from the working directory."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; known: {list(STAGES)}")

    def location(path: str) -> str:
        if "://" not in path:
            return str(Path(path).resolve())
        scheme, rest = path.split("://", 1)
        scheme = scheme.lower()
        scheme = "s3" if scheme in ("s3a", "s3n") else scheme
        authority, slash, tail = rest.partition("/")
        if ":" in authority.rpartition("@")[0]:  # user:password@host: not part of where the files go
            authority = authority.rpartition("@")[2]
        return f"{scheme}://{authority}{slash}{tail}".rstrip("/")

    if stage == "export":
        return [f"path:{location(conf.export.path)}"]
    if stage == "report":
        return [f"path:{location(conf.report.path)}"]
    if stage == "maintain":
        return [t for t in (conf.maintain.tables or SCHEMAS) if t not in ("runs", "leases")]
    return list(WRITES[stage])


def new_run_id() -> str:
    return f"{utcnow():%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


@dataclass
class Context:
    """A SparkSession, the validated config, the table store and the run id, passed to every stage."""

    spark: SparkSession
    conf: Config
    store: TableStore
    run_id: str

    @classmethod
    def create(cls, conf: Config, spark: SparkSession | None = None) -> Context:
        spark = spark or build_session(conf)
        store = open_store(spark, conf, choose_backend(spark, conf))
        return cls(spark=spark, conf=conf, store=store, run_id=conf.run.run_id or new_run_id())


@dataclass
class StageResult:
    stage: str
    rows_in: int
    rows_out: int
    rows_rejected: int
    stats: dict[str, Any] = field(default_factory=dict)
    tables: list[str] = field(default_factory=list)


def config_json(conf: Config) -> str:
    """The config as stored in run records: redacted by key name, then scrubbed of secret values that
    leaked into other fields (a path, a URL)."""
    return scrub(json.dumps(conf.snapshot(), sort_keys=True, default=str), conf)


def latest_stats(store: TableStore, stage: str) -> dict[str, Any]:
    """The stats of `stage`'s latest succeeded run ({} when there is none)."""
    from pyspark.sql import functions as F

    if not store.exists("runs"):
        return {}
    runs = store.read("runs").where((F.col("stage") == stage) & (F.col("status") == "succeeded"))
    row = runs.orderBy(F.desc("finished_at")).select("stats").first()
    return json.loads(row["stats"]) if row and row["stats"] else {}


def run_stages(ctx: Context, stages: list[str]) -> list[StageResult]:
    """Run `stages` in order (a pipeline) under one lease on everything any of them writes, taken before
    the first one writes anything: a pipeline that another run's lease would stop at a later stage is
    refused (LeaseHeld) with nothing written. Each stage is still recorded, fenced and guarded as its own
    run (run_stage); the first failure stops the pipeline."""
    resources = [r for s in stages for r in writes(ctx.conf, s)]
    with Lease(ctx.store, ctx.conf.run.lease, ctx.run_id, stages, resources) as lease:
        return [run_stage(ctx, s, lease) for s in stages]


def run_stage(ctx: Context, stage: str, lease: Lease | None = None) -> StageResult:
    """Run one stage under a lease on what it writes and record it in `runs`: 'running' first, then
    'succeeded' with its counts or 'failed' with the error (secrets scrubbed). The exception still
    propagates; LeaseHeld when another live run writes the same tables. `lease`: one already held that
    covers the stage (run_stages); without it the stage takes and releases its own."""
    tables = writes(ctx.conf, stage)
    if lease is None:
        # Leased before anything is written: a run refused here (LeaseHeld) leaves no trace in the tables.
        with Lease(ctx.store, ctx.conf.run.lease, ctx.run_id, stage, tables) as own:
            return run_stage(ctx, stage, own)
    if stage not in lease.stages or not set(tables) <= set(lease.resources):
        raise ValueError(f"stage {stage}: the lease given covers {lease.resources}, not all of {tables}")
    lease.stage = stage
    module = importlib.import_module(STAGES[stage])
    started = utcnow()
    record = {
        "run_id": ctx.run_id,
        "stage": stage,
        "config": config_json(ctx.conf),
        "started_at": started,
        "created_at": started,
    }
    # The lease keeps well-behaved runs apart; the fences make it hold when a lease is lost anyway (a
    # stalled driver, skewed clocks): from here on no commit of an earlier holder of these tables lands.
    try:
        fences = ctx.store.take_fences([t for t in tables if t in SCHEMAS], lease.taken_over)
        log.info("stage %s: fenced %s", stage, ", ".join(f"{t}@{e}" for t, e in fences.items()) or "nothing")
        mark_abandoned(ctx.store, ctx.conf.run.lease.ttl_s, exclude=(ctx.run_id, stage))
        ctx.store.write_rows([{**record, "status": "running"}], "runs", run_id=ctx.run_id, stage=stage)
        log.info("stage %s: run %s started", stage, ctx.run_id)
        ctx.store.guard = lease.check
        return _run_leased(ctx, module, stage, record, lease)
    except BaseException:
        # A failed job's cancelled tasks may still be committing (Spark stops them, their commit
        # threads finish): moved on before the lease goes, the fences refuse what they would land after
        # the next run selected its work.
        try:
            ctx.store.retire_fences()
        except Exception as exc:  # the stage's own failure is the one to report
            log.warning("stage %s: could not move the fences on after its failure: %s", stage, exc)
        raise
    finally:
        # A table taken over had its fence moved by this stage: a later stage of the pipeline that writes
        # it too (prompts_rejected, generation_errors) moving it again would only cost a commit.
        lease.taken_over -= set(ctx.store.fences)
        ctx.store.guard = None
        ctx.store.drop_fences()


def _run_leased(ctx: Context, module, stage: str, record: dict[str, Any], lease: Lease) -> StageResult:
    started = record["started_at"]
    try:
        result: StageResult = module.run(ctx)
        lease.check()  # a lapsed lease fails the run: its rows may interleave with another run's
    except BaseException as exc:
        error = scrub("".join(traceback.format_exception_only(type(exc), exc)).strip(), ctx.conf)
        ctx.store.write_rows(
            [{**record, "status": "failed", "error": error[:8000], "finished_at": utcnow()}],
            "runs",
            run_id=ctx.run_id,
            stage=stage,
        )
        raise
    ctx.store.write_rows(
        [
            {
                **record,
                "status": "succeeded",
                "rows_in": result.rows_in,
                "rows_out": result.rows_out,
                "rows_rejected": result.rows_rejected,
                "stats": json.dumps(result.stats, sort_keys=True, default=str),
                "finished_at": utcnow(),
            }
        ],
        "runs",
        run_id=ctx.run_id,
        stage=stage,
    )
    log.info(
        "stage %s: in=%d out=%d rejected=%d (%.1fs)",
        stage,
        result.rows_in,
        result.rows_out,
        result.rows_rejected,
        (utcnow() - started).total_seconds(),
    )
    return result
