"""Benchmark decontamination: does a prompt contain an evaluation benchmark's item?

Two tests, as the peers run them, over one normalization (NFKC, casefolded, word characters only):

- **n-gram overlap** (datatrove `decont/n_grams.py`, open-instruct's 13-gram rule): the prompt shares at
  least `min_ngrams` token n-grams with an item. Tokens are words, or characters for texts in unspaced
  scripts (Japanese, Chinese), whose n is `char_ngram`.
- **near match for short items** (fewer than `near_max_tokens` tokens): the share of the item's token
  bigrams (character trigrams in unspaced scripts) found in the prompt reaches `near_containment`
  (`char_near_containment`). This
  catches a short question pasted with a changed word, or embedded in a longer prompt, where an edit
  breaks every 13-gram of the item.

The index is built once on the driver from the benchmark files and shipped to executors in the UDF's
closure; `find` is a pure function over one batch of texts.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field

import pandas as pd

from instructlake.udfs.minhash import unspaced

_NON_WORD = re.compile(r"\W+")
_WORD = re.compile(r"\w+")


def tokens(text: str) -> tuple[list[str], bool]:
    """(the text's tokens, whether they are characters): words, or the word characters of a text mostly in
    an unspaced script."""
    norm = unicodedata.normalize("NFKC", text).casefold()
    letters = _NON_WORD.sub("", norm)
    if unspaced(letters):
        return list(letters), True
    return _WORD.findall(norm), False


def _grams(toks: list[str], n: int) -> set[str]:
    # The n-grams themselves, not 32-bit hashes of them: 5,000 Japanese prompts against 500 arena-hard
    # items gave two CRC32 collisions, each a false contamination.
    return {" ".join(toks[i : i + n]) for i in range(len(toks) - n + 1)}


def _near_grams(toks: list[str], is_char: bool) -> set[str]:
    return _grams(toks, 3 if is_char else 2) or _grams(toks, len(toks))


@dataclass
class Index:
    """n-gram -> the items holding it, and char-gram -> the short items holding it."""

    ngram: int
    char_ngram: int
    min_ngrams: int
    near_max_tokens: int
    near_containment: float
    char_near_containment: float
    max_postings: int
    items: list[tuple[str, str]] = field(default_factory=list)  # (benchmark, item id) by item number
    grams: dict[str, list[int]] = field(default_factory=dict)
    short: dict[str, list[int]] = field(default_factory=dict)
    short_sizes: dict[int, int] = field(default_factory=dict)
    short_char: dict[int, bool] = field(default_factory=dict)

    def add(self, benchmark: str, item_id: str, text: str) -> None:
        toks, is_char = tokens(text)
        if not toks:
            return
        number = len(self.items)
        self.items.append((benchmark, str(item_id)))
        n = self.char_ngram if is_char else self.ngram
        for g in _grams(toks, n):
            self.grams.setdefault(g, []).append(number)
        if len(toks) < self.near_max_tokens * (self.char_ngram / self.ngram if is_char else 1):
            grams = _near_grams(toks, is_char)
            self.short_sizes[number] = len(grams)
            self.short_char[number] = is_char
            for g in grams:
                self.short.setdefault(g, []).append(number)

    def find(self, text: str) -> tuple[str, str] | None:
        """The (benchmark, item id) a prompt contains, or None; the first item by load order on ties."""
        toks, is_char = tokens(text)
        if not toks:
            return None
        hits: Counter[int] = Counter()
        for g in _grams(toks, self.char_ngram if is_char else self.ngram):
            for item in self.grams.get(g, ()):
                hits[item] += 1
        matched = [item for item, k in hits.items() if k >= self.min_ngrams]
        if not matched and self.short:
            near: Counter[int] = Counter()
            for g in _near_grams(toks, is_char):
                postings = self.short.get(g, ())
                if len(postings) <= self.max_postings:  # a gram in most short items tells nothing
                    near.update(postings)
            matched = [item for item, k in near.items() if k >= self._needed(item)]
        return self.items[min(matched)] if matched else None


    def _needed(self, item: int) -> float:
        # An item of fewer than 4 grams must be there whole: a partial match of 3 words is chance. Short
        # Japanese questions differ by one word ("電話を発明したのは誰？" / "コンピュータを発明したのは誰？"
        # share 6 of 8 trigrams), so character items need more of theirs than word items.
        n = self.short_sizes[item]
        return n if n < 4 else n * (self.char_near_containment if self.short_char[item] else self.near_containment)


def contamination(texts: pd.Series, index: Index) -> pd.Series:
    """`contaminated:<benchmark>:<item id>` per text that contains a benchmark item, else None."""
    out = []
    for t in texts:
        hit = index.find(t) if isinstance(t, str) else None
        out.append(f"contaminated:{hit[0]}:{hit[1]}" if hit else None)
    return pd.Series(out, index=texts.index, dtype=object)
