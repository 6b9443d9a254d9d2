"""The response checks on the tuning half and the checking half of the shared answers; prints Markdown tables.

    python benchmarks/response_checks.py

wrong_language: answers that should be flagged (Llama-2-7b-chat's English answers to the Rakuda questions;
Dolly's human English answers to the first 84 open_qa questions, whose Japanese translations Dolly-ja holds
in the same order) and answers that should not (the other Rakuda models, gpt-3.5 on arena-hard, Dolly-ja's
and Dolly's own answers to their questions). The other checks: the 820 answers of ../shared/data/responses,
each firing read by hand (the labels of tests/unit/test_checks_real.py). A row's half is a hash of its
prompt's id (`halves.py`), so every answer to one question lands in the same half.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
from halves import HALVES, SHARED, half

from instructlake.udfs.checks import CHECKS, check_batch, prose_words
from instructlake.udfs.text import prose

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the hand-checked labels live beside their test
from tests.unit.test_checks_real import EXPECTED, KNOWN_FALSE

ALIGNED_DOLLY = 84  # Dolly-ja's open_qa rows in the order of the English file's, as far as they match


def rows(path: str) -> list[dict]:
    return [json.loads(line) for line in (SHARED / path).open(encoding="utf-8")]


def wrong_language_sets() -> pd.DataFrame:
    ja, en = rows("prompts/ja_dolly_15k_ja_v0_first5000.jsonl"), rows("prompts/en_dolly_open_qa.jsonl")
    ja_qa = [r for r in ja if r["category"] == "open_qa"][:ALIGNED_DOLLY]
    out = [("English answer to a Dolly-ja question", q["id"], q["text"], a["response"], "ja", True) for q, a in zip(ja_qa, en)]
    for r in rows("responses/ja_rakuda_v1_answers.jsonl"):
        llama = r["model"].startswith("meta-llama/Llama-2")
        out.append(("Llama-2's English Rakuda answer" if llama else "other Rakuda models", r["prompt_id"], r["prompt"], r["text"], "ja", llama))
    for r in rows("responses/en_arena_hard_v0.1_gpt-3.5-turbo-0125.jsonl"):
        out.append(("gpt-3.5 on arena-hard", r["prompt_id"], r["prompt"], r["text"], "en", False))
    out += [("Dolly-ja's own answer", r["id"], r["text"], r["response"], "ja", False) for r in ja]
    out += [("Dolly's own English answer", r["id"], r["text"], r["response"], "en", False) for r in en]
    return pd.DataFrame(out, columns=["set", "key", "prompt_text", "text", "lang", "should"])


def main() -> None:
    df = wrong_language_sets()
    df["half"] = df["key"].map(half)
    out = check_batch(df.assign(finish_reason="stop"))
    df["flagged"] = out["wrong_language"].to_numpy()
    df["judged_size"] = [prose_words(prose(t)) >= 5 for t in df["text"]]
    print("### wrong_language\n")
    print("| set | should flag | " + " | ".join(f"{h}: n | flagged" for h in HALVES) + " |")
    print("|---|---|" + "---:|---:|" * len(HALVES))
    for (name, should), g in df.groupby(["set", "should"], sort=False):
        cells = [f"{(s := g[g['half'] == h]).shape[0]} | {int(s.flagged.sum())}" for h in HALVES]
        print(f"| {name} | {'yes' if should else 'no'} | {' | '.join(cells)} |")
    for h in HALVES:
        s = df[df["half"] == h]
        pos, neg = s[s.should], s[~s.should]
        tp, fp = int(pos.flagged.sum()), int(neg.flagged.sum())
        long = pos[pos.judged_size]
        print(f"\n{h}: recall {tp}/{len(pos)} = {tp / len(pos):.3f} (of the {len(long)} with at least 5 words of prose: "
              f"{int(long.flagged.sum())}), false flags {fp} of {len(neg)}, precision {tp / max(1, tp + fp):.3f}")  # fmt: skip

    answers = pd.DataFrame([r for f in sorted((SHARED / "responses").glob("*.jsonl")) for r in map(json.loads, f.open(encoding="utf-8"))])
    got = check_batch(pd.DataFrame({"text": answers["text"], "finish_reason": "stop", "prompt_text": answers["prompt"], "lang": answers["lang"]}))
    halves = answers["prompt_id"].map(half)
    print("\n### every check on the 820 answers (fired / right by hand)\n")
    print("| check | " + " | ".join(HALVES) + " |\n|---|" + "---:|" * len(HALVES))
    for check in CHECKS:
        cells = []
        for h in HALVES:
            fired = set(answers["id"][got[check] & halves.eq(h)])
            right = {i for i in fired if i in EXPECTED.get(check, {}) and (check, i) not in KNOWN_FALSE}
            cells.append(f"{len(fired)} / {len(right)}")
        print(f"| {check} | {' | '.join(cells)} |")
    print("\nanswers per half: " + ", ".join(f"{h} {int(halves.eq(h).sum())}" for h in HALVES))


if __name__ == "__main__":
    main()
