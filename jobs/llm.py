"""Driver side of the LLM stages (translate, generate, judge): model files, prompt selection, the engine job.

An LLM stage is: pick prompts (`select_prompts`), tag those already done or given up (`triage`), then
`LLMJob.run` on the rest, which spreads them over `tasks` engine tasks and runs
`udfs.generation.run_partition` in mapInPandas (under a GPU ResourceProfile when `gpu.enabled`). Each
task commits its rows chunk by chunk during the task, through one of two sinks:

- `direct` (delta-rs backend): the task commits each chunk itself with `RsTable.append`/`merge`, tagged
  with an app id `<table>:<stage>:<run>:<job nonce>:<partition>-<chunk>`, so a retried task skips the
  chunks it already committed and a commit race is retried.
- `staged` (any backend; the only choice with delta-spark, whose writer exists only on the driver): the
  task writes each chunk as a Parquet file under `staging_dir/<table>/` (temp name + rename, so a file
  is whole or absent), and the driver merges staged files into the tables on their keys after the job,
  whether it failed or not, and again at the start of the next run (`LLMJob.recover`), which picks up
  what a crashed driver left. Merging is idempotent, so a file merged twice changes nothing.
"""

from __future__ import annotations

import functools
import hashlib
import json
import fcntl
import logging
import os
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import pyarrow as pa
import yaml
from pydantic import BaseModel, ConfigDict, Field
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from instructlake.jobs.config import CONF_DIR, Config, GpuConf, LLMStageConf
from instructlake.jobs.runs import StageResult
from instructlake.jobs.store import TableStore, arrow_schema
from instructlake.udfs.rs_table import RsTable
from instructlake.jobs.tables import KEYS, SCHEMAS
from instructlake.udfs import generation as G
from instructlake.udfs.engine import PROMPT_TOO_LONG, Backend, SamplingConfig
from instructlake.udfs.text import prompt_id

log = logging.getLogger(__name__)

ERRORS = "generation_errors"
TMP_PREFIX = ".tmp-"  # staged files being written; hidden from staged_files


# ---- model files ---------------------------------------------------------------------------------------


class SamplingFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    n: int = Field(ge=1)
    temperature: float = Field(ge=0)
    top_p: float = Field(gt=0, le=1)
    max_tokens: int | None = Field(ge=1)
    seed: int


class ModelFile(BaseModel):
    """conf/models/*.yaml: one model's engine arguments and sampling defaults."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    model: str  # hub id or path; with `build`, a path relative to run.work_dir
    name: str | None = None  # recorded in rows (responses.model, ids); default: `model` as written
    build: Literal["tiny-chat"] | None = None  # build this local model there on first use (udfs.tiny_model)
    build_seed: int = 0  # its weights' seed: another seed, another model
    backend: Backend = "vllm"
    engine_args: dict[str, Any] = Field(default_factory=dict)
    sampling: SamplingFile
    chat_template: str | None = None  # a template string or a path to a .jinja file


@dataclass(frozen=True)
class ResolvedModel:
    name: str
    path: str  # what the engine loads
    backend: str
    engine_args: dict[str, Any]
    sampling: SamplingConfig
    chat_template: str | None


def find_conf_file(path: str) -> Path:
    """A path as given (absolute, or from the working dir), else relative to the repo or the conf dir."""
    p = Path(path).expanduser()
    candidates = [p] if p.is_absolute() else [p, CONF_DIR.parent / p, CONF_DIR / p]
    if not p.is_absolute() and len(p.parts) > 1 and p.parts[0] == "conf":  # conf/models/x.yaml, conf packaged
        candidates.append(CONF_DIR / Path(*p.parts[1:]))
    for c in candidates:
        if c.is_file():
            return c.resolve()
    raise FileNotFoundError(f"model config {path!r} not found (looked in the working dir and {CONF_DIR.parent})")


def _ensure_tiny_model(out: Path, seed: int) -> None:
    from instructlake.udfs.tiny_model import is_built

    if is_built(out, seed):
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f".{out.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two runs sharing a work dir build it once
        if is_built(out, seed):
            return
        # A subprocess, so the driver never imports torch/transformers for it.
        log.info("building the tiny local chat model in %s", out)
        proc = subprocess.run(
            [sys.executable, "-m", "instructlake.udfs.tiny_model", str(out), "--seed", str(seed)], capture_output=True, text=True, timeout=600
        )
        if proc.returncode:
            raise RuntimeError(f"building the tiny model failed:\n{proc.stderr[-3000:]}")


def _read_template(value: str | None) -> str | None:
    if value and "{" not in value and Path(value).expanduser().is_file():
        return Path(value).expanduser().read_text(encoding="utf-8")
    return value


def resolve_model(llm: LLMStageConf, conf: Config) -> ResolvedModel:
    """The stage's model: its model file, then the stage's overrides (model, backend, engine_args,
    sampling, chat_template); builds the tiny local model on first use."""
    file = find_conf_file(llm.model_conf)
    mf = ModelFile.model_validate(yaml.safe_load(file.read_text(encoding="utf-8")) or {})
    model = llm.model or mf.model
    name = llm.model or mf.name or mf.model
    path = Path(model).expanduser()
    if mf.build and not llm.model:
        path = path if path.is_absolute() else Path(conf.run.work_dir) / path
        _ensure_tiny_model(path, mf.build_seed)
        resolved = str(path.resolve())
    else:
        resolved = str(path.resolve()) if path.exists() else model  # a local dir, else a hub id
    overrides = {k: v for k, v in llm.sampling.model_dump().items() if v is not None}
    sampling = SamplingConfig(**{**mf.sampling.model_dump(), **overrides})
    return ResolvedModel(
        name=name,
        path=resolved,
        backend=llm.backend or mf.backend,
        engine_args={**mf.engine_args, **llm.engine_args},
        sampling=sampling,
        chat_template=_read_template(llm.chat_template or mf.chat_template),
    )


def engine_spec(model: ResolvedModel, llm: LLMStageConf, conf: Config) -> dict[str, Any]:
    env = {}
    if token := conf.secrets.get("hf_token"):
        env["HF_TOKEN"] = token  # gated models on clusters that reach the hub
    return dict(
        backend=model.backend,
        model=model.path,
        device=llm.device,
        engine_args=dict(model.engine_args),
        chat_template=model.chat_template,
        cpu_threads=llm.cpu_threads,
        env=env,
        scratch_dir=str(Path(conf.run.work_dir).resolve() / "engine"),
    )


def digest(text: str | None) -> str | None:
    """A short stable id of a template (chat or prompt) for generation configs."""
    return hashlib.sha256(text.encode()).hexdigest()[:16] if text else None


def base_gen_config(model: ResolvedModel, **extra: Any) -> dict[str, Any]:
    """What identifies an output besides the prompt (and the row's task): model, sampling, template."""
    s = model.sampling
    template = digest(model.chat_template)
    return dict(
        model=model.name, n=s.n, temperature=s.temperature, top_p=s.top_p, max_tokens=s.max_tokens, seed=s.seed,
        chat_template=template, **extra,
    )  # fmt: skip


def llm_task(ctx: Any, llm: LLMStageConf, model: ResolvedModel, kind: str, **fields: Any) -> G.LLMTask:
    """The engine task of an LLM stage: what every stage takes from its config and model, plus the
    stage's own `fields` (gen_config, system_prompt, template, target_lang)."""
    return G.LLMTask(
        kind=kind,
        model=model.name,
        engine=engine_spec(model, llm, ctx.conf),
        sampling=model.sampling,
        run_id=ctx.run_id,
        chat_template=model.chat_template,
        batch_size=llm.batch_size,
        chunk_rows=llm.chunk_rows,
        progress_interval_s=llm.progress_interval_s,
        fault_after_chunks=llm.fault_after_chunks,
        **fields,
    )


# ---- GPU resource profile ------------------------------------------------------------------------------


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


# ---- sinks ---------------------------------------------------------------------------------------------


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


def _filesystem(uri: str):
    """(pyarrow filesystem, path) for a local path or a URI (s3a:// read as s3://)."""
    from pyarrow import fs as pafs

    if "://" not in uri:
        return pafs.LocalFileSystem(), str(Path(uri).expanduser().resolve())
    if uri.startswith("s3a://"):
        uri = "s3://" + uri[len("s3a://") :]
    return pafs.FileSystem.from_uri(uri)


def staging_root(conf: Config, llm: LLMStageConf) -> str:
    if llm.staging_dir:
        return llm.staging_dir.rstrip("/")
    if conf.tables.catalog:
        raise ValueError("staged commits need a staging_dir on shared storage (a Volume path) when tables.catalog is set")
    root = conf.run.lake_root
    return f"{root.rstrip('/')}/_staging" if "://" in root else str(Path(root).resolve() / "_staging")


@dataclass(frozen=True)
class StagingSink:
    """Writes each chunk as Parquet files under `<root>/<table>/` for the driver to merge."""

    root: str
    schemas: dict[str, pa.Schema]
    order: tuple[str, ...]
    scope: str  # <stage>-<run>-<job nonce>, safe in a file name

    def _path(self, name: str, chunk_key: str) -> tuple[Any, str]:
        fs, base = _filesystem(self.root)
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

    fs, base = _filesystem(root)
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

    fs, base = _filesystem(root)
    selector = pafs.FileSelector(f"{base}/{name}", allow_not_found=True)
    names = sorted(i.base_name for i in fs.get_file_info(selector) if i.type == pafs.FileType.File)
    return [f"{root}/{name}/{n}" for n in names if n.endswith(".parquet") and not n.startswith((".", "_"))]


def commit_staged(store: TableStore, root: str, names: tuple[str, ...], *, run_id: str, stage: str) -> dict[str, dict]:
    """Merge every staged file of `names` into its table on the table's keys, then delete the files.

    Backend-neutral (TableStore.merge): used by the staged sink on both Delta backends. Idempotent: a
    crash after the merge and before the delete leaves files whose rows are already in the table, and
    merging them again commits nothing. A key staged twice keeps its newest row.
    """
    out: dict[str, dict] = {}
    for name in names:
        files = staged_files(root, name)
        if not files:
            continue
        keys = list(KEYS[name])
        latest = Window.partitionBy(*keys).orderBy(F.col("created_at").desc_nulls_last(), F.col("run_id").desc())
        df = (
            store.spark.read.schema(SCHEMAS[name])
            .parquet(*files)
            .withColumn("_rank", F.row_number().over(latest))
            .filter("_rank = 1")
            .drop("_rank")
        )
        # A fresh stage label per call: the store's idempotent-write ids include it, and two merges in one
        # run (recovery, then the job's own files) must not be mistaken for one.
        result = store.merge(df, name, run_id=run_id, stage=f"{stage}-staged-{uuid.uuid4().hex[:8]}")
        fs, base = _filesystem(root)
        for f in files:
            fs.delete_file(f"{base}/{name}/{f.rsplit('/', 1)[1]}")
        out[name] = {"files": len(files), "inserted": result.inserted, "updated": result.updated}
        log.info("%s: merged %d staged file(s) into %s: %s", stage, len(files), name, out[name])
    return out


# ---- prompt selection ----------------------------------------------------------------------------------


def _prompt_ids(texts: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
    for b in texts:
        yield b.assign(prompt_id=[prompt_id(t) for t in b["text"]])


def prompt_table(ctx: Any, llm: LLMStageConf) -> str:
    """`prompts` (curated) or `prompts_raw` (straight from ingest); auto: prompts when curate is a stage of
    the configured pipeline."""
    if llm.input != "auto":
        return llm.input
    return "prompts" if "curate" in ctx.conf.pipeline.stages else "prompts_raw"


def select_prompts(ctx: Any, llm: LLMStageConf, corpora: Literal["exclude", "only"] = "exclude") -> DataFrame:
    """(prompt_id, text, lang) of the selected prompts: sources, language filter, then a seeded fraction,
    then the first `limit` in a seeded hash order. The selection depends only on the table and these
    settings, never on partitioning, so a re-run selects the same prompts and only completes what is
    missing. Rows from a corpus source (`reverse.sources`) are fragments, not prompts: excluded, or with
    `corpora="only"` the only rows selected (a prompt found in both kinds of source counts as both)."""
    table = prompt_table(ctx, llm)
    if table == "prompts":
        df = ctx.store.read("prompts").select("prompt_id", "text", "lang", "sources")
    else:
        raw = ctx.store.read("prompts_raw").select("text", F.col("source_lang").alias("lang"), "source")
        raw = raw.filter(F.col("text").isNotNull() & (F.length("text") > 0))
        df = raw.mapInPandas(_prompt_ids, "text string, lang string, source string, prompt_id string")
        df = df.groupBy("prompt_id").agg(
            F.min("text").alias("text"), F.min("lang").alias("lang"), F.collect_set("source").alias("sources")
        )
    corpus = ctx.conf.reverse.sources
    if corpus:
        in_corpus = F.arrays_overlap("sources", F.array(*[F.lit(s) for s in corpus]))
        if corpora == "only":
            df = df.filter(in_corpus)
        else:  # a prompt that also came from a prompt source stays a prompt
            df = df.filter(~in_corpus | F.exists("sources", lambda s: ~s.isin(corpus)))
    elif corpora == "only":
        raise ValueError("reverse.sources is empty: name the ingest sources whose rows are corpus fragments")
    return sample(df.drop("sources"), llm.langs, llm.fraction, llm.limit, llm.sample_seed)


def sample(df: DataFrame, langs: list[str], fraction: float, limit: int | None, seed: int) -> DataFrame:
    if langs:
        df = df.filter(F.col("lang").isin(langs))
    rank = F.xxhash64(F.lit(seed), F.col("prompt_id"))
    if fraction < 1:
        df = df.filter(F.pmod(rank, F.lit(1_000_000_007)) < F.lit(int(fraction * 1_000_000_007)))
    if limit is not None:
        df = df.orderBy(rank, "prompt_id").limit(limit)
    return df


def prior_errors(store: TableStore, task: G.LLMTask, gen_config_ids: list[str]) -> DataFrame:
    """Per (prompt_id, task): attempts so far and whether an error is permanent for this run: a prompt too
    long for the context it failed in, unless the task's configured max_model_len is larger than that."""
    too_long = F.col("error_class") == PROMPT_TOO_LONG
    context = task.engine["engine_args"].get("max_model_len")
    if context is not None:
        # Rows written before the column existed have no max_model_len: still permanent.
        too_long &= F.coalesce(F.col("max_model_len") >= F.lit(int(context)), F.lit(True))
    return (
        store.read(ERRORS)
        .filter((F.col("model") == task.model) & F.col("gen_config_id").isin(gen_config_ids))
        .groupBy("prompt_id", "task")
        .agg(F.max("attempt").alias("prev_attempts"), F.max(too_long.cast("int")).alias("permanent"))
    )


def error_status(store: TableStore) -> DataFrame:
    """generation_errors with `resolved`: a later run produced the output the failed request was for (its
    prompt, model and gen_config_id have a response, translation or judgement). The error row stays as
    the history of that request."""
    outputs = [
        (t, store.read(t).select("prompt_id", "model", "gen_config_id")) for t in ("responses", "translations") if store.exists(t)
    ]
    if store.exists("reverse_steps"):
        outputs.append(("reverse_steps", store.read("reverse_steps").select(F.col("fragment_id").alias("prompt_id"), "model", "gen_config_id")))
    if store.exists("judgements"):
        outputs.append(("judgements", store.read("judgements").select(F.col("response_id").alias("prompt_id"), F.col("judge_model").alias("model"), "gen_config_id")))
    errors = store.read(ERRORS)
    if not outputs:
        return errors.withColumn("resolved", F.lit(False))
    done = functools.reduce(DataFrame.unionByName, [df for _, df in outputs]).distinct().withColumn("resolved", F.lit(True))
    keys = ["prompt_id", "model", "gen_config_id"]
    return errors.join(done, keys, "left").withColumn("resolved", F.coalesce("resolved", F.lit(False)))


def triage(
    selected: DataFrame, done: DataFrame, errors: DataFrame, max_attempts: int
) -> tuple[DataFrame, dict[str, int]]:
    """Tag every selected prompt in one pass: `done` (its key is in `done`), `given_up` (failed for good:
    prompt too long, or max_attempts runs), or `todo` with this run's `attempt`. Returns the tagged rows,
    persisted (unpersist them when finished), and the count per tag."""
    keys = list(done.columns)
    done = done.distinct().withColumn("_done", F.lit(True))
    df = selected.join(done, keys, "left").join(errors, ["prompt_id", "task"], "left")
    prev = F.coalesce("prev_attempts", F.lit(0))
    state = (
        F.when(F.col("_done").isNotNull(), F.lit("done"))
        .when((F.coalesce("permanent", F.lit(0)) == 1) | (prev >= max_attempts), F.lit("given_up"))
        .otherwise(F.lit("todo"))
    )
    df = (
        df.withColumn("_state", state)
        .withColumn("attempt", (prev + 1).cast("int"))
        .drop("_done", "prev_attempts", "permanent")
        .persist()
    )
    counts = {"done": 0, "given_up": 0, "todo": 0}
    counts.update({r["_state"]: r["count"] for r in df.groupBy("_state").count().collect()})
    return df, counts


# ---- the engine job ------------------------------------------------------------------------------------


def _executor_id() -> str | None:
    """This executor's id where the cluster manager tells it: SPARK_EXECUTOR_ID (Kubernetes), or the
    executorId of the log URL a standalone worker hands its executor. Elsewhere (YARN) None: the task
    attempt id, which every summary row carries, finds the executor in the Spark UI and event log."""
    if executor := os.environ.get("SPARK_EXECUTOR_ID"):
        return executor
    query = urllib.parse.urlparse(os.environ.get("SPARK_LOG_URL_STDERR", "")).query
    return next(iter(urllib.parse.parse_qs(query).get("executorId", [])), None)


def _engine_task(task: G.LLMTask, sink: G.Sink, batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
    import socket

    from pyspark import TaskContext

    from instructlake.udfs.engine import spark_gpu_addresses

    tc = TaskContext.get()
    gpus = spark_gpu_addresses(tc)
    placement = dict(
        host=socket.gethostname(), executor=_executor_id(), task_attempt_id=tc.taskAttemptId(),
        gpus=",".join(gpus) if gpus else None,
    )  # fmt: skip
    yield from G.run_partition(batches, task, sink, tc.partitionId(), tc.attemptNumber(), placement)


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
    main: str  # "responses" | "translations" | "judgements" (task.table)

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
            self.ctx.store.create(name)
        if self.mode != "staged":
            return {}
        return commit_staged(
            self.ctx.store, staging_root(self.ctx.conf, self.llm), self.tables, run_id=self.ctx.run_id, stage=self.stage
        )

    def _sink(self, nonce: str) -> G.Sink:
        store = self.ctx.store
        if self.mode == "direct":
            rs = {n: store.rs_table(n) for n in self.tables}
            keys = {self.main: KEYS[self.main] if self.main != "responses" else None, ERRORS: KEYS[ERRORS]}
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

            fs, base = _filesystem(sink.root)
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
        job = parts.mapInPandas(functools.partial(_engine_task, self.task, sink), G.SUMMARY_DDL, profile=profile)
        expected = total * (self.task.sampling.n if self.main == "responses" else 1)
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
        return {**stats, **_summarize(rows, time.perf_counter() - started)}


def _summarize(rows: list[dict[str, Any]], wall_s: float) -> dict[str, Any]:
    """Stage stats from the tasks' summary rows (one per chunk)."""
    done = [r for r in rows if r["status"] in ("committed", "already_committed")]
    tokens = sum(r["completion_tokens"] for r in done)
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
        "engine_s": round(gen_s, 3),  # summed over tasks
        "device_s": round(device_s, 3),  # engine seconds x the devices each task held
        "devices": "gpu" if any(r["gpus"] for r in done) else "cpu",
        "requests": sum(r["prompts"] for r in done),
        "tokens_per_s": round(tokens / wall_s, 1) if wall_s else 0.0,
        "tokens_per_engine_s": round(tokens / gen_s, 1) if gen_s else 0.0,
        "engine_builds_per_worker": {str(k): v for k, v in sorted(builds.items())},
        "engine_start_s": [round(s, 2) for s in starts],
        "engine_version": next((r["engine_version"] for r in rows if r["engine_version"]), None),
        "engine_tasks": _engine_tasks(rows),
    }


def _engine_tasks(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per task attempt that finished (a lost attempt's summaries never reach the driver): where
    it ran, the GPUs Spark assigned it, the CUDA_VISIBLE_DEVICES of the engine that served it (null when
    every chunk was skipped and no engine was needed), its chunks."""
    tasks: dict[tuple[int, int], dict[str, Any]] = {}
    for r in sorted(rows, key=lambda r: (r["partition"], r["attempt"], r["chunk"])):
        t = tasks.setdefault(
            (r["partition"], r["attempt"]),
            {k: r[k] for k in ("partition", "attempt", "task_attempt_id", "host", "executor", "pid", "gpus")}
            | {"cuda_visible_devices": None, "chunks": 0},
        )
        t["cuda_visible_devices"] = t["cuda_visible_devices"] or r["cuda_visible_devices"]
        t["chunks"] += 1
    return list(tasks.values())


