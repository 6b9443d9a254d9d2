"""Decontamination against arena-hard on a corpus of N prompts: recall, false positives and the step's time
against the exact-dedup step of the same curate run; prints Markdown.

    python benchmarks/decontam_bench.py [--n 200000] [--partitions 8] [--work DIR]

The corpus is curate_bench's (the 9,417 real prompts of ../shared/data, the 500 arena-hard prompts among
them, plus synthetic ones from the real prompts' vocabulary), and two planted copies of every arena-hard
item: one with a word replaced in the middle (`edited`), one inside a longer prompt (`embedded`). The
benchmark is the arena-hard file itself, so its 500 real rows are the `exact` copies. Every other row
flagged is a false positive.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import curate_bench
from curate_bench import REPO, SHARED, write_prompts_raw

ARENA = SHARED / "en_arena_hard_v0.1.jsonl"
WRAP = [("Quick question from my homework: ", " Please keep it short."), ("My boss asked me this today. ", " Thanks!")]


def planted_rows(items: list[dict]) -> list[tuple[str, str]]:
    """(source_id, text): an edited and an embedded copy of every item."""
    rng = random.Random(7)
    out = []
    for item in items:
        words = item["text"].split()
        words[len(words) // 2] = rng.choice(["really", "kindly", "quickly"])
        head, tail = WRAP[len(out) // 2 % 2]
        out.append((f"edited:{item['id']}", " ".join(words)))
        out.append((f"embedded:{item['id']}", head + item["text"] + tail))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200_000, help="prompts in prompts_raw before the planted copies")
    ap.add_argument("--partitions", type=int, default=8)
    ap.add_argument("--work", default=None)
    args = ap.parse_args()

    import pandas as pd
    from pyspark import cloudpickle

    from instructlake.jobs.config import load_config
    from instructlake.jobs.runs import Context, run_stage
    from instructlake.jobs.tables import SCHEMAS

    cloudpickle.register_pickle_by_value(curate_bench)  # its generator runs in Spark workers, which cannot import it
    work = Path(args.work or REPO / ".scratch" / "decontam_bench" / f"n{args.n}").resolve()
    shutil.rmtree(work, ignore_errors=True)
    sets = [
        f"run.lake_root={work / 'lake'}", f"run.work_dir={work / 'work'}", f"spark.shuffle_partitions={args.partitions}",
        'spark.conf={"spark.ui.enabled": "false"}', "curate.near_dedup.enabled=false", "curate.langid.langs=[]",
        f"curate.decontaminate.benchmarks=[{{name: arena_hard, path: '{ARENA}'}}]",
    ]  # fmt: skip
    ctx = Context.create(load_config([REPO / "conf" / "local.yaml"], sets))
    items = [json.loads(line) for line in ARENA.open(encoding="utf-8")]
    write_s = write_prompts_raw(ctx, args.n, args.partitions)
    planted = planted_rows(items)
    stamp = pd.Timestamp("2026-01-01", tz="UTC")
    df = pd.DataFrame(
        {"source": "planted", "source_id": [s for s, _ in planted], "turn": 0, "text": [t for _, t in planted], "source_lang": "en",
         "moderation_flagged": False, "redacted": False, "source_model": None, "layout": "bench", "input_file": "decontam_bench",
         "record_index": range(len(planted)), "run_id": "bench", "created_at": stamp}  # fmt: skip
    )
    ctx.store.append(ctx.spark.createDataFrame(df[SCHEMAS["prompts_raw"].names], SCHEMAS["prompts_raw"]), "prompts_raw", run_id="bench", stage="bench-planted")

    start = time.perf_counter()
    result = run_stage(ctx, "curate")
    curate_s = time.perf_counter() - start
    rejected = ctx.store.read("prompts_rejected").select("source", "source_id", "reason").toPandas()
    flagged = rejected[rejected["reason"].str.startswith("contaminated:")]
    item_ids = {i["id"] for i in items}
    arena = rejected["source_id"].isin(item_ids) & (rejected["source"] != "planted")  # the real arena-hard rows
    exact = flagged[flagged["source_id"].isin(item_ids) & (flagged["source"] != "planted")]
    found = {"exact": len(exact)}
    for kind in ("edited", "embedded"):
        mine = flagged[flagged["source_id"].str.startswith(kind + ":")]
        found[kind] = int((mine["reason"] == "contaminated:arena_hard:" + mine["source_id"].str.split(":", n=1).str[1]).sum())
    # Arena-hard rows the exact-dedup or filter steps removed never reach decontamination: count what reached it.
    raw = ctx.store.read("prompts_raw").select("source", "source_id").toPandas()
    arena_rows = int((raw["source_id"].isin(item_ids) & (raw["source"] != "planted")).sum())
    reached = arena_rows - int((arena & ~rejected["reason"].str.startswith("contaminated:")).sum())
    false = flagged[~(flagged["source_id"].isin(item_ids) | (flagged["source"] == "planted"))]
    clean_rows = args.n - arena_rows
    steps = result.stats["steps"]
    d = result.stats["decontaminate"]

    print(f"## decontamination against arena-hard ({len(item_ids)} items) on {args.n + len(planted):,} prompts (local[2], {args.partitions} partitions)\n")
    print(f"write prompts_raw: {write_s:.1f} s; curate: {curate_s:.1f} s\n")
    print("| copies | found | of |\n|---|---:|---:|")
    print(f"| exact (the real arena-hard rows that reached the step) | {found['exact']} | {reached} |")
    for kind in ("edited", "embedded"):
        print(f"| {kind} | {found[kind]} | {len(items)} |")
    print(f"\nfalse positives: {len(false)} of {clean_rows:,} other rows ({len(false) / max(1, clean_rows):.5%})")
    for _, r in false.head(10).iterrows():
        print(f"  - {r['source']}/{r['source_id']}: {r['reason']}")
    print(f"\n| step | seconds |\n|---|---:|\n| exact_dedup | {steps['exact_dedup']:.1f} |\n| decontaminate | {steps['decontaminate']:.1f} |")
    print(f"\ndecontaminate / exact_dedup: **{steps['decontaminate'] / steps['exact_dedup']:.2f}x** (budget 1.5x); run record: {json.dumps(d)}")


if __name__ == "__main__":
    main()
