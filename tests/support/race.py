"""Threads started together, for the tests of what holds when writers race."""

from __future__ import annotations

import threading
from collections.abc import Callable


def race(attempt: Callable[[int], object], n: int, refused_by: type[BaseException], during: Callable[[], object] | None = None) -> tuple[list[int], list[int]]:
    """attempt(0..n-1) in n threads released at once (with `during` run here as they go); the indexes
    whose attempt returned and those whose attempt raised `refused_by`."""
    done, refused, go = [], [], threading.Barrier(n + 1)

    def run(i: int) -> None:
        go.wait()
        try:
            attempt(i)
            done.append(i)
        except refused_by:
            refused.append(i)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    go.wait()
    if during is not None:
        during()
    for t in threads:
        t.join()
    return sorted(done), sorted(refused)
