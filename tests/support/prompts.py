"""Real prompts from ../shared/data, written straight into `prompts` as curate would (LLM stage tests skip ingest and curate)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from instructlake.jobs.tables import SCHEMAS
from instructlake.udfs.text import normalize, prompt_id

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)


def real_prompts(shared_data: Path, name: str, n: int) -> list[str]:
    with open(shared_data / "prompts" / name, encoding="utf-8") as f:
        return [json.loads(line)["text"] for _, line in zip(range(n), f)]


def seed_prompts(ctx, texts_langs: list[tuple[str, str]]) -> list[str]:
    """Write prompts (as curate would) and return their ids."""
    rows = [
        dict(prompt_id=prompt_id(normalize(t)), text=normalize(t), lang=lang, run_id="seed", created_at=NOW)
        for t, lang in texts_langs
    ]
    ctx.store.append(ctx.spark.createDataFrame(rows, SCHEMAS["prompts"]), "prompts", run_id="seed", stage="test")
    return [r["prompt_id"] for r in rows]


