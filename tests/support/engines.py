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
    """Wraps a real engine: batches holding a key of `fail_keys` raise InjectedFault before reaching it, and
    once a Spark task (outside Spark: the engine) made `die_after_calls` generate calls, its next call dies
    with EngineDeadError; once it made `hold_after_calls`, its next call waits until the file `hold_until`
    exists (a run whose engine tasks go on while its driver is stalled). Counting per task attempt keeps a
    worker's engine, reused across tasks, from carrying one task's count into the next."""

    def __init__(
        self, inner: E.BatchEngine, fail_keys: Sequence[str] = (), die_after_calls: int | None = None,
        hold_after_calls: int | None = None, hold_until: str | None = None,
    ):  # fmt: skip
        self.inner, self.fail_keys, self.die_after_calls = inner, frozenset(fail_keys), die_after_calls
        self.hold_after_calls, self.hold_until = hold_after_calls, hold_until
        self.version, self.max_model_len = inner.version, inner.max_model_len
        self.calls, self._task = 0, _task_attempt()

    def generate(self, requests: Sequence[E.Request]) -> list[E.Result]:
        if (task := _task_attempt()) != self._task:
            self._task, self.calls = task, 0
        self.calls += 1
        if self.hold_after_calls is not None and self.calls > self.hold_after_calls and self.hold_until:
            deadline = time.monotonic() + HOLD_TIMEOUT_S
            while not Path(self.hold_until).exists() and time.monotonic() < deadline:
                time.sleep(0.1)
        return super().generate(requests)

    def _run_batch(self, requests: Sequence[E.Request]) -> list[E.Result]:
        if self.die_after_calls is not None and self.calls > self.die_after_calls:
            raise EngineDeadError(f"die_after_calls={self.die_after_calls}: generate call {self.calls} of task {self._task}")
        if bad := sorted(r.key for r in requests if r.key in self.fail_keys):
            raise InjectedFault(f"injected fault for {bad}")
        return self.inner._run_batch(requests)

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
