"""Rule checks on generated responses: one boolean per check, True meaning the problem is present.

The checks mirror what the seed paper and its peers filter before SFT: empty or truncated answers,
degenerate repetition, answers in another language than the prompt, refusals, the model naming itself
(a response that says "I am ChatGPT" teaches the wrong identity), and PII that the prompt did not contain.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from instructlake.udfs.filters import find_pii
from instructlake.udfs.langid import UNDETERMINED, detect

CHECKS = ("empty", "truncated", "repetition", "wrong_language", "refusal", "self_identification", "pii_leak")
OUTPUT_DDL = ", ".join(f"{c} boolean" for c in CHECKS) + ", response_lang string, repeated_ratio float"

_REFUSAL = re.compile(
    r"\b(?:I(?:'m| am) (?:sorry|afraid),? but I (?:can(?:'|no)t|won't|am (?:not able|unable))"
    r"|I (?:can(?:'|no)t|won't|am unable to|am not able to) (?:help|assist|provide|comply|fulfill|create|do that)"
    r"|I must (?:decline|refuse))"
    r"|申し訳(?:ありません|ございません)が.{0,40}(?:できません|お答えできません|お手伝いできません)"
    r"|お答えできません|対応できません",
    re.I,
)
_SELF_ID = re.compile(
    r"\b(?:as an ai(?: language)? model|I(?:'m| am) (?:an ai (?:language model|assistant)|chatgpt|gpt-?[34]\w*|claude"
    r"|gemini|bard|llama|gemma|vicuna|qwen|mistral)\b|(?:trained|developed|created) by (?:openai|google|meta|anthropic"
    r"|mistral ai|alibaba)\b)"
    r"|AI言語モデルとして|私は(?:AI|ＡＩ)(?:アシスタント|言語モデル)|OpenAI(?:によって|が開発)",
    re.I,
)
_UNSPACED = re.compile(r"[\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af\u0e00-\u0e7f]")
_WORD = re.compile(r"\w+")


def repeated_ratio(text: str, n: int = 4) -> float:
    """Share of n-grams (words; characters for scripts without spaces) that repeat an earlier one."""
    units = list(text) if len(_UNSPACED.findall(text)) > 0.3 * max(1, len(text)) else _WORD.findall(text.lower())
    grams = [tuple(units[i : i + n]) for i in range(len(units) - n + 1)]
    if len(grams) < 2 * n:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


def check_batch(
    batch: pd.DataFrame,
    *,
    repetition_threshold: float = 0.5,
    lang_min_chars: int = 40,
    lang_threshold: float = 0.5,
    langid_model: str | None = None,
) -> pd.DataFrame:
    """Columns text, finish_reason, prompt_text, lang (the language the answer should be in) -> CHECKS
    booleans, the response's detected language and its repeated n-gram ratio."""
    text = batch["text"].fillna("").astype(str)
    stripped = text.str.strip()
    ratio = np.array([repeated_ratio(t) for t in text], dtype="float32")
    detected = detect(text, model_path=langid_model, threshold=lang_threshold)["lang"].to_numpy()
    expected = batch["lang"].fillna(UNDETERMINED).to_numpy()
    comparable = (stripped.str.len().to_numpy() >= lang_min_chars) & (detected != UNDETERMINED) & (expected != UNDETERMINED)
    prompt_pii = [set(find_pii(p or "")) for p in batch["prompt_text"]]
    return pd.DataFrame(
        {
            "empty": (stripped == "").to_numpy(),
            "truncated": (batch["finish_reason"] == "length").to_numpy(),
            "repetition": ratio >= repetition_threshold,
            "wrong_language": comparable & (detected != expected),
            "refusal": text.str.contains(_REFUSAL).to_numpy(),
            "self_identification": text.str.contains(_SELF_ID).to_numpy(),
            "pii_leak": np.array([bool(set(find_pii(t)) - seen) for t, seen in zip(text, prompt_pii)]),
            "response_lang": detected,
            "repeated_ratio": ratio,
        }
    )
