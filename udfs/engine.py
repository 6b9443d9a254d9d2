"""The engine layer: one chat-generation interface over vLLM and transformers, one engine per worker.

`get_engine(spec)` builds an engine lazily on first use and caches it in this (installed) module, so a
Spark Python worker reuses it across partitions and jobs; a cache defined in a driver script would be
pickled by value and rebuilt in every task. A worker holds one engine: building one for another spec
(the next model of a multi-model run) closes the previous one first, so two models never share a GPU's
memory. Importing this module imports neither vllm nor torch.

A batch never fails because of one row: a prompt that does not fit the context becomes a
`prompt_too_long` result, and a batch the backend raises on is bisected until the failing requests are
isolated, each of which becomes an error result. Only a dead engine is fatal.

`BatchEngine.stream` feeds an engine chunks of requests and hands each chunk's results back as soon as
its last request finished. A backend that can take requests one at a time while it runs (vLLM:
`LLMEngine.add_request` / `step`) keeps a window of chunks inside the engine, so new requests start as
others finish: synchronous calls would let the engine drain at the end of each call, its last long
answers running nearly alone. Call-based backends (transformers, scripted) serve one chunk at a time.

Backends are a registry, `BACKENDS` (vllm, transformers, scripted). An engine spec's `backend` may also be
an import path `package.module:attr` naming a factory `(spec: EngineSpec, device: str) -> BatchEngine` of
one's own (an engine client, say): `backend_factory` imports it where the engine is built, on the executor,
so its module must be importable there (installed, or on the workers' PYTHONPATH).
"""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import importlib
import itertools
import json
import logging
import os
import re
import sys
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

log = logging.getLogger(__name__)

PROMPT_TOO_LONG = "prompt_too_long"
# `package.module:attr` (attr may be dotted): a backend factory of one's own, imported where the engine is built
BACKEND_IMPORT_PATH = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*")
FATAL_ERRORS = frozenset({"EngineDeadError"})  # the engine is unusable: retrying rows would be pointless
_REQUEST_IDS = itertools.count()  # ids of requests inside a streaming engine: unique in this process
T = TypeVar("T")

# Measured on CPU machines (ENVIRONMENT.md): an in-process engine starts in 2-3 s and works in forked
# and daemonic workers; one OpenMP thread avoids oversubscription when several workers share cores.
CPU_ENV = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_OMP_THREADS_BIND": "nobind"}
# Without an explicit KV cache size start-up fails on these machines; torch.compile only costs time.
CPU_ENGINE_ARGS: dict[str, Any] = {"kv_cache_memory_bytes": 64 << 20, "enforce_eager": True}
CPU_MIN_BATCHED_TOKENS = 8192  # per-step token budget of a CPU engine without chunked prefill (see vllm_args)
# CUDA must be created only inside vLLM's own workers.
GPU_ENV = {"VLLM_WORKER_MULTIPROC_METHOD": "spawn"}
SCRATCH_ENV = ("TMPDIR", "VLLM_RPC_BASE_PATH", "VLLM_CACHE_ROOT", "TORCHINDUCTOR_CACHE_DIR")
TRANSFORMERS_ARGS = frozenset({"dtype", "max_model_len"})  # the rest of a model's vLLM args do not apply


@dataclass(frozen=True, kw_only=True)
class SamplingConfig:
    """Sampling parameters of one request; `seed` makes its output independent of batching. max_tokens
    has no default: the model file (conf/models/*.yaml) or the stage's config says it."""

    n: int = 1
    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int | None  # None: up to the context length
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n < 1 or self.temperature < 0 or not 0 < self.top_p <= 1:
            raise ValueError(f"invalid sampling config: {self}")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1 or None, got {self.max_tokens}")
        if self.temperature == 0 and self.n != 1:
            raise ValueError("greedy sampling (temperature 0) returns one sample: n must be 1")


@dataclass(frozen=True)
class Request:
    key: str
    messages: list[dict[str, str]]
    sampling: SamplingConfig


@dataclass(frozen=True)
class Result:
    """n texts for one request, or an error (`error_class` set, `texts` empty)."""

    key: str
    texts: list[str]
    finish_reasons: list[str]
    prompt_tokens: int
    completion_tokens: list[int]
    latency_s: float  # seconds from the request's entry into the engine to its end (call-based: the call's)
    error: str | None = None
    error_class: str | None = None

    @classmethod
    def failed(cls, key: str, error_class: str, error: str, prompt_tokens: int = 0) -> Result:
        return cls(key, [], [], prompt_tokens, [], 0.0, error, error_class)


class Engine(Protocol):
    version: str
    max_model_len: int

    def generate(self, requests: Sequence[Request]) -> list[Result]: ...

    def stream(
        self, chunks: Iterable[tuple[T, Sequence[Request]]], window: int, batch_size: int
    ) -> Iterator[tuple[T, list[Result]]]: ...

    def count_prompt_tokens(self, messages: list[dict[str, str]]) -> int: ...


@dataclass(frozen=True)
class EngineSpec:
    """What to build. `get_engine` accepts this or the same keys as a plain dict."""

    backend: str  # a name in BACKENDS, or an import path `package.module:attr` (backend_factory)
    model: str  # local path, or a hub id where the cluster can reach one
    device: Literal["auto", "cpu", "cuda"] = "auto"
    engine_args: Mapping[str, Any] = field(default_factory=dict)  # vllm.LLM keyword arguments
    chat_template: str | None = None  # overrides the tokenizer's template
    cpu_threads: int = 1  # OMP/torch threads of a CPU engine; Spark would otherwise give it all cores
    env: Mapping[str, str] = field(default_factory=dict)  # set before the engine is built
    scratch_dir: str | None = None  # where vLLM's temp files, sockets and caches go

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any]) -> EngineSpec:
        unknown = set(spec) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown engine spec keys: {sorted(unknown)}")
        out = cls(**spec)
        try:
            check_backend(out.backend)  # the name only: an import path is imported where the engine is built
        except ValueError as exc:
            raise ValueError(f"invalid engine spec: {exc}") from None
        if out.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"invalid engine spec: device={out.device!r}")
        return out

    def cache_key(self) -> str:
        """Stable across processes and key order."""
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


class BatchEngine(ABC):
    """Shared request handling: context-length check, bisection around `_run_batch` failures, and the
    streaming loop over `_submit` / `_poll` / `_abort` for backends that set `streams`."""

    version: str
    max_model_len: int
    dead = False  # set when a fatal error left the engine unusable; get_engine then rebuilds
    streams = False  # the backend implements _submit, _poll and _abort (requests enter while it runs)

    @abstractmethod
    def _run_batch(self, requests: Sequence[Request]) -> list[Result]:
        """Generate for every request, in order; may raise for the whole batch."""

    @abstractmethod
    def count_prompt_tokens(self, messages: list[dict[str, str]]) -> int:
        """Prompt length after the chat template, as the engine will see it."""

    def _prompt(self, messages: list[dict[str, str]]) -> tuple[Any, int]:
        """What `_submit` takes for these messages, and its length in tokens. A backend that tokenizes to
        count returns the token ids, so a streamed prompt is rendered and tokenized once."""
        return None, self.count_prompt_tokens(messages)

    def _submit(self, rid: str, request: Request, prompt: Any) -> None:
        """Streaming backends: put one request (its `_prompt`) into the running engine; raising fails
        this request only."""
        raise NotImplementedError

    def _poll(self) -> list[tuple[str, Result]]:
        """Streaming backends: one engine step; the requests it finished, by rid (their Result's key and
        latency are filled in by the caller). Raising fails every request in the engine."""
        raise NotImplementedError

    def _abort(self, rids: Sequence[str]) -> None:
        """Streaming backends: drop these requests (finished or unknown ones are ignored)."""
        raise NotImplementedError

    def _mark_dead(self) -> None:
        self.dead = True

    def _raise_if_fatal(self, exc: BaseException) -> None:
        if type(exc).__name__ in FATAL_ERRORS:
            self._mark_dead()
            raise exc

    def close(self) -> None:  # noqa: B027 -- a default: an engine without a model (scripted) frees nothing
        """Free what the engine holds (its model's memory); it is unusable afterwards."""

    def _check(self, requests: Sequence[Request]) -> tuple[dict[int, Result], list[tuple[int, Request, Any]]]:
        """Per-row failures before the engine (a prompt that does not fit, messages the template rejects),
        by position, and the requests that may run, with their `_prompt`."""
        failed: dict[int, Result] = {}
        runnable: list[tuple[int, Request, Any]] = []
        for i, req in enumerate(requests):
            try:
                prompt, n_tokens = self._prompt(req.messages)
            except Exception as exc:  # malformed messages or a template that rejects them: this row only
                failed[i] = Result.failed(req.key, type(exc).__name__, str(exc))
                continue
            # Leave room for the requested output; vLLM needs at least one output token.
            budget = self.max_model_len - (req.sampling.max_tokens or 1)
            if n_tokens > budget:
                msg = f"prompt has {n_tokens} tokens; max_model_len {self.max_model_len} leaves {budget}"
                failed[i] = Result.failed(req.key, PROMPT_TOO_LONG, msg, n_tokens)
            else:
                runnable.append((i, req, prompt))
        return failed, runnable

    def generate(self, requests: Sequence[Request]) -> list[Result]:
        results, runnable = self._check(requests)
        done = self._isolate([r for _, r, _ in runnable])
        results.update((i, res) for (i, _, _), res in zip(runnable, done, strict=True))
        return [results[i] for i in range(len(requests))]

    def _in_calls(self, requests: Sequence[Request], batch_size: int) -> list[Result]:
        return [res for b in range(0, len(requests), batch_size) for res in self.generate(requests[b : b + batch_size])]

    def _isolate(self, requests: Sequence[Request]) -> list[Result]:
        if not requests:
            return []
        try:
            return self._run_batch(requests)
        except Exception as exc:
            self._raise_if_fatal(exc)
            if len(requests) == 1:
                log.warning("request %s failed: %s: %s", requests[0].key, type(exc).__name__, exc)
                return [Result.failed(requests[0].key, type(exc).__name__, str(exc))]
            mid = len(requests) // 2
            return self._isolate(requests[:mid]) + self._isolate(requests[mid:])

    def _drain(self, requests: Sequence[Request]) -> list[Result]:
        """`_run_batch` of a streaming backend: every request in, steps until all are done; raises (after
        dropping the batch's requests from the engine) when a request or a step fails, so the caller bisects."""
        rids = [str(next(_REQUEST_IDS)) for _ in requests]
        start = time.perf_counter()
        done: dict[str, Result] = {}
        try:
            for rid, req in zip(rids, requests, strict=True):
                self._submit(rid, req, self._prompt(req.messages)[0])
            while len(done) < len(rids):
                done.update(self._poll())
        except BaseException:
            self._abort(rids)
            raise
        latency = time.perf_counter() - start
        return [dataclasses.replace(done[rid], key=req.key, latency_s=latency) for rid, req in zip(rids, requests, strict=True)]

    def stream(
        self, chunks: Iterable[tuple[T, Sequence[Request]]], window: int, batch_size: int
    ) -> Iterator[tuple[T, list[Result]]]:
        """(tag, results in request order) per chunk of `chunks` ((tag, requests) pairs, taken lazily), as
        soon as the chunk's last request finished: not necessarily in input order.

        A streaming backend holds up to `window` chunks inside the engine and takes in the next chunk when
        one finishes; a row fails alone as in `generate` (too long, or refused by `_submit`). When an engine
        step raises, the unfinished requests of the chunks in flight are dropped from the engine and run
        again through `generate` in calls of `batch_size`, which bisects around the failing ones. Closing
        the iterator early drops the requests still in flight, so a reused engine starts clean. Other
        backends run one chunk at a time through `generate`, in calls of `batch_size`.
        """
        if not self.streams:
            for tag, requests in chunks:
                yield tag, self._in_calls(requests, batch_size)
            return
        source = iter(chunks)
        flights: dict[int, tuple[T, Sequence[Request], dict[int, Result]]] = {}  # admission order
        where: dict[str, tuple[int, int, float]] = {}  # rid -> (flight, position, when it entered)
        admitted = itertools.count()
        exhausted = False
        try:
            while True:
                while not exhausted and len(flights) < window:
                    item = next(source, None)
                    if item is None:
                        exhausted = True
                        break
                    tag, requests = item
                    results, runnable = self._check(requests)
                    flight = next(admitted)
                    flights[flight] = (tag, requests, results)
                    for i, req, prompt in runnable:
                        rid = str(next(_REQUEST_IDS))
                        try:
                            self._submit(rid, req, prompt)
                        except Exception as exc:
                            self._raise_if_fatal(exc)
                            log.warning("request %s failed: %s: %s", req.key, type(exc).__name__, exc)
                            results[i] = Result.failed(req.key, type(exc).__name__, str(exc))
                        else:
                            where[rid] = (flight, i, time.perf_counter())
                for flight in [f for f, (_, reqs, res) in flights.items() if len(res) == len(reqs)]:
                    tag, requests, results = flights.pop(flight)
                    yield tag, [results[i] for i in range(len(requests))]
                if not flights:
                    if exhausted:
                        return
                    continue
                try:
                    finished = self._poll()
                except Exception as exc:
                    self._raise_if_fatal(exc)
                    log.warning("engine step failed (%s: %s): re-running %d requests in calls", type(exc).__name__, exc, len(where))
                    self._abort(list(where))
                    where.clear()
                    for _, requests, results in flights.values():
                        redo = [i for i in range(len(requests)) if i not in results]
                        results.update(zip(redo, self._in_calls([requests[i] for i in redo], batch_size), strict=True))
                    continue
                now = time.perf_counter()
                for rid, res in finished:
                    flight, i, entered = where.pop(rid)
                    results = flights[flight][2]
                    results[i] = dataclasses.replace(res, key=flights[flight][1][i].key, latency_s=now - entered)
        finally:
            if where:
                self._abort(list(where))


def _prompt_ids(tokenizer: Any, messages: list[dict[str, str]], chat_template: str | None) -> list[int]:
    # Render then encode without special tokens: that is how vLLM tokenizes chat prompts, so the
    # count equals the prompt length the engine reports.
    text = tokenizer.apply_chat_template(
        messages, chat_template=chat_template, add_generation_prompt=True, tokenize=False
    )
    return tokenizer.encode(text, add_special_tokens=False)


def vllm_args(engine_args: Mapping[str, Any], device: str) -> dict[str, Any]:
    """`vllm.LLM` keyword arguments: the configured ones, plus what a CPU engine needs (unless set).

    On CPU, chunked prefill is turned off: vLLM 0.32 rolls a seeded request's generator back when it
    discards the token sampled after a partial prefill, and CPU generators cannot do that
    (`RuntimeError: CPU Generator does not use offset`), so a large batch of seeded requests with
    chunked prefill crashes the engine. Without chunking every prompt must fit one step's token budget.
    """
    args = dict(engine_args)
    if device != "cpu":
        return args
    extra = dict(CPU_ENGINE_ARGS)
    if "enable_chunked_prefill" not in args and args.get("max_model_len"):
        extra["enable_chunked_prefill"] = False
        extra["max_num_batched_tokens"] = max(int(args["max_model_len"]), CPU_MIN_BATCHED_TOKENS)
    return {**extra, **args}


class VllmEngine(BatchEngine):
    """vLLM's `LLMEngine` fed request by request (`add_request` / `step`), one SamplingParams per request so
    each carries its own seed. Prompts go in as the token ids of the chat template's rendering, the same ids
    `LLM.chat` would make (see _prompt_ids)."""

    streams = True

    def __init__(self, spec: EngineSpec, device: str):
        args = vllm_args(spec.engine_args, device)
        if device == "cpu":
            _set_torch_threads(spec.cpu_threads)
        import vllm
        from vllm.inputs import tokens_input
        from vllm.sampling_params import RequestOutputKind

        self.llm = vllm.LLM(model=spec.model, **args)
        self._sampling_params = vllm.SamplingParams
        self._tokens_input = tokens_input
        self._final_only = RequestOutputKind.FINAL_ONLY
        self.tokenizer = self.llm.get_tokenizer()
        self.chat_template = spec.chat_template
        self.max_model_len = self.llm.llm_engine.model_config.max_model_len
        self.version = f"vllm-{vllm.__version__}"

    def count_prompt_tokens(self, messages: list[dict[str, str]]) -> int:
        return len(_prompt_ids(self.tokenizer, messages, self.chat_template))

    def _prompt(self, messages: list[dict[str, str]]) -> tuple[list[int], int]:
        ids = _prompt_ids(self.tokenizer, messages, self.chat_template)
        return ids, len(ids)

    def _run_batch(self, requests: Sequence[Request]) -> list[Result]:
        return self._drain(requests)

    def params(self, request: Request) -> Any:
        """The request's vllm.SamplingParams."""
        s = request.sampling
        return self._sampling_params(
            n=s.n, temperature=s.temperature, top_p=s.top_p, max_tokens=s.max_tokens, seed=s.seed,
            output_kind=self._final_only,  # one output per request, when it is done
        )  # fmt: skip

    def _submit(self, rid: str, request: Request, prompt: list[int]) -> None:
        self.llm.llm_engine.add_request(rid, self._tokens_input(prompt), self.params(request))

    def _poll(self) -> list[tuple[str, Result]]:
        done = []
        for out in self.llm.llm_engine.step():
            if not out.finished:
                continue
            samples = sorted(out.outputs, key=lambda c: c.index)
            done.append(
                (
                    out.request_id,
                    Result(
                        key=out.request_id,
                        texts=[c.text for c in samples],
                        finish_reasons=[str(c.finish_reason) for c in samples],
                        prompt_tokens=len(out.prompt_token_ids or ()),
                        completion_tokens=[len(c.token_ids) for c in samples],
                        latency_s=0.0,
                    ),
                )
            )
        return done

    def _abort(self, rids: Sequence[str]) -> None:
        # Requests left in the engine would otherwise come out of a later step, mixed into other work.
        self.llm.llm_engine.abort_request(list(rids))

    def close(self) -> None:
        # An in-process engine core (CPU) frees with the LLM object; a multiprocess one (GPU) must be shut
        # down, or its process keeps the GPU memory.
        core = getattr(self.llm.llm_engine, "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()
        del self.llm
        _free_memory()


class TransformersEngine(BatchEngine):
    """CPU fallback: `generate` one request at a time (no padding, so greedy output matches vLLM)."""

    def __init__(self, spec: EngineSpec, device: str):
        args = {k: v for k, v in spec.engine_args.items() if k in TRANSFORMERS_ARGS}
        if device == "cpu":
            _set_torch_threads(spec.cpu_threads)
        import torch
        import transformers

        self._torch = torch
        self.device = "cuda" if device == "cuda" else "cpu"
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(spec.model)
        self.model = transformers.AutoModelForCausalLM.from_pretrained(spec.model, dtype=args.get("dtype", "auto")).to(
            self.device
        )
        self.model.eval()
        self.chat_template = spec.chat_template
        self.max_model_len = int(args.get("max_model_len") or self.model.config.max_position_embeddings)
        self.version = f"transformers-{transformers.__version__}"
        eos = self.model.generation_config.eos_token_id
        if eos is None:
            eos = self.tokenizer.eos_token_id
        self.eos_ids = set(eos) if isinstance(eos, list) else {eos}

    def count_prompt_tokens(self, messages: list[dict[str, str]]) -> int:
        return len(_prompt_ids(self.tokenizer, messages, self.chat_template))

    def close(self) -> None:
        del self.model
        _free_memory()

    def _run_batch(self, requests: Sequence[Request]) -> list[Result]:
        return [self._one(r) for r in requests]

    def _one(self, req: Request) -> Result:
        torch, s = self._torch, req.sampling
        ids = _prompt_ids(self.tokenizer, req.messages, self.chat_template)
        input_ids = torch.tensor([ids], device=self.device)
        greedy = s.temperature == 0
        kwargs: dict[str, Any] = dict(
            max_new_tokens=s.max_tokens or self.max_model_len - len(ids),
            do_sample=not greedy,
            num_return_sequences=s.n,
            eos_token_id=sorted(self.eos_ids),
            pad_token_id=self.tokenizer.pad_token_id,
        )
        if not greedy:
            kwargs.update(temperature=s.temperature, top_p=s.top_p, top_k=0)  # vLLM applies no top-k
        start = time.perf_counter()
        # A private RNG state per request: results do not depend on what ran before.
        with torch.random.fork_rng(devices=[]), torch.inference_mode():
            torch.manual_seed(s.seed)
            out = self.model.generate(input_ids, attention_mask=torch.ones_like(input_ids), **kwargs)
        latency = time.perf_counter() - start
        texts, reasons, counts = [], [], []
        for row in out[:, len(ids) :].tolist():
            stop = next((i for i, t in enumerate(row) if t in self.eos_ids), None)
            tokens = row if stop is None else row[: stop + 1]  # vLLM counts the stop token too
            # vLLM's incremental detokenizer never emits a trailing incomplete UTF-8 sequence; match it.
            texts.append(self.tokenizer.decode(tokens, skip_special_tokens=True).rstrip("\ufffd"))
            reasons.append("length" if stop is None else "stop")
            counts.append(len(tokens))
        return Result(req.key, texts, reasons, len(ids), counts, latency)


class ScriptedEngine(BatchEngine):
    """A deterministic engine without a model, for flow tests and demo variants: what a random tiny model
    never writes (a translation that finishes, a judge text with a parseable `[[n]]`, an instruction).

    `engine_args.rules` (conf/models/scripted.yaml): the first rule whose `match` regex is found in the
    last user message writes the reply, `reply` formatted with the match's named groups, `{head}` (the
    first 60 characters of the first group, else of the message), `{sample}` (the sample index) and `{score}`: an integer in the rule's
    `scores: [lo, hi]`, from a hash of the message, the request's seed and the sample index, so samples of
    one prompt score differently and a re-run scores the same. Tokens are whitespace-separated words.
    """

    def __init__(self, spec: EngineSpec, device: str):
        import re

        args = dict(spec.engine_args)
        self.rules = [(re.compile(r["match"]), r) for r in args.get("rules") or ()]
        if not self.rules:
            raise ValueError("the scripted backend needs engine_args.rules: [{match, reply}, ...]")
        self.max_model_len = int(args.get("max_model_len") or 4096)
        self.version = "scripted-1"

    def count_prompt_tokens(self, messages: list[dict[str, str]]) -> int:
        return sum(len((m.get("content") or "").split()) for m in messages) + 2 * len(messages)

    def _reply(self, text: str, seed: int, sample: int) -> str:
        for pattern, rule in self.rules:
            if m := pattern.search(text):
                lo, hi = rule.get("scores", (0, 10))
                digest = hashlib.sha256(f"{seed}:{sample}:{text}".encode()).digest()
                score = lo + int.from_bytes(digest[:4], "big") % (hi - lo + 1)
                groups = m.groupdict()
                head = " ".join((next(iter(groups.values()), None) or text).split())[:60]
                return rule["reply"].format(**groups, head=head, sample=sample, score=score)
        raise ValueError("no scripted rule matches the request (add a catch-all rule with match: '')")

    def _run_batch(self, requests: Sequence[Request]) -> list[Result]:
        out = []
        for req in requests:
            text = req.messages[-1]["content"]
            replies = [self._reply(text, req.sampling.seed, i) for i in range(req.sampling.n)]
            limit = req.sampling.max_tokens
            cut = [" ".join(r.split()[:limit]) if limit and len(r.split()) > limit else r for r in replies]
            out.append(
                Result(
                    key=req.key, texts=cut, finish_reasons=["length" if c != r else "stop" for c, r in zip(cut, replies)],
                    prompt_tokens=self.count_prompt_tokens(req.messages), completion_tokens=[len(c.split()) for c in cut],
                    latency_s=0.0,
                )
            )  # fmt: skip
        return out


def _free_memory() -> None:
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def _set_torch_threads(n: int) -> None:
    # The env var covers a torch not yet imported; set_num_threads covers one already imported.
    os.environ["OMP_NUM_THREADS"] = str(n)
    import torch

    torch.set_num_threads(n)


def spark_gpu_addresses(task_context: Any = None) -> list[str] | None:
    """GPU addresses Spark assigned to the current task (default: `TaskContext.get()`), or None."""
    if task_context is None:
        try:
            from pyspark import TaskContext
        except ImportError:
            return None
        task_context = TaskContext.get()
    gpu = task_context.resources().get("gpu") if task_context is not None else None
    return list(gpu.addresses) if gpu is not None and gpu.addresses else None


def bind_spark_gpus(task_context: Any = None) -> list[str] | None:
    """Point CUDA_VISIBLE_DEVICES at the task's Spark-assigned GPUs; must run before CUDA starts.

    Outside a Spark task, or in one without GPUs, the environment is left alone and None returned.
    """
    addresses = spark_gpu_addresses(task_context)
    if addresses:
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(addresses)
    return addresses


def _resolve_device(spec: EngineSpec) -> str:
    if spec.device != "auto":
        return spec.device
    gpu_host = Path("/dev/nvidiactl").exists() or os.environ.get("CUDA_VISIBLE_DEVICES")
    return "cuda" if gpu_host or spark_gpu_addresses() else "cpu"


def _prepare_env(spec: EngineSpec, device: str) -> None:
    for key, value in (CPU_ENV if device == "cpu" else GPU_ENV).items():
        os.environ.setdefault(key, value)
    if spec.scratch_dir:
        Path(spec.scratch_dir).mkdir(parents=True, exist_ok=True)
        os.environ.update({key: spec.scratch_dir for key in SCRATCH_ENV})
    os.environ.update(spec.env)


GPU_LOCK_WAIT_S = 300.0  # INSTRUCTLAKE_GPU_LOCK_WAIT_S overrides
_GPU_LOCKS: dict[str, Any] = {}  # GPU address -> its lock file, held while this process lives


def lock_gpus(addresses: Sequence[str], lock_dir: str | Path, wait_s: float | None = None) -> None:
    """One engine per GPU and node: an exclusive lock per GPU address, held for this process's life.

    Spark hands a task any idle Python worker of its executor, so a later engine task can land in a
    worker other than the one whose engine holds the GPU; a second engine there would run out of GPU
    memory. With the lock it waits instead: Spark stops Python workers that sat idle for a minute, and
    the kernel drops a dead holder's lock (and the GPU its memory). After `wait_s` it fails, naming the
    holder. Lock files live in `lock_dir` (node-local scratch) and carry the host name, so a shared
    directory does not confuse GPU 0 of one node with GPU 0 of another.
    """
    import fcntl
    import socket

    wait_s = float(os.environ.get("INSTRUCTLAKE_GPU_LOCK_WAIT_S", GPU_LOCK_WAIT_S)) if wait_s is None else wait_s
    host = socket.gethostname()
    for address in sorted(addresses):
        if address in _GPU_LOCKS:
            continue
        path = Path(lock_dir) / f"gpu-{host}-{address}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(path, "a+", encoding="utf-8")  # stays open: the lock lives as long as the file
        deadline = time.monotonic() + wait_s
        warned = False
        while True:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                fh.seek(0)
                holder = fh.read().strip() or "?"
                if time.monotonic() >= deadline:
                    fh.close()
                    raise RuntimeError(
                        f"GPU {address} on {host} is held by the engine of process {holder} for over {wait_s:.0f}s: "
                        "one engine per GPU; run one engine task per GPU slot (generate.tasks)"
                    ) from None
                if not warned:
                    log.warning("GPU %s is held by the engine of process %s; waiting for it", address, holder)
                    warned = True
                time.sleep(1.0)
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        _GPU_LOCKS[address] = fh


BackendFactory = Callable[[EngineSpec, str], BatchEngine]
# The registered backends by name. A name added here in a driver script is unknown to the executors' Python
# workers; name a factory of one's own by its import path instead (backend_factory).
BACKENDS: dict[str, BackendFactory] = {
    "vllm": VllmEngine,
    "transformers": TransformersEngine,
    "scripted": ScriptedEngine,
}


def _backend_forms() -> str:
    return f"one of {sorted(BACKENDS)}, or an import path 'package.module:factory' naming a factory (spec, device) -> BatchEngine"


def check_backend(name: Any) -> str:
    """`name` if it can name a backend: a registered one, or an import path `package.module:attr` (checked
    by its form only, so the driver need not import it); else ValueError. Config validation uses it."""
    if isinstance(name, str) and (name in BACKENDS or BACKEND_IMPORT_PATH.fullmatch(name)):
        return name
    raise ValueError(f"unknown engine backend {name!r}: {_backend_forms()}")


def backend_factory(name: str) -> BackendFactory:
    """The factory of backend `name`: a registered one (BACKENDS), else the `attr` of module `package.module`
    for an import path `package.module:attr`, imported now; else ValueError."""
    if name in BACKENDS:
        return BACKENDS[name]
    check_backend(name)
    module_name, _, attr = name.partition(":")
    try:
        factory: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            factory = getattr(factory, part)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"engine backend {name!r}: {type(exc).__name__}: {exc} ({_backend_forms()})") from exc
    if not callable(factory):
        raise ValueError(f"engine backend {name!r} is not callable: {_backend_forms()}")
    return factory


_ENGINES: dict[str, BatchEngine] = {}
_GPUS: dict[str, list[str] | None] = {}  # the GPUs a CUDA engine was built on (None: a CPU engine)
constructions = 0  # engines built by this process: one per worker is the goal
build_counts: dict[str, int] = {}  # engines built by this process per spec cache key (jobs report these)
visible_devices: dict[str, str | None] = {}  # CUDA_VISIBLE_DEVICES each engine was built with, per spec cache key


def _release(key: str) -> None:
    engine = _ENGINES.pop(key)
    log.info("closing the engine of spec %s before building the next one", key)
    try:
        engine.close()
    except Exception as exc:  # a half-dead engine still leaves; the next one is built regardless
        log.warning("closing engine %s failed: %s: %s", key, type(exc).__name__, exc)


def get_engine(spec: EngineSpec | Mapping[str, Any]) -> Engine:
    """The worker's engine for `spec`, built on first use and reused afterwards; one for another spec
    is closed first (one engine per worker)."""
    global constructions
    spec = spec if isinstance(spec, EngineSpec) else EngineSpec.from_dict(spec)
    key = spec.cache_key()
    engine = _ENGINES.get(key)
    if engine is None or engine.dead:
        for held in list(_ENGINES):  # another model's, or this spec's dead one
            _release(held)
        device = _resolve_device(spec)
        # Bound whatever the device: a CPU engine ignores the variable, and the job records it per task, so
        # GPU scheduling shows the same on a CPU test cluster as on a GPU one. Only CUDA memory needs the lock.
        gpus = bind_spark_gpus()
        if gpus and device == "cuda":
            lock_gpus(gpus, spec.scratch_dir or tempfile.gettempdir())
        _prepare_env(spec, device)
        log.info("building %s engine for %s on %s (gpus %s)", spec.backend, spec.model, device, gpus)
        engine = backend_factory(spec.backend)(spec, device)
        if not isinstance(engine, BatchEngine):
            raise TypeError(f"engine backend {spec.backend!r} built a {type(engine).__name__}, not a udfs.engine.BatchEngine")
        _ENGINES[key] = engine
        _GPUS[key] = gpus if device == "cuda" else None
        visible_devices[key] = os.environ.get("CUDA_VISIBLE_DEVICES")
        constructions += 1
        build_counts[key] = build_counts.get(key, 0) + 1
    elif _GPUS[key] is not None and (now := spark_gpu_addresses()) != _GPUS[key]:
        # Spark reuses workers across tasks: the engine stays on the GPU it was built on. Harmless
        # while each executor owns one GPU; with several, a task may run on another task's GPU.
        log.warning("engine built on GPUs %s now serves a task assigned %s", _GPUS[key], now)
    return engine
