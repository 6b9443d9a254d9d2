"""`instructlake` run as a user runs it: a subprocess of the venv's interpreter."""

import subprocess
import sys

from tests.support.lake import REPO


def cli(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "instructlake.jobs.cli", *args], cwd=REPO, capture_output=True, text=True, env=env, timeout=300
    )


