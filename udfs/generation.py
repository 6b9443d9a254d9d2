"""Executor side of the LLM stages (translate, generate, judge, reverse): input rows -> engine requests ->
table rows, one chunk at a time.

`engine_task` is the body of a Spark task (mapInPandas): `run_partition` sorts its rows, cuts them into
chunks of `chunk_rows` and streams them through the worker's engine (`engine.get_engine`, built once per
Python worker; `BatchEngine.stream`): up to `inflight_chunks` chunks are inside the engine at once, new
requests entering as others finish, so the engine never drains between chunks. When a chunk's last request
is done, its rows go to a *sink* (udfs.sinks: a Delta commit, or a staged Parquet file) that commits them
on a background thread while the engine goes on. A crash loses at most the chunks in flight. It yields one
small summary row per chunk. What a row asks for and which rows its result becomes is its kind's
(udfs.kinds, named by the row's `task`).

The sink is anything with `done(chunk_key) -> bool` and `commit(chunk_key, rows) -> bool`, where rows
maps a table name to a list of row dicts. Everything a task unpickles lives in udfs: executors never
import the driver side (instructlake.jobs), and nothing here imports vllm or torch until an engine is built.

Ids are deterministic: a request's seed is derived from the configured seed and the prompt id (its output
does not depend on batching, partitioning or re-runs), and a response id hashes the prompt id, model,
generation config and sample index (udfs.kinds.response_id).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import pandas as pd

from instructlake.udfs import engine as E
from instructlake.udfs import kinds as K
from instructlake.udfs.rs_table import Fenced
from instructlake.udfs.text import content_hash

log = logging.getLogger("instructlake.generate")

ERRORS = "generation_errors"
SUMMARY_DDL = (
    "partition INT, attempt INT, chunk INT, pid INT, status STRING, prompts INT, rows_out INT, errors INT, "
    "prompt_tokens BIGINT, completion_tokens BIGINT, gen_s DOUBLE, commit_s DOUBLE, engine_start_s DOUBLE, "
    "engine_builds INT, engine_version STRING, partition_rows INT, error_classes STRING, "
    "host STRING, executor STRING, task_attempt_id BIGINT, gpus STRING, cuda_visible_devices STRING"
)
PLACEMENT_KEYS = ("host", "executor", "task_attempt_id", "gpus")  # where a task ran (engine_task fills them in)


@dataclass(frozen=True)
class LLMTask:
    """Everything an engine task needs; built on the driver (jobs.llm.models.llm_task, from the stage's config:
    no defaults here for what the YAML sets), pickled into the Spark tasks."""

    kind: str  # the job's kind (udfs.kinds); its rows may be of any kind that writes the same table
    model: str  # the model's name as recorded in rows
    engine: Mapping[str, Any]  # EngineSpec keys (engine.EngineSpec.from_dict)
    sampling: E.SamplingConfig  # request seeds are derived from sampling.seed and the prompt id
    gen_config: Mapping[str, Any]  # what identifies the output; with the row's task, gen_config_id hashes it
    run_id: str
    batch_size: int  # requests per engine call of a call-based backend, and the unit that a failure bisects
    chunk_rows: int  # prompts per commit
    progress_interval_s: float
    # Chunks inside a streaming engine at once (a crash loses at most these); the stage's config sets it
    # (llm.inflight_chunks), the default only serves callers that build a task by hand.
    inflight_chunks: int = 1
    system_prompt: str | None = None  # respond, judge: a system message before the prompt
    chat_template: str | None = None
    target_lang: str | None = None  # translate: language code of the translation
    template: str | None = None  # translate, judge, reverse: the step's prompt template; None: the udfs.prompts default
    # The kinds this job's rows may be of: every registered kind writing the job kind's table, resolved on
    # the driver and pickled with the task, so an executor needs no registration of its own.
    kinds: Mapping[str, K.Kind] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.kinds:
            table = K.kind(self.kind).table
            object.__setattr__(self, "kinds", {n: k for n, k in K.KINDS.items() if k.table == table})

    def kind_of(self, name: str) -> K.Kind:
        """The kind of a row whose task is `name` (one job commits to one table)."""
        try:
            return self.kinds[name]
        except KeyError:
            raise ValueError(f"a {self.kind} job got a row of kind {name!r}; it takes {sorted(self.kinds)}") from None

    @property
    def job_kind(self) -> K.Kind:
        return self.kinds[self.kind]

    @property
    def table(self) -> str:
        """The main table this task's rows go to."""
        return self.job_kind.table

    @property
    def input_columns(self) -> tuple[str, ...]:
        return (*K.INPUT_COLUMNS, *self.job_kind.extra_inputs)

    def config_id(self, row_task: str) -> str:
        """gen_config_id of this task's rows of one kind (respond / respond_translated / translate)."""
        return gen_config_id({**self.gen_config, "task": row_task})

    def spec(self) -> dict[str, Any]:
        return dict(self.engine)


class Sink(Protocol):
    def done(self, chunk_key: str) -> bool: ...

    def commit(self, chunk_key: str, rows: Mapping[str, list[dict[str, Any]]]) -> bool: ...


def gen_config_id(gen_config: Mapping[str, Any]) -> str:
    return content_hash(json.dumps(gen_config, sort_keys=True, ensure_ascii=False, default=str))


def request_seed(base_seed: int, key: str) -> int:
    """A per-request seed (31 bits) from the configured seed and the prompt id."""
    return int(content_hash(str(base_seed), key, size=8), 16) & 0x7FFFFFFF


def requests_for(task: LLMTask, frame: pd.DataFrame) -> list[E.Request]:
    """One request per input row, keyed by its prompt_id column (a response id for judge), with its own seed;
    its messages are its kind's."""
    out = []
    for row in frame.loc[:, list(task.input_columns)].itertuples(index=False):
        sampling = E.SamplingConfig(**{**asdict(task.sampling), "seed": request_seed(task.sampling.seed, row.prompt_id)})
        out.append(E.Request(row.prompt_id, task.kind_of(row.task).messages(task, row), sampling))
    return out


def rows_for(
    task: LLMTask, frame: pd.DataFrame, results: Sequence[E.Result], engine_version: str, max_model_len: int
) -> dict[str, list[dict[str, Any]]]:
    """Table rows for one chunk: the kinds' output rows, and a generation_errors row per failed request."""
    now = dt.datetime.now(dt.timezone.utc)
    gids = {t: task.config_id(t) for t in set(frame["task"])}
    backend = task.engine.get("backend")
    errors: list[dict[str, Any]] = []
    main: list[dict[str, Any]] = []
    for row, res in zip(frame.loc[:, list(task.input_columns)].itertuples(index=False), results, strict=True):
        gid = gids[row.task]
        if res.error_class:
            errors.append(
                dict(
                    input_id=row.prompt_id, model=task.model, gen_config_id=gid, task=row.task,
                    error_class=res.error_class, message=(res.error or "")[:4000], max_model_len=max_model_len,
                    attempt=int(row.attempt), run_id=task.run_id, created_at=now,
                )
            )  # fmt: skip
            continue
        main += task.kind_of(row.task).rows(task, row, res, K.RowMeta(gid, backend, engine_version, now))
    return {task.table: main, ERRORS: errors}


class Progress:
    """Rows done / total, tokens/s and ETA of one task, logged every `interval_s` seconds."""

    def __init__(self, label: str, total: int, interval_s: float, clock: Callable[[], float] = time.monotonic):
        self.label, self.total, self.interval_s, self.clock = label, total, interval_s, clock
        self.done = self.tokens = 0
        self.start = self.last = clock()

    def restart(self) -> None:
        """Measure from now (after the engine start-up, so tok/s is the engine's)."""
        self.start = self.last = self.clock()

    def add(self, rows: int, tokens: int, force: bool = False) -> str | None:
        self.done += rows
        self.tokens += tokens
        now = self.clock()
        if not force and now - self.last < self.interval_s:
            return None
        self.last = now
        elapsed = max(now - self.start, 1e-9)
        rate = self.done / elapsed
        eta = f"{(self.total - self.done) / rate:.0f}s" if rate > 0 else "?"
        msg = (
            f"{self.label}: {self.done}/{self.total} prompts ({100 * self.done / max(self.total, 1):.0f}%), "
            f"{self.tokens / elapsed:.0f} tok/s, elapsed {elapsed:.0f}s, ETA {eta}"
        )
        log.info(msg)
        return msg


def _ensure_logging() -> None:
    # Spark's Python workers configure no logging; progress lines go to the executor's stderr.
    if not log.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


def run_partition(
    batches: Iterator[pd.DataFrame],
    task: LLMTask,
    sink: Sink,
    partition: int,
    attempt: int = 0,
    placement: Mapping[str, Any] | None = None,
) -> Iterator[pd.DataFrame]:
    """Generate and commit one Spark partition, chunk by chunk; yields one summary row per chunk.

    Chunk keys are `<partition>-<chunk>`; the sink scopes them to the job. Every attempt of a task sees the
    same rows in the same order (the driver pins its inputs), so it skips chunks the sink already holds
    without generating them again; whatever its attempt number, since a stage resubmitted after a lost
    shuffle runs its tasks again as attempt 0. `placement` (PLACEMENT_KEYS: host, executor, task attempt
    id, Spark-assigned GPU addresses) goes into every summary row, with the CUDA_VISIBLE_DEVICES that the
    engine serving the task was built with.
    """
    _ensure_logging()
    parts = [b for b in batches if len(b)]
    frame = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=list(task.input_columns))
    frame = frame.sort_values("prompt_id", kind="stable").reset_index(drop=True)
    total = len(frame)
    progress = Progress(f"{task.kind} p{partition}", total, task.progress_interval_s)
    spec_key = E.EngineSpec.from_dict(task.spec()).cache_key()
    engine: Any = None
    engine_start = 0.0
    pending: list[tuple[Future, dict[str, Any], float]] = []

    def summary(chunk: int, status: str, **values: Any) -> dict[str, Any]:
        row = dict(
            partition=partition, attempt=attempt, chunk=chunk, pid=os.getpid(), status=status, prompts=0, rows_out=0,
            errors=0, prompt_tokens=0, completion_tokens=0, gen_s=0.0, commit_s=0.0, engine_start_s=0.0,
            engine_builds=E.build_counts.get(spec_key, 0), engine_version=getattr(engine, "version", None),
            partition_rows=total, error_classes=None,
            cuda_visible_devices=E.visible_devices.get(spec_key) if engine is not None else None,
            **{k: (placement or {}).get(k) for k in PLACEMENT_KEYS},
        )  # fmt: skip
        row.update(values)
        return row

    fenced: list[str] = []  # a refused commit: another run took the tables; this task stops there

    def settle(block_all: bool) -> Iterator[pd.DataFrame]:
        """Yield the summaries of finished commits (all of them when block_all)."""
        while pending and (block_all or pending[0][0].done()):
            future, row, submitted = pending.pop(0)
            try:
                written = future.result()  # re-raises a failed commit: the task fails, the chunk is not lost
            except Fenced as exc:
                fenced.append(str(exc))
                log.error("%s p%d: commit refused, the task stops: %s", task.kind, partition, exc)
                yield pd.DataFrame([{**row, "status": "fenced", "rows_out": 0, "errors": 0, "error_classes": str(exc)[:2000]}])
                continue
            row.update(status="committed" if written else "already_committed", commit_s=time.perf_counter() - submitted)
            if not written:
                row["rows_out"] = 0
            yield pd.DataFrame([row])

    bounds = list(enumerate(range(0, total, task.chunk_rows)))
    todo = []
    for chunk, start in bounds:
        part = frame.iloc[start : start + task.chunk_rows]
        if sink.done(f"{partition}-{chunk}"):
            progress.add(len(part), 0)
            yield pd.DataFrame([summary(chunk, "skipped", prompts=len(part))])
        else:
            todo.append((chunk, part))
    if todo:
        t0 = time.perf_counter()
        builds = E.build_counts.get(spec_key, 0)
        engine = E.get_engine(task.spec())
        engine_start = time.perf_counter() - t0 if E.build_counts.get(spec_key, 0) > builds else 0.0
        progress.restart()
    chunks = (((chunk, part), requests_for(task, part)) for chunk, part in todo)

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="commit") as pool:
        stream = engine.stream(chunks, task.inflight_chunks, task.batch_size) if todo else None
        try:
            while stream is not None and not fenced:
                t0 = time.perf_counter()
                item = next(stream, None)
                # The time spent in the engine since the previous chunk came out: summed over a task's
                # chunks, the engine's busy time (the rest it waited on this loop and its commits).
                gen_s = time.perf_counter() - t0
                if item is None:
                    break
                (chunk, part), results = item
                rows = rows_for(task, part, results, engine.version, engine.max_model_len)
                main = rows[task.table]
                ok = [r for r in results if not r.error_class]
                classes: dict[str, int] = {}
                for r in results:
                    if r.error_class:
                        classes[r.error_class] = classes.get(r.error_class, 0) + 1
                tokens = sum(sum(r.completion_tokens) for r in ok)
                row = summary(
                    chunk, "submitted", prompts=len(part), rows_out=len(main), errors=len(rows["generation_errors"]),
                    prompt_tokens=sum(r.prompt_tokens for r in ok), completion_tokens=tokens, gen_s=gen_s,
                    engine_start_s=engine_start, error_classes=json.dumps(classes) if classes else None,
                )  # fmt: skip
                engine_start = 0.0
                # At most one commit in flight: wait for the previous chunk before queueing this one.
                yield from settle(block_all=True)
                pending.append((pool.submit(sink.commit, f"{partition}-{chunk}", rows), row, time.perf_counter()))
                progress.add(len(part), tokens)
            yield from settle(block_all=True)
        finally:
            if stream is not None:
                stream.close()  # a fenced or failed task drops its requests still in the engine
            for future, _, _ in pending:  # a failure elsewhere: let the commit in flight finish first
                future.exception()
    if total:
        progress.add(0, 0, force=True)


def _executor_id() -> str | None:
    """This executor's id where the cluster manager tells it: SPARK_EXECUTOR_ID (Kubernetes), or the
    executorId of the log URL a standalone worker hands its executor. Elsewhere (YARN) None: the task
    attempt id, which every summary row carries, finds the executor in the Spark UI and event log."""
    if executor := os.environ.get("SPARK_EXECUTOR_ID"):
        return executor
    query = urllib.parse.urlparse(os.environ.get("SPARK_LOG_URL_STDERR", "")).query
    return next(iter(urllib.parse.parse_qs(query).get("executorId", [])), None)


def engine_task(task: LLMTask, sink: Sink, batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
    """mapInPandas body of an engine job (bind task and sink with functools.partial): where the task runs,
    then `run_partition`."""
    import socket

    from pyspark import TaskContext

    tc = TaskContext.get()
    gpus = E.spark_gpu_addresses(tc)
    placement = dict(
        host=socket.gethostname(), executor=_executor_id(), task_attempt_id=tc.taskAttemptId(),
        gpus=",".join(gpus) if gpus else None,
    )  # fmt: skip
    yield from run_partition(batches, task, sink, tc.partitionId(), tc.attemptNumber(), placement)
