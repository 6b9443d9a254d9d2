"""MinHash-LSH on real prompts: planted near-duplicates are found, distinct prompts are not."""

from __future__ import annotations

import itertools
import json
import random
import subprocess
import sys
import zlib
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from instructlake.udfs import minhash

THRESHOLD = 0.7


BANDS, ROWS = minhash.optimal_bands(THRESHOLD, 128)


def _prompts(data: Path, name: str) -> list[str]:
    """Distinct prompt texts of one shared data file (the `shared_data` fixture skips when it is absent)."""
    return list(dict.fromkeys(json.loads(line)["text"] for line in (data / "prompts" / name).open(encoding="utf-8")))


@pytest.fixture(scope="module")
def english(shared_data: Path) -> list[str]:
    names = ["en_dolly_open_qa.jsonl", "en_arena_hard_v0.1.jsonl", "en_self_instruct_seed_tasks.jsonl"]
    return [t for n in names for t in _prompts(shared_data, n)]


@pytest.fixture(scope="module")
def japanese(shared_data: Path) -> list[str]:
    return _prompts(shared_data, "ja_dolly_15k_ja_v0_first5000.jsonl")


def test_word_shingles_ignore_case_punctuation_and_spacing() -> None:
    got = minhash.shingle_hashes("What is   the capital, of FRANCE?!")
    want = {zlib.crc32(s.encode()) for s in ["what is the", "is the capital", "the capital of", "capital of france"]}
    assert set(got.tolist()) == want
    assert set(minhash.shingle_hashes("what is the capital of france").tolist()) == want
    assert minhash.shingle_hashes("Hi there").tolist() == [zlib.crc32(b"hi there")]  # shorter than one n-gram
    assert minhash.shingle_hashes(" ?! ").size == 0


def test_unspaced_scripts_use_character_shingles(japanese: list[str]) -> None:
    text = "インドの首相は誰ですか？"
    want = {zlib.crc32(text[i : i + 3].encode()) for i in range(len(text) - 3)}  # "？" is not a word character
    assert set(minhash.shingle_hashes(text).tolist()) == want
    assert minhash.shingle_hashes(text, mode="word").size == 1  # one "word": useless without char mode
    assert minhash.shingle_hashes("สวัสดีครับ ผมชื่อสมชาย").size > 2  # Thai
    mixed = "How do I say 猫 in Japanese?"  # one kanji among English words: stays in word mode
    assert np.array_equal(minhash.shingle_hashes(mixed), minhash.shingle_hashes(mixed, mode="word"))
    assert set(minhash.shingle_hashes("abcd", mode="char").tolist()) == {zlib.crc32(b"abc"), zlib.crc32(b"bcd")}
    char_mode = [np.array_equal(minhash.shingle_hashes(t), minhash.shingle_hashes(t, mode="char")) for t in japanese]
    assert np.mean(char_mode) > 0.97  # the rest are prompts mostly in Latin letters (product names, code)


def test_signatures_deterministic_across_calls_and_processes(english: list[str]) -> None:
    hashes = [minhash.shingle_hashes(t) for t in english[:50]]
    a = minhash.signatures(hashes, 64, seed=7)
    assert a.shape == (50, 64) and a.dtype == np.uint32
    assert np.array_equal(a, minhash.signatures(hashes, 64, seed=7))
    assert not np.array_equal(a, minhash.signatures(hashes, 64, seed=8))
    code = (
        "import sys, json; from instructlake.udfs import minhash as m; "
        "print(json.dumps(m.signatures([m.shingle_hashes(sys.argv[1])], 64, seed=7)[0].tolist()))"
    )
    for hashseed in ("1", "2"):  # Python's hash() would differ between these; our hashes must not
        out = subprocess.run([sys.executable, "-c", code, english[0]], capture_output=True, text=True, check=True,
                             env={"PYTHONHASHSEED": hashseed})  # fmt: skip
        assert json.loads(out.stdout) == a[0].tolist()


def test_signatures_match_per_document_computation_across_chunks(english: list[str], japanese: list[str]) -> None:
    # A batch bigger than one vectorized chunk, with a document straddling chunk boundaries.
    long_doc = " ".join(english[-600:])  # arena-hard and self-instruct prompts: long
    texts = english[:300] + [long_doc, "", *japanese[:300]]
    hashes = [minhash.shingle_hashes(t) for t in texts]
    assert sum(map(len, hashes)) > 2 * minhash._CHUNK and len(hashes[300]) > minhash._CHUNK
    batch = minhash.signatures(hashes, 128, seed=3)
    a, b = minhash.permutations(128, 3)
    for i in [0, 150, 299, 300, 301, 302, len(texts) - 1]:
        h = hashes[i].astype(np.uint64) % minhash.MERSENNE_P
        expect = ((h[:, None] * a + b) % minhash.MERSENNE_P).min(axis=0) if h.size else np.full(128, minhash.EMPTY)
        assert np.array_equal(batch[i], expect), i


def test_estimated_jaccard_tracks_true_jaccard(english: list[str]) -> None:
    rng = random.Random(0)
    texts = [t for t in english if len(t.split()) >= 25][:200]
    pairs = [(t, " ".join(w for w in t.split() if rng.random() > p)) for t in texts for p in [rng.random() * 0.3]]
    hashes = [(minhash.shingle_hashes(x), minhash.shingle_hashes(y)) for x, y in pairs]
    true = np.array([minhash.jaccard(x, y) for x, y in hashes])
    sig_x = minhash.signatures([x for x, _ in hashes], 256)
    sig_y = minhash.signatures([y for _, y in hashes], 256)
    err = np.abs(minhash.estimated_jaccard(sig_x, sig_y) - true)
    assert true.std() > 0.1  # the pairs span a range of similarities
    assert err.mean() < 0.03 and err.max() < 0.12  # standard error at 256 perms is at most 0.031


def test_optimal_bands_sanity() -> None:
    for num_perm in (64, 128, 256):
        prev_rows = 0
        for t in (0.5, 0.7, 0.8, 0.9):
            b, r = minhash.optimal_bands(t, num_perm)
            assert b * r <= num_perm and b >= 2
            assert r > prev_rows  # a stricter threshold needs longer bands
            prev_rows = r
            # The S-curve 1 - (1 - s^r)^b crosses 1/2 close to the threshold.
            s_half = (1 - 0.5 ** (1 / b)) ** (1 / r)
            assert abs(s_half - t) < 0.1
    assert minhash.optimal_bands(0.7, 128, fp_weight=0.2, fn_weight=0.8)[1] < ROWS  # favouring recall


def test_optimal_bands_matches_datasketch() -> None:
    lsh = pytest.importorskip("datasketch.lsh")
    for t in (0.5, 0.6, 0.7, 0.8, 0.9):
        for num_perm in (32, 128, 256):
            assert minhash.optimal_bands(t, num_perm) == lsh._optimal_param(t, num_perm, 0.5, 0.5)


def test_band_keys() -> None:
    sigs = np.arange(2 * 12, dtype=np.uint32).reshape(2, 12)
    keys = minhash.band_keys(sigs, 3, 4)
    assert keys.shape == (2, 3) and keys.dtype == np.int64
    assert len(set(keys.ravel().tolist())) == 6
    same = sigs.copy()
    same[1] = same[0]
    same[1, 5] += 1  # differs in band 1 only
    k = minhash.band_keys(same, 3, 4)
    assert (k[0] == k[1]).tolist() == [True, False, True]
    # A band's key depends on its index, not only on its values.
    rep = np.tile(np.array([1, 2, 3, 4], np.uint32), 3)[None, :]
    assert len(set(minhash.band_keys(rep, 3, 4)[0].tolist())) == 3
    with pytest.raises(ValueError, match="exceeds"):
        minhash.band_keys(sigs, 4, 4)


def _edit_en(text: str, rng: random.Random) -> str:
    words = text.split()
    i = rng.randrange(1, len(words) - 1)
    match rng.choice(["delete", "substitute", "insert", "case"]):
        case "delete":
            del words[i]
        case "substitute":
            words[i] = "banana"
        case "insert":
            words.insert(i, "really")
        case "case":
            return "  " + text.upper().replace("?", " ?!")
    return " ".join(words)


def _edit_ja(text: str, rng: random.Random) -> str:
    i = rng.randrange(1, len(text) - 1)
    match rng.choice(["delete", "substitute", "insert", "punctuation"]):
        case "delete":
            return text[:i] + text[i + 1 :]
        case "substitute":
            return text[:i] + "猫" + text[i + 1 :]
        case "insert":
            return text[:i] + "とても" + text[i:]
        case _:
            return text.replace("、", " ").replace("？", "?") + "\u3000"


@pytest.mark.parametrize("lang", ["en", "ja"])
def test_planted_near_duplicates_are_candidates(lang: str, english: list[str], japanese: list[str]) -> None:
    rng = random.Random(42)
    if lang == "en":
        pool, edit = [t for t in english if len(t.split()) >= 20], _edit_en
    else:
        pool, edit = [t for t in japanese if len(t) >= 30], _edit_ja
    originals = rng.sample(pool, 300)
    edited = [edit(t, rng) for t in originals]
    df = pd.DataFrame({"prompt_id": [f"o{i}" for i in range(300)] + [f"e{i}" for i in range(300)],
                       "text": originals + edited})  # fmt: skip
    out = minhash.minhash_batch(df, bands=BANDS, rows=ROWS)
    sig = np.stack(out["signature"].to_numpy())
    keys = np.stack(out["band_keys"].to_numpy())
    est = minhash.estimated_jaccard(sig[:300], sig[300:])
    true = np.array([minhash.jaccard(*map(minhash.shingle_hashes, pair)) for pair in zip(originals, edited)])
    shared = (keys[:300] == keys[300:]).any(axis=1)
    assert np.median(est) >= 0.85 and (est >= 0.6).all()
    assert shared.mean() >= 0.9  # LSH at the 0.7 threshold, 128 perms: candidate probability 0.87 at J=0.8
    assert shared[true >= 0.9].all()  # ...and 0.999 at J=0.9
    # Verification of a shared-band pair by estimated Jaccard keeps (almost) all planted pairs.
    assert (est[shared] >= THRESHOLD).mean() >= 0.95


def _candidate_pairs(band_keys: list[np.ndarray]) -> set[tuple[int, int]]:
    buckets: dict[int, list[int]] = defaultdict(list)
    for i, keys in enumerate(band_keys):
        for k in keys.tolist():
            buckets[k].append(i)
    return {p for members in buckets.values() for p in itertools.combinations(members, 2)}


@pytest.mark.parametrize("lang", ["en", "ja"])
def test_distinct_prompts_rarely_collide(lang: str, english: list[str], japanese: list[str]) -> None:
    texts = random.Random(1).sample(english if lang == "en" else japanese, 1000)
    out = minhash.minhash_batch(pd.DataFrame({"prompt_id": range(1000), "text": texts}), bands=BANDS, rows=ROWS)
    cands = _candidate_pairs(list(out["band_keys"]))
    sets = [set(minhash.shingle_hashes(t).tolist()) for t in texts]
    true = {(i, j): len(sets[i] & sets[j]) / len(sets[i] | sets[j]) for i, j in itertools.combinations(range(1000), 2)}
    false_pos = [p for p in cands if true[p] < 0.5]  # clearly different prompts that became candidates
    false_neg = [p for p, j in true.items() if j >= 0.9 and p not in cands]
    assert len(false_pos) <= 3, [(texts[i][:60], texts[j][:60]) for i, j in false_pos]
    assert false_neg == []
    # Estimated-Jaccard verification removes what the bands let through below the threshold - 0.1.
    sig = np.stack(out["signature"].to_numpy())
    below = [(i, j) for i, j in cands if true[(i, j)] < THRESHOLD - 0.1]
    assert all(minhash.estimated_jaccard(sig[i], sig[j]) < THRESHOLD for i, j in below)


def test_minhash_batch_layouts() -> None:
    df = pd.DataFrame({"prompt_id": ["a", "b", "c"], "text": ["What is the capital of France?", "", "何ですか"]})
    out = minhash.minhash_batch(df, bands=BANDS, rows=ROWS)
    assert list(out.columns) == ["prompt_id", "signature", "band_keys"]
    assert [len(k) for k in out["band_keys"]] == [BANDS, 0, BANDS]  # no shingles: never a candidate
    assert out["signature"][0].dtype == np.int32 and out["band_keys"][0].dtype == np.int64
    assert (out["signature"][1] == minhash.EMPTY).all()
    ex = minhash.minhash_batch(df, bands=BANDS, rows=ROWS, explode=True)
    assert list(ex.columns) == ["prompt_id", "band", "band_key"] and len(ex) == 2 * BANDS
    assert ex["band_key"].tolist() == [*out["band_keys"][0], *out["band_keys"][2]]
    assert ex["band"].tolist() == list(range(BANDS)) * 2
    none = pd.DataFrame({"prompt_id": pd.Series([], dtype=object), "text": pd.Series([], dtype=object)})
    for explode in (False, True):  # Spark hands mapInPandas empty batches too
        assert minhash.minhash_batch(none, bands=BANDS, rows=ROWS, explode=explode).empty


def test_near_duplicates_jaccard_for_long_edit_ratio_for_short_unspaced(english: list[str]) -> None:
    a = next(t for t in english if len(minhash.shingle_hashes(t)) >= 20)
    b = a + " Please answer briefly."
    n = len(minhash.shingle_hashes(a))
    assert n / (n + 3) >= THRESHOLD  # the Jaccard of a and b: three shingles more
    # Real pairs: a person's one-word edit of a Japanese MT-Bench prompt (difflib 0.91, char 3-gram Jaccard
    # 0.58), and two Dolly questions that differ in the one word that matters (ended / started: 0.89).
    edit = ("1日目の詳細な授業計画と宿題の質問3つを提出してください。", "1日目の詳細な授業計画と宿題を3つ提出してください。")
    other = ("第二次世界大戦はいつ終わったのですか？", "第二次世界大戦はいつ始まったのですか？")
    pairs = pd.DataFrame({"text_a": [a, a, edit[0], other[0]], "text_b": [b, english[501], edit[1], other[1]]})
    short = {"threshold": THRESHOLD, "char_ngram": 2, "short_chars": 200, "short_edit_ratio": 0.9}
    assert minhash.near_duplicates(pairs, **short).tolist() == [True, False, True, False]
    # Jaccard alone (no short rule, 3-grams) misses the edit; the edit ratio of long texts is never asked.
    assert minhash.near_duplicates(pairs, threshold=THRESHOLD, char_ngram=3).tolist() == [True, False, False, False]
    assert minhash.near_duplicates(pairs.iloc[:0], **short).size == 0


def test_char_shingled_texts_get_their_own_bands(english: list[str]) -> None:
    df = pd.DataFrame({"prompt_id": [0, 1, 2], "text": [english[0], "日本語の短い質問ですか？", ""]})
    out = minhash.minhash_batch(df, bands=BANDS, rows=ROWS, char_ngram=2, char_bands=25, char_rows=5)
    assert [len(k) for k in out["band_keys"]] == [BANDS, 25, 0]
    ex = minhash.minhash_batch(df, bands=BANDS, rows=ROWS, char_ngram=2, char_bands=25, char_rows=5, explode=True)
    assert ex["band"].tolist() == list(range(BANDS)) + list(range(minhash.CHAR_BAND_OFFSET, minhash.CHAR_BAND_OFFSET + 25))
    same = minhash.minhash_batch(df, bands=BANDS, rows=ROWS, char_ngram=2)  # no char banding: one scheme for all
    assert [len(k) for k in same["band_keys"]] == [BANDS, BANDS, 0]

