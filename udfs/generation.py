"""Executor side of the LLM stages (translate, generate, judge, reverse): input rows -> engine requests ->
table rows, one chunk at a time.

`run_partition` is the body of a Spark task: it sorts its prompts, cuts them into chunks of
`chunk_rows`, generates each chunk with the worker's engine (`engine.get_engine`, built once per Python
worker) in engine calls of `batch_size` requests, and hands the chunk's rows to a *sink* that commits
them (a Delta commit, or a staged Parquet file) on a background thread while the engine already works on
the next chunk. A crash loses at most the chunk in flight. It yields one small summary row per chunk.

The sink is anything with `done(chunk_key) -> bool` and `commit(chunk_key, rows) -> bool`, where rows
maps a table name to a list of row dicts; the driver side (instructlake.jobs.llm) provides them, so this
module stays free of driver imports. Nothing here imports vllm or torch until an engine is built.

Ids are deterministic: a request's seed is derived from the configured seed and the prompt id (its output
does not depend on batching, partitioning or re-runs), and a response id hashes the prompt id, model,
generation config and sample index.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol

import pandas as pd

from instructlake.udfs import engine as E
from instructlake.udfs.prompts import (
    INSTRUCT_TEMPLATE,
    JUDGE_TEMPLATE,
    PASSAGE_TEMPLATE,
    TRANSLATE_TEMPLATE,
    instruct_messages,
    judge_messages,
    lang_name,
    parse_judge_score,
    respond_messages,
    translate_messages,
)
from instructlake.udfs.text import content_hash, normalize, prompt_id

log = logging.getLogger("instructlake.generate")

RESPOND, RESPOND_TRANSLATED, TRANSLATE, JUDGE = "respond", "respond_translated", "translate", "judge"
# Reverse instructions: one kind, four steps (the rows' task), each a job of its own over the previous
# step's outputs; a row's prompt_id is the fragment's prompt id in every step.
REVERSE = "reverse"
TO_EN, INSTRUCT, SCORE, TO_NATIVE = "reverse_to_en", "reverse_instruct", "reverse_score", "reverse_to_native"
REVERSE_STEPS = (TO_EN, INSTRUCT, SCORE, TO_NATIVE)
# Columns the driver hands to every LLM task. `prompt_id` is the id of the unit of work (the request key,
# its seed, the key of its generation_errors row); `task` is the row's task (respond / respond_translated /
# translate / judge); `attempt` is this run's attempt number for the row (previous failures + 1).
# A judge row is one response: prompt_id = the response id, origin_prompt_id = its prompt id, text = the
# prompt text (the question), plus `answer` = the response text. A reverse row: text = the step's input
# (passage, or instruction), lang = the fragment's language, `answer` = the English passage (score step).
INPUT_COLUMNS = ("prompt_id", "origin_prompt_id", "task", "lang", "text", "attempt")
JUDGE_COLUMNS = (*INPUT_COLUMNS, "answer")
TABLES = {"respond": "responses", "translate": "translations", "judge": "judgements", "reverse": "reverse_steps"}
SUMMARY_DDL = (
    "partition INT, attempt INT, chunk INT, pid INT, status STRING, prompts INT, rows_out INT, errors INT, "
    "prompt_tokens BIGINT, completion_tokens BIGINT, gen_s DOUBLE, commit_s DOUBLE, engine_start_s DOUBLE, "
    "engine_builds INT, engine_version STRING, partition_rows INT, error_classes STRING, "
    "host STRING, executor STRING, task_attempt_id BIGINT, gpus STRING, cuda_visible_devices STRING"
)
PLACEMENT_KEYS = ("host", "executor", "task_attempt_id", "gpus")  # where a task ran (jobs.llm fills them in)


class InjectedJobFault(RuntimeError):
    """Raised by the test-only `fault_after_chunks` switch, after that many chunks were committed."""


@dataclass(frozen=True)
class LLMTask:
    """Everything an engine task needs; built on the driver (jobs.llm.llm_task, from the stage's config:
    no defaults here for what the YAML sets), pickled into the Spark tasks."""

    kind: Literal["respond", "translate", "judge", "reverse"]
    model: str  # the model's name as recorded in rows
    engine: Mapping[str, Any]  # EngineSpec keys (engine.EngineSpec.from_dict)
    sampling: E.SamplingConfig  # request seeds are derived from sampling.seed and the prompt id
    gen_config: Mapping[str, Any]  # what identifies the output; with the row's task, gen_config_id hashes it
    run_id: str
    batch_size: int  # requests per engine call (the unit that a failure bisects)
    chunk_rows: int  # prompts per commit (a crash loses at most one chunk)
    progress_interval_s: float
    system_prompt: str | None = None  # respond, judge: a system message before the prompt
    chat_template: str | None = None
    target_lang: str | None = None  # translate: language code of the translation
    template: str | None = None  # translate, judge, reverse: the step's prompt template; None: the udfs.prompts default
    fault_after_chunks: int | None = None  # TEST ONLY: fail each task after this many committed chunks
    inject_faults: Sequence[str] = field(default_factory=tuple)  # TEST ONLY: prompt ids whose requests raise

    @property
    def table(self) -> str:
        """The main table this task's rows go to."""
        return TABLES[self.kind]

    @property
    def input_columns(self) -> tuple[str, ...]:
        return JUDGE_COLUMNS if self.kind in (JUDGE, REVERSE) else INPUT_COLUMNS

    def config_id(self, row_task: str) -> str:
        """gen_config_id of this task's rows of one kind (respond / respond_translated / translate)."""
        return gen_config_id({**self.gen_config, "task": row_task})

    def spec(self) -> dict[str, Any]:
        spec = dict(self.engine)
        if self.inject_faults:
            spec["inject_faults"] = list(self.inject_faults)
        return spec


class Sink(Protocol):
    def done(self, chunk_key: str) -> bool: ...

    def commit(self, chunk_key: str, rows: Mapping[str, list[dict[str, Any]]]) -> bool: ...


def gen_config_id(gen_config: Mapping[str, Any]) -> str:
    return content_hash(json.dumps(gen_config, sort_keys=True, ensure_ascii=False, default=str))


def request_seed(base_seed: int, key: str) -> int:
    """A per-request seed (31 bits) from the configured seed and the prompt id."""
    return int(content_hash(str(base_seed), key, size=8), 16) & 0x7FFFFFFF


def response_id(prompt_id_: str, model: str, gen_config_id_: str, sample_index: int) -> str:
    return content_hash(prompt_id_, model, gen_config_id_, str(sample_index))


def requests_for(task: LLMTask, frame: pd.DataFrame) -> list[E.Request]:
    """One request per input row, keyed by its prompt_id column (a response id for judge), with its own seed."""
    out = []
    answers = frame["answer"] if task.kind in (JUDGE, REVERSE) else [None] * len(frame)
    for pid, text, lang, answer, step in zip(frame["prompt_id"], frame["text"], frame["lang"], answers, frame["task"]):
        if task.kind == REVERSE:
            messages = reverse_messages(task, step, text or "", lang, answer)
        elif task.kind == JUDGE:
            template = task.template or JUDGE_TEMPLATE
            messages = judge_messages(text or "", answer or "", template=template, system=task.system_prompt)
        elif task.kind == TRANSLATE:
            messages = translate_messages(
                text, lang_name(task.target_lang or ""), lang_name(lang or ""), template=task.template or TRANSLATE_TEMPLATE
            )
        else:
            messages = respond_messages(text, task.system_prompt)
        sampling = E.SamplingConfig(**{**asdict(task.sampling), "seed": request_seed(task.sampling.seed, pid)})
        out.append(E.Request(pid, messages, sampling))
    return out


def reverse_messages(task: LLMTask, step: str, text: str, lang: str | None, passage: str | None) -> list[dict[str, str]]:
    """The request of one reverse-instruction step for one fragment."""
    if step == TO_EN:
        return translate_messages(text, "English", lang_name(lang), template=task.template or PASSAGE_TEMPLATE)
    if step == INSTRUCT:
        return instruct_messages(text, template=task.template or INSTRUCT_TEMPLATE)
    if step == SCORE:
        return judge_messages(text, passage or "", template=task.template or JUDGE_TEMPLATE, system=task.system_prompt)
    if step == TO_NATIVE:
        return translate_messages(text, lang_name(lang), "English", template=task.template or TRANSLATE_TEMPLATE)
    raise ValueError(f"unknown reverse step {step!r}")


def rows_for(
    task: LLMTask, frame: pd.DataFrame, results: Sequence[E.Result], engine_version: str, max_model_len: int
) -> dict[str, list[dict[str, Any]]]:
    """Table rows for one chunk: responses (or translations, or judgements) and generation_errors."""
    now = dt.datetime.now(dt.timezone.utc)
    s = task.sampling
    gids = {t: task.config_id(t) for t in set(frame["task"])}
    backend = task.engine.get("backend")
    out: dict[str, list[dict[str, Any]]] = {"generation_errors": []}
    main: list[dict[str, Any]] = []
    out[task.table] = main
    for row, res in zip(frame.itertuples(index=False), results, strict=True):
        gid = gids[row.task]
        if res.error_class:
            out["generation_errors"].append(
                dict(
                    prompt_id=row.prompt_id, model=task.model, gen_config_id=gid, task=row.task,
                    error_class=res.error_class, message=(res.error or "")[:4000], max_model_len=max_model_len,
                    attempt=int(row.attempt),
                    run_id=task.run_id, created_at=now,
                )
            )  # fmt: skip
            continue
        if task.kind == JUDGE:
            # Kept whether or not a score parses: the output is the rationale, the score null when it has none.
            text = res.texts[0]
            main.append(
                dict(
                    response_id=row.prompt_id, prompt_id=row.origin_prompt_id, judge_model=task.model,
                    score=parse_judge_score(text), rationale=text, finish_reason=res.finish_reasons[0],
                    prompt_tokens=res.prompt_tokens, completion_tokens=res.completion_tokens[0], gen_config_id=gid,
                    run_id=task.run_id, created_at=now,
                )
            )  # fmt: skip
            continue
        if task.kind == REVERSE:
            text = res.texts[0]
            main.append(
                dict(
                    fragment_id=row.prompt_id, step=row.task, model=task.model, gen_config_id=gid, lang=row.lang,
                    input=row.text, text=text, score=parse_judge_score(text) if row.task == SCORE else None,
                    finish_reason=res.finish_reasons[0], prompt_tokens=res.prompt_tokens,
                    completion_tokens=res.completion_tokens[0], run_id=task.run_id, created_at=now,
                )
            )  # fmt: skip
            continue
        if task.kind == TRANSLATE:
            text = res.texts[0]
            main.append(
                dict(
                    prompt_id=row.prompt_id, target_lang=task.target_lang, model=task.model,
                    translated_prompt_id=prompt_id(normalize(text)), source_lang=row.lang, source_text=row.text,
                    text=text, finish_reason=res.finish_reasons[0], prompt_tokens=res.prompt_tokens,
                    completion_tokens=res.completion_tokens[0], gen_config_id=gid, run_id=task.run_id, created_at=now,
                )
            )  # fmt: skip
            continue
        for i, (text, reason, tokens) in enumerate(zip(res.texts, res.finish_reasons, res.completion_tokens)):
            main.append(
                dict(
                    response_id=response_id(row.prompt_id, task.model, gid, i), prompt_id=row.prompt_id,
                    origin_prompt_id=row.origin_prompt_id, task=row.task, lang=row.lang, model=task.model,
                    gen_config_id=gid, sample_index=i, n=s.n, temperature=s.temperature, top_p=s.top_p,
                    max_tokens=s.max_tokens, seed=s.seed, system_prompt=task.system_prompt, prompt_text=row.text, text=text,
                    finish_reason=reason, prompt_tokens=res.prompt_tokens, completion_tokens=tokens,
                    latency_s=res.latency_s, engine=backend, engine_version=engine_version,
                    run_id=task.run_id, created_at=now,
                )
            )  # fmt: skip
    return out


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

    Chunk keys are `<partition>-<chunk>`; the sink scopes them to the job. A retried task attempt (attempt
    > 0) sees the same rows in the same order (the driver pins its inputs), so it skips chunks the sink
    already holds without generating them again. `placement` (PLACEMENT_KEYS: host, executor, task attempt
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
    committed = 0
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

    def settle(block_all: bool) -> Iterator[pd.DataFrame]:
        """Yield the summaries of finished commits (all of them when block_all)."""
        nonlocal committed
        while pending and (block_all or pending[0][0].done()):
            future, row, submitted = pending.pop(0)
            written = future.result()  # re-raises a failed commit: the task fails, the chunk is not lost
            committed += 1
            row.update(status="committed" if written else "already_committed", commit_s=time.perf_counter() - submitted)
            if not written:
                row["rows_out"] = 0
            yield pd.DataFrame([row])
            if task.fault_after_chunks is not None and committed >= task.fault_after_chunks:
                raise InjectedJobFault(f"fault_after_chunks={task.fault_after_chunks}: partition {partition} stops")

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="commit") as pool:
        try:
            for chunk, start in enumerate(range(0, total, task.chunk_rows)):
                part = frame.iloc[start : start + task.chunk_rows]
                key = f"{partition}-{chunk}"
                if attempt > 0 and sink.done(key):
                    progress.add(len(part), 0)
                    yield pd.DataFrame([summary(chunk, "skipped", prompts=len(part))])
                    continue
                if engine is None:
                    t0 = time.perf_counter()
                    builds = E.build_counts.get(spec_key, 0)
                    engine = E.get_engine(task.spec())
                    engine_start = time.perf_counter() - t0 if E.build_counts.get(spec_key, 0) > builds else 0.0
                    progress.restart()
                t0 = time.perf_counter()
                requests = requests_for(task, part)
                results: list[E.Result] = []
                for b in range(0, len(requests), task.batch_size):
                    results += engine.generate(requests[b : b + task.batch_size])
                gen_s = time.perf_counter() - t0
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
                pending.append((pool.submit(sink.commit, key, rows), row, time.perf_counter()))
                progress.add(len(part), tokens)
            yield from settle(block_all=True)
        finally:
            for future, _, _ in pending:  # a failure elsewhere: let the commit in flight finish first
                future.exception()
    if total:
        progress.add(0, 0, force=True)
