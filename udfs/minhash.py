"""MinHash-LSH near-duplicate detection, built to run per batch in Spark `mapInPandas`.

Each batch turns texts into shingle hashes, signatures and band keys on its own; the job explodes the
band keys, groups by them for candidate pairs and verifies the pairs. No step needs every signature in
one process. Signatures depend on (seed, num_perm) and the shingling parameters: keep them fixed per run.
"""

from __future__ import annotations

import difflib
import re
import unicodedata
import zlib
from collections import Counter
from collections.abc import Sequence
from functools import lru_cache
from typing import Literal

import numpy as np
import pandas as pd

Mode = Literal["auto", "word", "char"]

MERSENNE_P = (1 << 31) - 1  # a, b < p and 32-bit shingle hashes keep a*h + b below 2**63: no uint64 overflow
EMPTY = MERSENNE_P  # signature value of a text without shingles; never produced by (a*h + b) mod p

_WORD = re.compile(r"\w+")
_NON_WORD = re.compile(r"\W+")
# Scripts written without spaces between words: hiragana/katakana, CJK ideographs, Thai, Lao, Khmer, Myanmar.
_UNSPACED = re.compile(
    r"[\u3040-\u30ff\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u0e00-\u0eff\u1000-\u109f\u1780-\u17ff]"
)
_CHUNK = 8192  # shingles per vectorized step: 128 perms x 8192 x 8 bytes = 8 MiB per temporary


def shingles(
    text: str, *, ngram: int = 3, char_ngram: int = 3, mode: Mode = "auto", char_ratio: float = 0.3
) -> tuple[np.ndarray, bool]:
    """(unique 32-bit CRC32 hashes of the text's shingles as a uint64 array, whether char mode was used).

    Text is NFKC-normalized, casefolded and reduced to word characters (punctuation and spacing do not
    count). `word` mode: word `ngram`-grams; `char` mode: `char_ngram`-grams over the letters without
    spaces; `auto` picks char mode when more than `char_ratio` of the letters are from an unspaced script.
    A text shorter than one n-gram is a single shingle; a text without word characters has none.
    """
    words = _WORD.findall(unicodedata.normalize("NFKC", text).casefold())
    if not words:
        return np.empty(0, np.uint64), mode == "char"
    char = unspaced("".join(words), mode, char_ratio)
    if char:
        s = "".join(words)
        grams = {s[i : i + char_ngram] for i in range(max(1, len(s) - char_ngram + 1))}
    else:
        grams = {" ".join(words[i : i + ngram]) for i in range(max(1, len(words) - ngram + 1))}
    return np.fromiter((zlib.crc32(g.encode("utf-8")) for g in grams), np.uint64, len(grams)), char


def shingle_hashes(text: str, **kw) -> np.ndarray:
    """The shingle hashes of `shingles` alone."""
    return shingles(text, **kw)[0]


@lru_cache(maxsize=8)
def permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The (a, b) coefficients of `num_perm` universal hashes (a*h + b) mod p, fixed by `seed`."""
    rng = np.random.default_rng(seed)
    a = rng.integers(1, MERSENNE_P, num_perm, dtype=np.uint64)
    b = rng.integers(0, MERSENNE_P, num_perm, dtype=np.uint64)
    return a, b


def signatures(hash_sets: Sequence[np.ndarray], num_perm: int = 128, seed: int = 1) -> np.ndarray:
    """MinHash signatures, shape (len(hash_sets), num_perm), uint32; all `EMPTY` for an empty set.

    All shingles of the batch go through numpy together, in chunks of at most `_CHUNK` shingles
    (whatever the document boundaries), so one huge text cannot blow up memory.
    """
    a, b = permutations(num_perm, seed)
    sig = np.full((len(hash_sets), num_perm), EMPTY, np.uint64)
    lengths = np.fromiter((len(h) for h in hash_sets), np.int64, len(hash_sets))
    if lengths.sum() == 0:
        return sig.astype(np.uint32)
    hashes = np.concatenate(hash_sets) % MERSENNE_P  # the hashes must lie in Z_p for the family to be universal
    doc = np.repeat(np.arange(len(hash_sets)), lengths)
    for lo in range(0, len(hashes), _CHUNK):
        h, d = hashes[lo : lo + _CHUNK], doc[lo : lo + _CHUNK]
        # Permutation-major (num_perm, chunk): the per-document minimum then reduces contiguous runs,
        # about 3x faster than reducing along axis 0 of the transposed layout.
        values = (a[:, None] * h[None, :] + b[:, None]) % MERSENNE_P
        starts = np.flatnonzero(np.r_[True, d[1:] != d[:-1]])  # one segment per document in this chunk
        np.minimum.at(sig, d[starts], np.minimum.reduceat(values, starts, axis=1).T)
    return sig.astype(np.uint32)


def optimal_bands(
    threshold: float, num_perm: int, fp_weight: float = 0.5, fn_weight: float = 0.5
) -> tuple[int, int]:
    """(bands, rows) with bands * rows <= num_perm minimizing the weighted false positive area (candidate
    probability below `threshold`) plus false negative area (miss probability above it), as datasketch does."""
    best, best_err = (1, 1), np.inf
    s_fp, s_fn = np.linspace(0.0, threshold, 1001), np.linspace(threshold, 1.0, 1001)
    for b in range(1, num_perm + 1):
        r = np.arange(1, num_perm // b + 1, dtype=np.float64)[:, None]
        fp = np.trapezoid(1 - (1 - s_fp**r) ** b, s_fp, axis=1)
        fn = np.trapezoid((1 - s_fn**r) ** b, s_fn, axis=1)
        err = fp_weight * fp + fn_weight * fn
        i = int(np.argmin(err))
        if err[i] < best_err:
            best, best_err = (b, i + 1), err[i]
    return best


_MIX1, _MIX2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def _splitmix(x: np.ndarray) -> np.ndarray:
    # splitmix64 finalizer; uint64 multiplication wraps mod 2**64, which is what a hash mixer wants.
    x = (x ^ (x >> np.uint64(30))) * _MIX1
    x = (x ^ (x >> np.uint64(27))) * _MIX2
    return x ^ (x >> np.uint64(31))


# Band numbers of char-shingled texts start here: their (band, key) buckets never meet word-mode ones.
CHAR_BAND_OFFSET = 1000


def band_keys(sigs: np.ndarray, bands: int, rows: int, offset: int = 0) -> np.ndarray:
    """Band keys, shape (n, bands), int64: a 64-bit hash of (offset + band index, the band's `rows` values).

    Equal keys mean equal bands (up to 64-bit collisions); the band index keeps bands apart.
    """
    if bands * rows > sigs.shape[1]:
        raise ValueError(f"bands * rows = {bands * rows} exceeds the signature length {sigs.shape[1]}")
    banded = sigs[:, : bands * rows].astype(np.uint64).reshape(len(sigs), bands, rows)
    key = np.broadcast_to(_splitmix(np.arange(offset + 1, offset + bands + 1, dtype=np.uint64)), banded.shape[:2])
    for j in range(rows):
        key = _splitmix(key ^ banded[:, :, j])
    return key.view(np.int64)


def estimated_jaccard(sig_a: np.ndarray, sig_b: np.ndarray) -> np.ndarray | float:
    """Fraction of equal signature positions (last axis): an unbiased estimate of the Jaccard similarity.
    Two texts without shingles score 1.0 (all `EMPTY`), but they never share a band key."""
    return np.mean(np.asarray(sig_a) == np.asarray(sig_b), axis=-1)


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Exact Jaccard similarity of two shingle-hash sets (0.0 when both are empty)."""
    union = len(np.union1d(a, b))
    return len(np.intersect1d(a, b, assume_unique=True)) / union if union else 0.0


def minhash_batch(
    df: pd.DataFrame,
    *,
    bands: int,
    rows: int,
    num_perm: int = 128,
    seed: int = 1,
    ngram: int = 3,
    char_ngram: int = 3,
    mode: Mode = "auto",
    char_bands: int | None = None,
    char_rows: int | None = None,
    explode: bool = False,
    id_col: str = "prompt_id",
    text_col: str = "text",
) -> pd.DataFrame:
    """Signatures and band keys for a batch of (`id_col`, `text_col`) rows.

    Char-shingled texts are banded with (`char_bands`, `char_rows`) when given (a lower LSH threshold:
    short texts in unspaced scripts change more of their shingles per edited word), numbered from
    CHAR_BAND_OFFSET. Returns (`id_col`, `signature` list<int32>, `band_keys` list<int64>) per row, or
    with `explode` (`id_col`, `band`, `band_key`) per band; texts without shingles get no band keys, so they
    never become candidates (exact dedup and the empty filter handle them).
    """
    made = [shingles(t, ngram=ngram, char_ngram=char_ngram, mode=mode) for t in df[text_col].fillna("")]
    hashes = [h for h, _ in made]
    sigs = signatures(hashes, num_perm, seed)
    is_char = np.fromiter((c for _, c in made), bool, len(made))
    if char_bands is None or char_rows is None:
        is_char[:] = False
    has_keys = np.fromiter((len(h) > 0 for h in hashes), bool, len(hashes))
    keys: list[np.ndarray] = [np.empty(0, np.int64)] * len(made)
    numbers: list[np.ndarray] = [np.empty(0, np.int32)] * len(made)
    for char, (b, r, offset) in ((False, (bands, rows, 0)), (True, (char_bands, char_rows, CHAR_BAND_OFFSET))):
        sel = np.flatnonzero(has_keys & (is_char == char))
        if not len(sel):
            continue
        k = band_keys(sigs[sel], b, r, offset)
        band_no = np.arange(offset, offset + b, dtype=np.int32)
        for i, row in zip(sel, k, strict=True):
            keys[i], numbers[i] = row, band_no
    ids = df[id_col].to_numpy()
    if explode:
        counts = np.fromiter((len(k) for k in keys), np.int64, len(keys))
        return pd.DataFrame(
            {
                id_col: np.repeat(ids, counts),
                "band": np.concatenate(numbers) if len(numbers) else np.empty(0, np.int32),
                "band_key": np.concatenate(keys) if len(keys) else np.empty(0, np.int64),
            }
        )
    return pd.DataFrame(
        {
            id_col: ids,
            "signature": list(sigs.astype(np.int32)),  # values < 2**31: exact in Spark's int
            "band_keys": keys,
        }
    )


def near_duplicates(
    pairs: pd.DataFrame,
    *,
    threshold: float,
    ngram: int = 3,
    char_ngram: int = 3,
    mode: Mode = "auto",
    short_chars: int = 0,
    short_edit_ratio: float = 1.0,
) -> np.ndarray:
    """Whether each (`text_a`, `text_b`) pair is a near duplicate: two char-shingled texts of at most
    `short_chars` characters when difflib's ratio of their NFKC-casefolded forms reaches `short_edit_ratio`
    (one changed word moves a short Japanese prompt's shingle Jaccard far more than its edit ratio), any
    other pair when the exact Jaccard of their shingles reaches `threshold`."""
    kw = {"ngram": ngram, "char_ngram": char_ngram, "mode": mode}
    out = np.zeros(len(pairs), bool)
    for i, (a, b) in enumerate(zip(pairs["text_a"], pairs["text_b"], strict=True)):
        if max(len(a), len(b)) <= short_chars:
            x, y = (unicodedata.normalize("NFKC", t).casefold() for t in (a, b))
            if unspaced(_NON_WORD.sub("", x), mode) and unspaced(_NON_WORD.sub("", y), mode):
                out[i] = _edit_similar(x, y, short_edit_ratio)
                continue
        out[i] = jaccard(shingles(a, **kw)[0], shingles(b, **kw)[0]) >= threshold
    return out


def _edit_similar(x: str, y: str, r: float) -> bool:
    """difflib's ratio(x, y) >= r, behind its two upper bounds (lengths, then shared characters): most
    candidate pairs of a corpus fail a bound, and a SequenceMatcher costs its index of y even before
    its first bound (40 us of a 60-character pair)."""
    total = len(x) + len(y)
    if not total or 2 * min(len(x), len(y)) < r * total:
        return False
    if 2 * sum((Counter(x) & Counter(y)).values()) < r * total:
        return False
    return difflib.SequenceMatcher(None, x, y, autojunk=False).ratio() >= r


def unspaced(letters: str, mode: Mode = "auto", char_ratio: float = 0.3) -> bool:
    """Whether text whose word characters are `letters` is shingled (and tokenized, udfs.decontam) by
    characters: `auto` when more than `char_ratio` of them are from an unspaced script."""
    if mode != "auto":
        return mode == "char"
    return bool(letters) and len(letters) - len(_UNSPACED.sub("", letters)) > char_ratio * len(letters)

