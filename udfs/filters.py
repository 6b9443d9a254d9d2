"""Row filters for the curate stage: pure, vectorized over pandas Series, one reason (or None) per row.

Reasons follow the `prompts_rejected.reason` vocabulary: empty, too_short, too_long, too_many_tokens,
moderation, pii:<kind,...>. Template skeletons are computed here; the job groups them in Spark and
rejects groups larger than its limit as `template:<id>`.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Collection
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from instructlake.udfs.text import content_hash

PII_KINDS = ("email", "phone", "ipv4", "ipv6", "credit_card", "secret", "name_placeholder", "redacted")

# Whitespace plus invisible format characters (zero-width space/joiners, word joiner, BOM, soft hyphen):
# a prompt made only of these is empty to a reader and to a model.
_INVISIBLE = re.compile(r"[\s\u00ad\u200b-\u200f\u2060-\u2064\ufeff]+")


def empty_reason(text: pd.Series) -> pd.Series:
    """`empty` where the text is null or has no visible character."""
    visible = text.fillna("").str.replace(_INVISIBLE, "", regex=True).str.len()
    return _reason(visible.eq(0).to_numpy(), "empty", text.index)


def length_reason(text: pd.Series, min_chars: int = 1, max_chars: int | None = None) -> pd.Series:
    """`too_short` / `too_long` by stripped length in characters (code points); None inside the bounds."""
    n = text.fillna("").str.strip().str.len().to_numpy()
    too_long = n > max_chars if max_chars is not None else np.zeros(len(n), bool)
    return first_reason(_reason(n < min_chars, "too_short", text.index), _reason(too_long, "too_long", text.index))


@lru_cache(maxsize=4)
def load_tokenizer(path: str) -> Any:
    """The Hugging Face fast tokenizer at `path` (a model directory or its tokenizer.json), loaded once
    per Python worker. The `tokenizers` library alone: transformers' AutoTokenizer would import torch."""
    from tokenizers import Tokenizer

    file = Path(path)
    return Tokenizer.from_file(str(file / "tokenizer.json" if file.is_dir() else file))


def token_counts(text: pd.Series, tokenizer_path: str) -> pd.Series:
    """Tokens per text, without special tokens or a chat template."""
    encodings = load_tokenizer(tokenizer_path).encode_batch(text.fillna("").tolist(), add_special_tokens=False)
    return pd.Series([len(e.ids) for e in encodings], index=text.index, dtype="int64")


def token_length_reason(text: pd.Series, tokenizer_path: str, max_tokens: int) -> pd.Series:
    """`too_many_tokens` where the tokenizer at `tokenizer_path` gives more than `max_tokens` tokens."""
    return _reason(token_counts(text, tokenizer_path).to_numpy() > max_tokens, "too_many_tokens", text.index)


def moderation_reason(flagged: pd.Series) -> pd.Series:
    """`moderation` where the source's moderation flag is true; null means not flagged."""
    return _reason(_flags(flagged), "moderation", flagged.index)


# LMSYS-Chat-1M replaces person names with NAME_1, NAME_2, ...; in Japanese and Chinese text the
# placeholder runs straight into the next word (NAME_1さん), so no \b after it.
_NAME_PLACEHOLDER = re.compile(r"(?<![A-Za-z0-9_])NAME_\d+(?!\d)")
_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@(?:[A-Za-z0-9-]+\.)+[A-Za-z]{2,24}\b")
# International (+CC ...) or North-American shaped numbers only: bare digit runs are ids, years, amounts.
_PHONE = re.compile(
    r"(?<![\w+])(?:\+\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{1,4}(?:[ .-]?\d{2,4}){1,4}"
    r"|\(\d{3}\)[ .-]?\d{3}[ .-]\d{4}|\d{3}[.-]\d{3}[.-]\d{4})(?![\w-])"
)
_IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?!\w|\.\d)")
_IPV6 = re.compile(r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])")
_CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")
# Major networks (Visa, Mastercard, Amex/Diners/JCB, Discover/UnionPay): Luhn alone would accept one in
# ten long numeric ids, such as millisecond timestamps.
_CARD_PREFIX = re.compile(r"4|5[1-5]|2[2-7]|3|6")
_SECRET = re.compile(
    r"\bsk-(?:proj-|ant-)?[A-Za-z0-9_-]{20,}"  # OpenAI, Anthropic
    r"|\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"  # AWS access key id
    r"|\bgh[pousr]_[A-Za-z0-9]{36,}\b|\bgithub_pat_[A-Za-z0-9_]{22,}"  # GitHub
    r"|\bxox[abposr]-[A-Za-z0-9-]{10,}"  # Slack
    r"|\bAIza[0-9A-Za-z_-]{35}"  # Google API key
    r"|\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"  # JWT: base64 JSON header.payload.sig
)
_GENERIC_SECRET = re.compile(
    # The name may carry a prefix (DB_PASSWORD, OPENAI_API_KEY), hence no \b before it.
    r"(?i)(?<![a-z0-9])(?:api[_-]?key|api[_-]?secret|secret[_-]?(?:access[_-]?)?key|access[_-]?token|auth[_-]?token"
    r"|client[_-]?secret|password|passwd)\b[\"']?\s*[:=]\s*[\"']?([A-Za-z0-9_\-/+=.]{16,})"
)


def _luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch) * (2 if i % 2 else 1)
        total += d - 9 if d > 9 else d
    return total % 10 == 0


def _is_card(match: str) -> bool:
    digits = match.replace(" ", "").replace("-", "")
    return 13 <= len(digits) <= 19 and bool(_CARD_PREFIX.match(digits)) and _luhn_ok(digits)


def _is_phone(match: str) -> bool:
    return 8 <= sum(c.isdigit() for c in match) <= 15  # E.164: at most 15 digits


def _is_global_ip(match: str) -> bool:
    # Private, loopback, documentation and netmask-like addresses (10.0.0.1, 127.0.0.1, 255.255.255.0)
    # identify nobody, and networking questions are full of them.
    try:
        return ipaddress.ip_address(match).is_global
    except ValueError:
        return False


def _is_key_like(value: str) -> bool:
    # Real keys mix letters and digits; placeholders such as YOUR_API_KEY_HERE do not.
    return any(c.isdigit() for c in value) and any(c.isalpha() for c in value)


def _finds(rx: re.Pattern[str], valid: Callable[[str], bool] | None = None, group: int = 0) -> Callable[[str], bool]:
    return lambda text: any(valid is None or valid(m.group(group)) for m in rx.finditer(text))


_generic_secret = _finds(_GENERIC_SECRET, _is_key_like, 1)
_DETECTORS: dict[str, Callable[[str], bool]] = {
    "email": _finds(_EMAIL),
    "phone": _finds(_PHONE, _is_phone),
    "ipv4": _finds(_IPV4, _is_global_ip),
    "ipv6": _finds(_IPV6, _is_global_ip),
    "credit_card": _finds(_CARD, _is_card),
    "secret": lambda t: _SECRET.search(t) is not None or _generic_secret(t),
    "name_placeholder": _finds(_NAME_PLACEHOLDER),
}


# Necessary conditions, checked first because they are far cheaper than the detectors: most prompts have
# no '@', no digit, no two colons, no 'NAME_', so most detectors never run. (text, has_digit) -> bool.
_DIGIT = re.compile(r"\d")
_GUARDS: dict[str, Callable[[str, bool], bool]] = {
    "email": lambda t, digit: "@" in t,
    "phone": lambda t, digit: digit,
    "ipv4": lambda t, digit: digit and "." in t,
    "ipv6": lambda t, digit: t.count(":") >= 2,
    "credit_card": lambda t, digit: digit,
    # the generic `name = value` form needs ':' or '='; every vendor pattern starts with one of these
    "secret": lambda t, digit: (
        ":" in t or "=" in t or "_" in t or "sk-" in t or "AKIA" in t or "ASIA" in t or "xox" in t or "AIza" in t or "eyJ" in t
    ),
    "name_placeholder": lambda t, digit: "NAME_" in t,
}


def find_pii(text: str) -> list[str]:
    """The PII kinds detected in one text, in `PII_KINDS` order (`redacted` is a source flag, not detected)."""
    digit = _DIGIT.search(text) is not None
    return [kind for kind, found in _DETECTORS.items() if _GUARDS[kind](text, digit) and found(text)]


def pii_kinds(text: pd.Series, redacted: pd.Series | None = None) -> pd.Series:
    """Detected PII kinds per row (list of str); the kind `redacted` is added where the source flag is set."""
    flags = _flags(redacted) if redacted is not None else np.zeros(len(text), bool)
    kinds = [
        (find_pii(t) if isinstance(t, str) else []) + (["redacted"] if r else [])
        for t, r in zip(text, flags, strict=True)
    ]
    return pd.Series(kinds, index=text.index, dtype=object)


def pii_reason(kinds: pd.Series, drop: Collection[str] = PII_KINDS) -> pd.Series:
    """`pii:<kind,...>` naming the found kinds that are in `drop`; kinds outside `drop` only flag the row."""
    drop = set(drop)
    return kinds.map(lambda ks: "pii:" + ",".join(k for k in ks if k in drop) if drop.intersection(ks) else None)


_SKELETON_MASKS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"(?i)\b(?:https?://|www\.)\S+"), " <url> "),
    (_EMAIL, " <email> "),
    # Quoted spans within a line; a straight single quote opens only after a non-word character, so the
    # apostrophes of don't / it's never pair up.
    (re.compile(r"\"[^\"\n]*\"|“[^”\n]*”|‘[^’\n]*’|«[^»\n]*»|「[^」\n]*」|『[^』\n]*』|`[^`\n]+`"
                r"|(?<!\w)'[^'\n]*'(?!\w)"), " <q> "),
    (_NAME_PLACEHOLDER, " <name> "),
)
# Capitalized words right after a lowercase word, digit or comma: mid-sentence, so most likely a name.
_CAPITALIZED = r"[A-ZÀ-ÖØ-Þ][a-zß-öø-ÿ'’-]+"
_PROPER_NAME_RUN = re.compile(rf"(?<=[a-z0-9,;:] ){_CAPITALIZED}(?: {_CAPITALIZED})*")
_NUMBER = re.compile(r"\d+(?:[.,:/]\d+)*")


def template_skeleton(text: str, mask_names: bool = False) -> str:
    """The text with its slots masked (URLs, e-mails, quoted spans, NAME_<n>, optionally mid-sentence
    proper names, numbers), whitespace collapsed, lowercased: prompts made from one template share it."""
    for rx, mask in _SKELETON_MASKS:
        text = rx.sub(mask, text)
    if mask_names:
        text = _PROPER_NAME_RUN.sub("<name>", text)
    return " ".join(_NUMBER.sub("<num>", text).split()).lower()


def template_id(skeleton: str) -> str:
    """Stable 16-hex-digit id of a skeleton (blake2b, 64 bits): identical across processes and runs."""
    return content_hash(skeleton, size=8)


def template_ids(text: pd.Series, mask_names: bool = False) -> pd.Series:
    """`template_id(template_skeleton(text))` per row; null text gives null."""
    return text.map(lambda t: template_id(template_skeleton(t, mask_names)), na_action="ignore")


def first_reason(*reasons: pd.Series) -> pd.Series:
    """Row-wise first non-null reason, in argument order (the order is the filters' priority)."""
    out = reasons[0]
    for r in reasons[1:]:
        out = out.where(out.notna(), r)
    return out


def filter_batch(
    df: pd.DataFrame,
    *,
    min_chars: int = 1,
    max_chars: int | None = None,
    tokenizer_path: str | None = None,
    max_tokens: int | None = None,
    pii_drop: Collection[str] = PII_KINDS,
    mask_names: bool = False,
) -> pd.DataFrame:
    """Per-row filter results for a prompts_raw batch (`text`, optional `redacted`, `moderation_flagged`).

    Returns `reason` (first of empty, too_short/too_long, too_many_tokens, moderation, pii; None keeps
    the row), `pii` (every detected kind, for flagging) and `template_id`, aligned with `df`.
    """
    text = df["text"]
    reasons = [empty_reason(text), length_reason(text, min_chars, max_chars)]
    if tokenizer_path is not None and max_tokens is not None:
        reasons.append(token_length_reason(text, tokenizer_path, max_tokens))
    if "moderation_flagged" in df:
        reasons.append(moderation_reason(df["moderation_flagged"]))
    kinds = pii_kinds(text, df.get("redacted"))
    reasons.append(pii_reason(kinds, pii_drop))
    return pd.DataFrame(
        {"reason": first_reason(*reasons), "pii": kinds, "template_id": template_ids(text, mask_names)},
        index=df.index,
    )


def _flags(s: pd.Series) -> np.ndarray:
    return s.astype("boolean").fillna(False).to_numpy(bool)


def _reason(mask: np.ndarray, reason: str, index: pd.Index) -> pd.Series:
    return pd.Series(np.where(mask, reason, None), index=index, dtype=object)
