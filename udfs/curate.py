"""Per-batch work of the curate stage: pure pandas, run inside Spark's Python workers.

`annotate` gives every prompts_raw row its prompt id, normalized text, first drop reason, flags and template
id; `languages` identifies the language of each distinct prompt and says whether it is selected;
`similarity` verifies near-duplicate candidate pairs. The option objects are plain frozen dataclasses
(picklable into tasks); the job fills every field from `conf.curate`, so no default lives here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

from instructlake.udfs import filters, langid, minhash
from instructlake.udfs.text import normalize, prompt_id, strip_ui_residue

Action = Literal["drop", "flag", "off"]

REDACTION_KINDS = ("name_placeholder", "redacted")  # what the source already redacted (LMSYS NAME_<n>, flag)
DETECTED_KINDS = ("email", "phone", "ipv4", "ipv6", "credit_card", "secret")  # what we find in the text

ANNOTATE_DDL = "prompt_id string, norm_text string, n_chars int, reason string, flags array<string>, template_id string"
LANG_DDL = "lang string, lang_score double, lang2 string, lang2_score double, lang_reason string"
# Reasons (and flags) that name one item: duplicate_of:<id>, near_duplicate_of:<cluster>, template:<id>,
# contaminated:<benchmark>:<item id>. Counted under their class (group 1: contaminated keeps its benchmark)
# in run stats, reports and cards; every other reason is its own class.
PER_ITEM_REASON = r"^(duplicate_of|near_duplicate_of|template|contaminated:[^:]+):.*$"


@dataclass(frozen=True)
class NearOptions:
    threshold: float
    ngram: int
    char_ngram: int
    mode: minhash.Mode
    short_chars: int
    short_edit_ratio: float


@dataclass(frozen=True)
class FilterOptions:
    ui_residue: bool
    empty: bool
    length: bool
    min_chars: int
    max_chars: int | None
    tokenizer: str | None
    max_tokens: int
    moderation: Action
    pii_redacted: Action
    pii_detected: Action
    pii_kinds: tuple[str, ...]
    template: Action
    mask_names: bool

    def pii_kinds_for(self, action: Action) -> set[str]:
        kinds: set[str] = set()
        if self.pii_redacted == action:
            kinds.update(REDACTION_KINDS)
        if self.pii_detected == action:
            kinds.update(k for k in self.pii_kinds if k in DETECTED_KINDS)
        return kinds


@dataclass(frozen=True)
class LangOptions:
    model: str | None
    threshold: float
    max_chars: int
    lower_caps: bool
    langs: tuple[str, ...]
    und: Literal["keep", "reject"]
    unspaced_below: float
    candidates: tuple[str, ...]
    candidates_k: int


def _none(index: pd.Index) -> pd.Series:
    return pd.Series([None] * len(index), index=index, dtype=object)


def annotate(df: pd.DataFrame, opts: FilterOptions) -> pd.DataFrame:
    """One prompts_raw batch (`text`, `moderation_flagged`, `redacted`) -> ANNOTATE_DDL columns.

    `reason` is the first drop reason in the order empty, too_short/too_long, too_many_tokens, moderation,
    pii:<kinds> (None: the row survives the row filters). `flags` names what was found but only flagged
    (`moderation`, `pii:<kind>`) or stripped (`ui_residue:<kind>`: chat-UI residue before the prompt). `norm_text` is the normalized text where it differs from `text` (else
    None: the job falls back to `text`, so the common already-normalized row is not carried twice).
    `template_id` is the skeleton id (None for empty rows or with the template filter off); the job counts
    prompts per skeleton across the whole table.
    """
    raw = df["text"]
    norm = raw.fillna("").map(normalize)
    if opts.ui_residue:
        stripped = norm.map(strip_ui_residue)
        norm, residue = stripped.str[0], stripped.str[1]
    else:
        residue = pd.Series([[] for _ in range(len(norm))], index=norm.index, dtype=object)
    reasons = []
    empty = filters.empty_reason(norm)
    if opts.empty:
        reasons.append(empty)
    if opts.length:
        reasons.append(filters.length_reason(norm, opts.min_chars, opts.max_chars))
        if opts.tokenizer:
            reasons.append(filters.token_length_reason(norm, opts.tokenizer, opts.max_tokens))
    flagged = df["moderation_flagged"].astype("boolean").fillna(False).to_numpy(bool)
    if opts.moderation == "drop":
        reasons.append(filters.moderation_reason(df["moderation_flagged"]))
    drop_kinds, flag_kinds = opts.pii_kinds_for("drop"), opts.pii_kinds_for("flag")
    if drop_kinds or flag_kinds:
        kinds = filters.pii_kinds(norm, df["redacted"])
        if drop_kinds:
            reasons.append(filters.pii_reason(kinds, drop_kinds))
    else:
        kinds = pd.Series([[] for _ in range(len(norm))], index=norm.index, dtype=object)
    flags = [
        (["moderation"] if f and opts.moderation == "flag" else [])
        + [f"pii:{k}" for k in ks if k in flag_kinds]
        + [f"ui_residue:{r}" for r in rs]
        for f, ks, rs in zip(flagged, kinds, residue, strict=True)
    ]
    if opts.template != "off":
        template = filters.template_ids(norm, opts.mask_names).where(empty.isna(), None)
    else:
        template = _none(norm.index)
    return pd.DataFrame(
        {
            "prompt_id": norm.map(prompt_id),
            "norm_text": norm.where(norm.ne(raw), None).astype(object),
            "n_chars": norm.str.len().astype("int32"),
            "reason": filters.first_reason(*reasons) if reasons else _none(norm.index),
            "flags": flags,
            "template_id": template.astype(object),
        },
        index=df.index,
    )


def lang_reasons(lang: pd.Series, opts: LangOptions) -> pd.Series:
    """`lang_low_confidence` for `und` (when `und` is rejected), `lang_not_selected:<lang>` for a language
    outside `langs` (an empty `langs` selects every language), else None."""
    selected = set(opts.langs)

    def reason(code: str) -> str | None:
        if code == langid.UNDETERMINED:
            return "lang_low_confidence" if opts.und == "reject" else None
        return f"lang_not_selected:{code}" if selected and code not in selected else None

    return lang.map(reason).astype(object)


def languages(text: pd.Series, opts: LangOptions) -> pd.DataFrame:
    """fastText language of each prompt plus the selection reason: LANG_DDL columns."""
    out = langid.detect(
        text, model_path=opts.model, threshold=opts.threshold, max_chars=opts.max_chars, lower_caps=opts.lower_caps,
        unspaced_below=opts.unspaced_below, candidates=opts.candidates, candidates_k=opts.candidates_k,
    )  # fmt: skip
    out["lang_reason"] = lang_reasons(out["lang"], opts)
    return out


def near_duplicates(text_a: pd.Series, text_b: pd.Series, opts: NearOptions) -> pd.Series:
    """Whether each candidate pair (text_a, text_b) is a near duplicate (minhash.near_duplicates)."""
    pairs = pd.DataFrame({"text_a": text_a.fillna("").to_numpy(), "text_b": text_b.fillna("").to_numpy()})
    near = minhash.near_duplicates(
        pairs, threshold=opts.threshold, ngram=opts.ngram, char_ngram=opts.char_ngram, mode=opts.mode,
        short_chars=opts.short_chars, short_edit_ratio=opts.short_edit_ratio,
    )  # fmt: skip
    return pd.Series(near, index=text_a.index)


def signature_similarity(sig_a: pd.Series, sig_b: pd.Series) -> pd.Series:
    """Estimated Jaccard similarity (fraction of equal MinHash positions) of each signature pair."""
    if sig_a.empty:
        return pd.Series([], index=sig_a.index, dtype="float64")
    sim = minhash.estimated_jaccard(np.stack(sig_a.to_numpy()), np.stack(sig_b.to_numpy()))
    return pd.Series(np.asarray(sim, np.float64), index=sig_a.index)
