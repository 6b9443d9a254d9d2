"""Benchmark decontamination as pure functions on real public items: the 500 arena-hard prompts and
Japanese Dolly rows stand in for an evaluation set; copies planted exact, edited and embedded in other
real prompts are found, and the other real prompts stay clean. The curate step is tests/spark/test_decontam.py."""

import random

from instructlake.udfs.decontam import Index


def index(items, name):
    idx = Index(ngram=13, char_ngram=30, min_ngrams=1, near_max_tokens=26, near_containment=0.7, char_near_containment=0.85, max_postings=50)
    for r in items:
        idx.add(name, r["id"], r["text"])
    return idx


def test_arena_hard_copies_are_found_and_other_real_prompts_are_not(real):
    idx = index(real["arena"], "arena_hard")
    rng = random.Random(0)
    found = {0: 0, 1: 0, 2: 0}
    sample = rng.sample(real["arena"], 90)
    for i, item in enumerate(sample):
        words = item["text"].split()
        words[rng.randrange(len(words))] = "really"
        copy = [item["text"], " ".join(words), f"Hi! My teacher gave us this, can you help me? {item['text']} Thanks a lot."][i % 3]
        found[i % 3] += idx.find(copy) == ("arena_hard", item["id"])
    assert found == {0: 30, 1: found[1], 2: 30} and found[1] >= 29  # one-word edits of 6-word items can escape
    # 8,917 real prompts of other sources (English and Japanese) contain no arena-hard item.
    assert [t[:60] for t in real["clean"] if idx.find(t)] == []


def test_japanese_items_by_character_ngrams(real):
    items, rest = real["ja"][:200], real["ja"][200:]
    idx = index(items, "ja_dolly")
    texts = {r["text"] for r in items}
    item = next(r for r in items if len(r["text"]) > 40)
    assert idx.find(item["text"]) == ("ja_dolly", item["id"])
    assert idx.find("友達に聞かれたのですが、" + item["text"] + "よろしくお願いします。") == ("ja_dolly", item["id"])
    # A different question that shares most of a short item's characters is not a copy of it.
    assert idx.find("コンピュータを発明したのは誰？") is None and idx.find("電話を発明したのは誰？") is not None
    hits = [r["text"] for r in rest if r["text"] not in texts and idx.find(r["text"])]
    # Two of 4,795: one holds a whole item ("…惑星はいくつあるのでしょうか？"), one Dolly's 31-character
    # "…リストアップしてください。カンマ区切りでリストアップしてください。" instruction.
    assert len(hits) == 2 and any("惑星はいくつあるのでしょうか" in h for h in hits)

