"""Subprocesses the tests start and expect to succeed (the engine probe, the tiny model build)."""

from __future__ import annotations

import subprocess
import sys


def run_checked(args: list[str], timeout: int) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{args} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


