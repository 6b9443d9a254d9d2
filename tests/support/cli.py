"""Helpers of the cli tests, shared by their tiers."""

import subprocess
import sys

from tests.support.lake import REPO


def cli(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "instructlake.jobs.cli", *args], cwd=REPO, capture_output=True, text=True, env=env, timeout=300
    )


