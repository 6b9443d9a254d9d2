"""Reading judgements and exported records back (judge and best-of-n export tests)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pandas as pd


def judgements(ctx) -> pd.DataFrame:
    return ctx.store.read("judgements").toPandas()


def read_export(root: Path) -> dict[str, dict]:
    """prompt_id -> the exported record (one per prompt in a best-of-n export)."""
    out: dict[str, list] = {}
    for f in sorted(root.glob("lang=*/part-*.json.gz")):
        with gzip.open(f, "rt", encoding="utf-8") as fh:
            for line in fh:
                rec = json.loads(line)
                out.setdefault(rec["prompt_id"], []).append(rec)
    return out


