"""Engine backends for tests only: faults on demand, through the seam that custom engines use.

It exists only for tests: the pipeline's failure handling (a failing request becomes an error row, bisection
keeps the rest of its batch, a dead engine fails the task after the chunks it committed, a re-run resumes)
needs failures at a chosen request or a chosen moment, and a real engine never produces those on demand.
The shipped package carries no hook for them: this module is an engine backend named by its import path
(udfs.engine.backend_factory), e.g.

    --set generate.backend=tests.support.engines:faulty
    --set 'generate.engine_args={inner: vllm, fail_keys: [<prompt id>], die_after_calls: 1}'
    --set 'generate.engine_args={inner: scripted, hold_after_calls: 1, hold_until: /tmp/go}'

The stage merges those engine_args over the model file's, so the inner engine gets the model's own
arguments. Spark's Python workers import this module where the engine is built: tests/conftest.py puts the
repo root on their PYTHONPATH.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path

from instructlake.udfs import engine as E

FAULT_KEYS = ("inner", "fail_keys", "die_after_calls", "hold_after_calls", "hold_until")  # the rest are the inner's
HOLD_TIMEOUT_S = 600.0


class InjectedFault(RuntimeError):
    """A request that fails: any batch holding it raises, so the engine's bisection isolates it."""


class EngineDeadError(RuntimeError):
    """The engine died. Named like vLLM's, which udfs.engine.FATAL_ERRORS treats as fatal: the engine is
    marked dead and the Spark task fails (no bisection, no error rows)."""


def _task_attempt() -> int | None:
    """The Spark task attempt this call runs in (None outside a Spark task)."""
    try:
        from pyspark import TaskContext
    except ImportError:
        return None
    tc = TaskContext.get()
    return tc.taskAttemptId() if tc is not None else None


class FaultyEngine(E.BatchEngine):
    """Wraps a real engine: requests of `fail_keys` fail before reaching it (a batch holding one raises, a
    streamed one is refused on entry), and once a Spark task (outside Spark: the engine) made
    `die_after_calls` calls, its next one dies with EngineDeadError; once it made `hold_after_calls`, its
    next call waits until the file `hold_until` exists (a run whose engine tasks go on while its driver is
    stalled). A call is a generate call, or a chunk a streaming engine handed back. Counting per task
    attempt keeps a worker's engine, reused across tasks, from carrying one task's count into the next."""

    def __init__(
        self, inner: E.BatchEngine, fail_keys: Sequence[str] = (), die_after_calls: int | None = None,
        hold_after_calls: int | None = None, hold_until: str | None = None,
    ):  # fmt: skip
        self.inner, self.fail_keys, self.die_after_calls = inner, frozenset(fail_keys), die_after_calls
        self.hold_after_calls, self.hold_until = hold_after_calls, hold_until
        self.version, self.max_model_len, self.streams = inner.version, inner.max_model_len, inner.streams
        self.calls, self._task = 0, _task_attempt()

    def _call(self) -> None:
        """Count a call of this task; hold it or let the engine die as configured."""
        if (task := _task_attempt()) != self._task:
            self._task, self.calls = task, 0
        self.calls += 1
        if self.hold_after_calls is not None and self.calls > self.hold_after_calls and self.hold_until:
            deadline = time.monotonic() + HOLD_TIMEOUT_S
            while not Path(self.hold_until).exists() and time.monotonic() < deadline:
                time.sleep(0.1)

    def _dies(self) -> bool:
        return self.die_after_calls is not None and self.calls > self.die_after_calls

    def generate(self, requests: Sequence[E.Request]) -> list[E.Result]:
        self._call()
        return super().generate(requests)

    def stream(self, chunks, window: int, batch_size: int):
        if not self.streams:  # call-based: every chunk is a generate call, counted there
            yield from super().stream(chunks, window, batch_size)
            return
        if (task := _task_attempt()) != self._task:
            self._task, self.calls = task, 0
        with contextlib.closing(super().stream(chunks, window, batch_size)) as inner:  # dying drops what is in flight
            for item in inner:
                self._call()
                if self._dies():
                    self._mark_dead()
                    raise EngineDeadError(f"die_after_calls={self.die_after_calls}: chunk {self.calls} of task {self._task}")
                yield item

    def _run_batch(self, requests: Sequence[E.Request]) -> list[E.Result]:
        if self._dies():
            raise EngineDeadError(f"die_after_calls={self.die_after_calls}: generate call {self.calls} of task {self._task}")
        if bad := sorted(r.key for r in requests if r.key in self.fail_keys):
            raise InjectedFault(f"injected fault for {bad}")
        return self.inner._run_batch(requests)

    def _prompt(self, messages: list[dict[str, str]]) -> tuple[object, int]:
        return self.inner._prompt(messages)

    def _submit(self, rid: str, request: E.Request, prompt: object) -> None:
        if request.key in self.fail_keys:
            raise InjectedFault(f"injected fault for {request.key}")
        self.inner._submit(rid, request, prompt)

    def _poll(self) -> list[tuple[str, E.Result]]:
        return self.inner._poll()

    def _abort(self, rids: Sequence[str]) -> None:
        self.inner._abort(rids)

    def count_prompt_tokens(self, messages: list[dict[str, str]]) -> int:
        return self.inner.count_prompt_tokens(messages)

    def close(self) -> None:
        self.inner.close()


def faulty(spec: E.EngineSpec, device: str) -> FaultyEngine:
    """Backend factory: the `inner` backend (default vllm) built from the same spec without this engine's
    keys, wrapped in a FaultyEngine with the FAULT_KEYS of `spec.engine_args`."""
    args = dict(spec.engine_args)
    own = {k: args.pop(k) for k in FAULT_KEYS if k in args}
    inner_spec = dataclasses.replace(spec, backend=own.get("inner", "vllm"), engine_args=args)
    inner = E.backend_factory(inner_spec.backend)(inner_spec, device)
    return FaultyEngine(
        inner, own.get("fail_keys") or (), own.get("die_after_calls"), own.get("hold_after_calls"), own.get("hold_until")
    )


class StepEngine(E.BatchEngine):
    """A streaming engine without a model, for the logic around one (windows, order, failures) in unit tests:
    a request finishes after as many steps as its last message has words and replies with that message; at
    most `max_num_seqs` run at once, the rest wait (as in vLLM); a request whose message contains `refuse`
    is refused on entry, and step number `fail_step` raises (once). `running` records how many requests
    ran in each step."""

    streams = True
    version, max_model_len = "step-1", 100

    def __init__(self, spec: E.EngineSpec | None = None, device: str = "cpu", max_num_seqs: int = 4,
                 refuse: str | None = None, fail_step: int | None = None):  # fmt: skip
        self.max_num_seqs, self.refuse, self.fail_step = max_num_seqs, refuse, fail_step
        self.queue: dict[str, list] = {}  # rid -> [steps left, request], in entry order
        self.steps, self.running, self.aborted, self.batches = 0, [], [], []

    def count_prompt_tokens(self, messages: list[dict[str, str]]) -> int:
        return len(messages[-1]["content"].split())

    def _run_batch(self, requests: Sequence[E.Request]) -> list[E.Result]:
        self.batches.append([r.key for r in requests])
        return self._drain(requests)

    def _submit(self, rid: str, request: E.Request, prompt: object) -> None:
        if self.refuse is not None and self.refuse in request.messages[-1]["content"]:
            raise ValueError(f"refused: {request.key}")
        self.queue[rid] = [self.count_prompt_tokens(request.messages), request]

    def _poll(self) -> list[tuple[str, E.Result]]:
        self.steps += 1
        if self.steps == self.fail_step:
            raise RuntimeError(f"step {self.steps} failed")
        running = list(self.queue)[: self.max_num_seqs]
        self.running.append(len(running))
        done = []
        for rid in running:
            self.queue[rid][0] -= 1
            if self.queue[rid][0] <= 0:
                text = self.queue.pop(rid)[1].messages[-1]["content"]
                done.append((rid, E.Result(rid, [text], ["stop"], len(text.split()), [len(text.split())], 0.0)))
        return done

    def _abort(self, rids: Sequence[str]) -> None:
        for rid in rids:
            if self.queue.pop(rid, None) is not None:
                self.aborted.append(rid)


def stepped(spec: E.EngineSpec, device: str) -> StepEngine:
    """Backend factory of a StepEngine; `engine_args` are its keyword arguments."""
    return StepEngine(spec, device, **{k: v for k, v in spec.engine_args.items() if k != "max_model_len"})
