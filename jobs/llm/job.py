"""The engine job of an LLM stage: recover what a crashed run staged, run udfs.generation.engine_task over
the rows to do (round-robin over `tasks` engine tasks, under a GPU ResourceProfile when `gpu.enabled`),
commit through the stage's sink, and sum the tasks' summary rows into the stage's stats."""

from __future__ import annotations

import functools
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from instructlake.jobs.config import GpuConf, LLMStageConf
from instructlake.jobs.lease import LeaseLost
from instructlake.jobs.llm.select import triage
from instructlake.jobs.llm.staging import commit_staged, staging_root
from instructlake.jobs.runs import StageResult
from instructlake.jobs.store import arrow_schema
from instructlake.jobs.tables import KEYS, SCHEMAS
from instructlake.udfs import generation as G
from instructlake.udfs import sinks
from instructlake.udfs.generation import ERRORS
from instructlake.udfs.sinks import DeltaSink, StagingSink, staged_files

log = logging.getLogger(__name__)


def gpus_per_task(gpu: GpuConf, engine_args: Mapping[str, Any]) -> int:
    if gpu.per_task:
        return gpu.per_task
    return int(engine_args.get("tensor_parallel_size") or 1) * int(engine_args.get("pipeline_parallel_size") or 1)


def gpu_profile(gpu: GpuConf, engine_args: Mapping[str, Any]):
    """The stage-level ResourceProfile of the engine tasks, or None (CPU: no profile).

    Task requests only (the default): the engine tasks run on the application's GPU executors and each
    holds `gpus_per_task` GPUs, while CPU stages (whose tasks ask for no GPU) use every core; Spark
    supports this with dynamic allocation off on standalone, YARN and Kubernetes. With
    `executor_gpus > 0` the profile also asks for executors of its own (needs dynamic allocation).
    """
    if not gpu.enabled:
        return None
    from pyspark.resource import ExecutorResourceRequests, ResourceProfileBuilder, TaskResourceRequests

    builder = ResourceProfileBuilder()
    builder.require(TaskResourceRequests().cpus(gpu.task_cpus).resource("gpu", gpus_per_task(gpu, engine_args)))
    if gpu.executor_gpus:
        ereqs = ExecutorResourceRequests().resource("gpu", gpu.executor_gpus, gpu.discovery_script or "", gpu.vendor or "")
        if gpu.executor_cores:
            ereqs.cores(gpu.executor_cores)
        if gpu.executor_memory:
            ereqs.memory(gpu.executor_memory)
        if gpu.executor_memory_overhead:
            ereqs.memoryOverhead(gpu.executor_memory_overhead)
        builder.require(ereqs)
    return builder.build


class _DriverProgress(threading.Thread):
    """Logs rows committed / expected, rows/s and ETA on the driver while the engine job runs."""

    def __init__(self, label: str, expected: int, interval_s: float, rows_done: Callable[[], int]):
        super().__init__(daemon=True, name=f"progress-{label}")
        self.label, self.expected, self.interval_s, self.rows_done = label, expected, interval_s, rows_done
        self.stop = threading.Event()
        self.start_time = time.monotonic()

    def run(self) -> None:
        while not self.stop.wait(self.interval_s):
            try:
                done = self.rows_done()
            except Exception as exc:  # progress is best effort
                log.debug("progress probe failed: %s", exc)
                continue
            elapsed = time.monotonic() - self.start_time
            rate = done / elapsed if elapsed else 0.0
            eta = f"{(self.expected - done) / rate:.0f}s" if rate else "?"
            log.info(
                "%s: %d/%d rows committed (%.0f%%), %.1f rows/s, elapsed %.0fs, ETA %s",
                self.label, done, self.expected, 100 * done / max(self.expected, 1), rate, elapsed, eta,
            )  # fmt: skip


@dataclass
class LLMJob:
    """One engine job of a stage: `recover()` first (staged mode), then `run(inputs)`."""

    ctx: Any  # instructlake.jobs.runs.Context
    stage: str
    llm: LLMStageConf
    task: G.LLMTask

    @property
    def main(self) -> str:
        """The table of the task's kind."""
        return self.task.table

    @property
    def tables(self) -> tuple[str, ...]:
        return (self.main, ERRORS)

    @property
    def mode(self) -> str:
        if self.llm.commit != "auto":
            mode = self.llm.commit
        else:
            mode = "direct" if self.ctx.store.backend == "rs" else "staged"
        if mode == "direct" and self.ctx.store.backend != "rs":
            raise ValueError(f"{self.stage}.commit=direct needs the delta-rs backend; use staged (or auto)")
        return mode

    def recover(self) -> dict[str, dict]:
        """Merge what earlier runs left staged (a crashed driver); a no-op in direct mode."""
        for name in self.tables:
            self.ctx.store.upgrade(name)  # before any task commits: an old layout would refuse the rows
        if self.mode != "staged":
            return {}
        return commit_staged(
            self.ctx.store, staging_root(self.ctx.conf, self.llm), self.tables, run_id=self.ctx.run_id, stage=self.stage
        )

    def _sink(self, nonce: str) -> G.Sink:
        store = self.ctx.store
        if self.mode == "direct":
            rs = {n: store.rs_table(n) for n in self.tables}
            keys = {self.main: None if self.task.job_kind.per_sample else KEYS[self.main], ERRORS: KEYS[ERRORS]}
            return DeltaSink(rs, keys, self.tables, f"{self.stage}:{self.ctx.run_id}:{nonce}")
        schemas = {n: arrow_schema(SCHEMAS[n]) for n in self.tables}
        root = staging_root(self.ctx.conf, self.llm)
        return StagingSink(root, schemas, self.tables, f"{self.stage}-{self.ctx.run_id}-{nonce}")

    def _rows_probe(self, sink: G.Sink) -> Callable[[], int]:
        if isinstance(sink, DeltaSink):
            table = sink.tables[self.main]
            baseline = table.num_rows()
            return lambda: table.num_rows() - baseline

        def staged_rows() -> int:
            import pyarrow.parquet as pq

            fs, base = sinks.filesystem(sink.root)
            files = [f for f in staged_files(sink.root, self.main) if f"/{sink.scope}-" in f]
            return sum(pq.ParquetFile(fs.open_input_file(f"{base}/{self.main}/{f.rsplit('/', 1)[1]}")).metadata.num_rows for f in files)

        return staged_rows

    def run_pending(self, selected: DataFrame, done: DataFrame, errors: DataFrame) -> tuple[dict[str, Any], dict[str, int]]:
        """Triage `selected` against what is done and what failed before (read after `recover()`), run
        the engine on the rest; the job's stats (with the triage counts) and the counts."""
        tagged, counts = triage(selected, done, errors, self.llm.max_attempts)
        try:
            stats = self.run(tagged.filter(F.col("_state") == "todo"), counts["todo"])
        finally:
            tagged.unpersist()
        stats.update(selected=sum(counts.values()), done_before=counts["done"], given_up=counts["given_up"], todo=counts["todo"])
        return stats, counts

    def result(self, stats: dict[str, Any]) -> StageResult:
        return StageResult(
            stage=self.stage,
            rows_in=stats["selected"],
            rows_out=stats["rows_written"],
            rows_rejected=stats["errors"],
            stats=stats,
            tables=list(self.tables),
        )

    def run(self, inputs: DataFrame, total: int) -> dict[str, Any]:
        """Generate for `inputs` (the task's input_columns, udfs.generation.INPUT_COLUMNS; `total` rows, best
        cached) and commit; returns the job's stats."""
        nonce = uuid.uuid4().hex[:8]
        sink = self._sink(nonce)
        inputs = inputs.select(*self.task.input_columns)
        started = time.perf_counter()
        stats: dict[str, Any] = {"commit": self.mode, "tasks": self.llm.tasks, "model": self.task.model}
        if not total:
            return {**stats, **_summarize([], 0.0)}
        profile = gpu_profile(self.llm.gpu, self.task.engine.get("engine_args", {}))
        # Round-robin: equal prompt counts per task (hash partitioning left tasks 3% apart, and the slowest
        # task sets the stage's time). Spark sorts before a round-robin repartition, so a retried task
        # gets the same rows, in the same order after the sort below, and skips its committed chunks.
        parts = inputs.repartition(self.llm.tasks).sortWithinPartitions("prompt_id")
        job = parts.mapInPandas(functools.partial(G.engine_task, self.task, sink), G.SUMMARY_DDL, profile=profile)
        expected = total * (self.task.sampling.n if self.task.job_kind.per_sample else 1)
        watcher = _DriverProgress(self.stage, expected, self.llm.progress_interval_s, self._rows_probe(sink))
        log.info(
            "%s: %d prompts -> %d engine task(s), %s commits, model %s%s",
            self.stage, total, self.llm.tasks, self.mode, self.task.model,
            f", GPU profile {profile.taskResources}" if profile is not None else "",
        )  # fmt: skip
        watcher.start()
        try:
            rows = [r.asDict() for r in job.collect()]
        finally:
            watcher.stop.set()
            if self.mode == "staged":  # whatever the tasks staged, even when the job failed
                stats["staged"] = commit_staged(
                    self.ctx.store, sink.root, self.tables, run_id=self.ctx.run_id, stage=self.stage
                )
        if fenced := [r for r in rows if r["status"] == "fenced"]:
            # Another run took the tables (its fence) while this one ran: its tasks' commits were refused,
            # so nothing of this job landed after that; the stage fails and says how many.
            raise LeaseLost(
                f"stage {self.stage} (run {self.ctx.run_id}): {len(fenced)} chunk commit(s) refused, "
                f"{sum(r['prompts'] for r in fenced)} prompts' rows not written: {fenced[0]['error_classes']}"
            )
        return {**stats, **_summarize(rows, time.perf_counter() - started)}


def _summarize(rows: list[dict[str, Any]], wall_s: float) -> dict[str, Any]:
    """Stage stats from the tasks' summary rows (one per chunk)."""
    done = [r for r in rows if r["status"] in ("committed", "already_committed")]
    tokens = sum(r["completion_tokens"] for r in done)
    # A chunk's gen_s is the time its task spent in the engine since the previous chunk came out, so the sum
    # is the engines' busy time: what the engine worked, not what it waited on commits or the loop.
    gen_s = sum(r["gen_s"] for r in done)
    # What the engine time cost in devices: a GPU task holds its GPUs for gen_s, a CPU task one core slot.
    device_s = sum(r["gen_s"] * (len(r["gpus"].split(",")) if r["gpus"] else 1) for r in done)
    builds: dict[int, int] = {}
    for r in rows:
        builds[r["pid"]] = max(builds.get(r["pid"], 0), r["engine_builds"])
    starts = [r["engine_start_s"] for r in rows if r["engine_start_s"]]
    classes: dict[str, int] = {}
    for r in done:
        for name, count in json.loads(r["error_classes"] or "{}").items():
            classes[name] = classes.get(name, 0) + count
    return {
        "chunks": len(done),
        "chunks_skipped": sum(r["status"] == "skipped" for r in rows),
        "prompts_done": sum(r["prompts"] for r in done),
        "rows_written": sum(r["rows_out"] for r in done),
        "errors": sum(r["errors"] for r in done),
        "errors_by_class": classes,
        "prompt_tokens": sum(r["prompt_tokens"] for r in done),
        "completion_tokens": tokens,
        "wall_s": round(wall_s, 3),
        "engine_s": round(gen_s, 3),  # engine-busy seconds, summed over tasks
        "device_s": round(device_s, 3),  # engine seconds x the devices each task held
        "devices": "gpu" if any(r["gpus"] for r in done) else "cpu",
        "requests": sum(r["prompts"] for r in done),
        "tokens_per_s": round(tokens / wall_s, 1) if wall_s else 0.0,
        "tokens_per_engine_s": round(tokens / gen_s, 1) if gen_s else 0.0,  # completion tokens per engine-busy second
        "engine_builds_per_worker": {str(k): v for k, v in sorted(builds.items())},
        "engine_start_s": [round(s, 2) for s in starts],
        "engine_version": next((r["engine_version"] for r in rows if r["engine_version"]), None),
        "engine_tasks": _engine_tasks(rows),
    }


def _engine_tasks(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per task attempt that finished (a lost attempt's summaries never reach the driver): where
    it ran, the GPUs Spark assigned it, the CUDA_VISIBLE_DEVICES of the engine that served it (null when
    every chunk was skipped and no engine was needed), its chunks, its engine-busy seconds and tokens/s."""
    tasks: dict[tuple[int, int], dict[str, Any]] = {}
    for r in sorted(rows, key=lambda r: (r["partition"], r["attempt"], r["chunk"])):
        t = tasks.setdefault(
            (r["partition"], r["attempt"]),
            {k: r[k] for k in ("partition", "attempt", "task_attempt_id", "host", "executor", "pid", "gpus")}
            | {"cuda_visible_devices": None, "chunks": 0, "engine_s": 0.0, "completion_tokens": 0},
        )
        t["cuda_visible_devices"] = t["cuda_visible_devices"] or r["cuda_visible_devices"]
        t["chunks"] += 1
        if r["status"] in ("committed", "already_committed"):
            t["engine_s"] = round(t["engine_s"] + r["gen_s"], 3)
            t["completion_tokens"] += r["completion_tokens"]
    for t in tasks.values():
        t["tokens_per_engine_s"] = round(t["completion_tokens"] / t["engine_s"], 1) if t["engine_s"] else 0.0
    return list(tasks.values())
