"""The tuning half and the checking half of the shared data: every quality rule is tuned on the first and
its figures are reported on both, so a figure on the checking half is one the rule was not fitted to.

A row's half is a hash of its id, so it never changes, needs no stored list, and a row added to a shared
file does not move the others.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
HALVES = ("tuning", "checking")


def half(row_id: str) -> str:
    """`tuning` or `checking`, by the first byte of the id's SHA-256."""
    return HALVES[hashlib.sha256(row_id.encode()).digest()[0] % 2]
