"""Rule checks on generated responses: one boolean per check, True meaning the problem is present.

The checks mirror what the seed paper and its peers filter before SFT: empty or truncated answers,
degenerate repetition, answers in another language than the prompt, refusals, the model naming itself
(a response that says "I am ChatGPT" teaches the wrong identity), and PII that the prompt did not contain.
The language and PII checks read only the answer's prose (`text.prose`): code, math and data answers
have no language to be wrong about, and a code sample's placeholder address is not personal data.
Precision on 820 real answers of nine models: docs/response_checks.md.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from instructlake.udfs.filters import find_pii
from instructlake.udfs.langid import UNDETERMINED, detect
from instructlake.udfs.text import letter_lines, without_markup

CHECKS = ("empty", "truncated", "repetition", "wrong_language", "refusal", "self_identification", "pii_leak")
OUTPUT_DDL = ", ".join(f"{c} boolean" for c in CHECKS) + ", response_lang string, repeated_ratio float"

_REFUSAL = re.compile(
    r"\b(?:I(?:'m| am) (?:sorry|afraid),? but (?:I (?:can(?:'|no)t|won't|am (?:not able|unable))|I'm (?:not able|unable))"
    r"|I (?:can(?:'|no)t|won't|am unable to|am not able to) (?:help|assist|provide|comply|fulfill|create|do that)"
    r"|I(?:'m| am) (?:unable|not able) to (?:help|assist|provide|comply|fulfill|create|write|generate|access|browse"
    r"|directly)"
    r"|I must (?:decline|refuse))"
    r"|申し訳(?:ありません|ございません)が.{0,40}(?:できません|お答えできません|お手伝いできません)"
    r"|お答えできません|対応できません",
    re.I,
)
_SELF_ID = re.compile(
    r"\b(?:as an ai(?: language)? model|as a (?:large )?language model|I(?:'m| am) (?:just an ai\b|a (?:large )?language model"
    r"|an ai (?:language model|assistant)|chatgpt|gpt-?[34]\w*|claude"
    r"|gemini|bard|llama|gemma|vicuna|qwen|mistral)\b|(?:trained|developed|created) by (?:openai|google|meta|anthropic"
    r"|mistral ai|alibaba)\b)"
    r"|AI言語モデルとして|私は(?:AI|ＡＩ)(?:アシスタント|言語モデル)|OpenAI(?:によって|が開発)",
    re.I,
)
# A prompt that asks for a translation or an answer in a named language expects another language back
# ("Translate into rigorous Lojban", "英語で答えてください").
_OTHER_LANGUAGE_ASKED = re.compile(
    r"\btranslat(?:e|es|ed|ing|ion)\b|\b(?:in|into) (?:English|Japanese|Chinese|Korean|French|German|Spanish|Italian"
    r"|Portuguese|Russian|Arabic|Hindi|Dutch|Polish|Turkish|Vietnamese|Thai|Indonesian|Latin|Lojban)\b"
    r"|翻訳|(?:英|和|中|日本語)訳|訳して|訳しなさい|(?:英|日本|中国|韓国|フランス|ドイツ|スペイン)語で",
    re.I,
)
# Documentation addresses (RFC 2606 / 6761): what code samples and examples use, nobody's personal data.
_EXAMPLE_ADDRESS = re.compile(
    r"[\w.%+-]+@(?:[\w-]+\.)*(?:example\.(?:com|org|net)|[\w-]+\.(?:example|test|invalid|localhost))\b", re.I
)
_RUN = re.compile(r"(\S{1,4}?)\1{9,}")
_UNSPACED = re.compile(r"[\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af\u0e00-\u0e7f]")
_WORD = re.compile(r"\w+")


def repeated_ratio(text: str, n: int = 4) -> float:
    """Share of n-grams (words; characters for scripts without spaces) that repeat an earlier one."""
    units = list(text) if len(_UNSPACED.findall(text)) > 0.3 * max(1, len(text)) else _WORD.findall(text.lower())
    grams = [tuple(units[i : i + n]) for i in range(len(units) - n + 1)]
    if len(grams) < 2 * n:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


def longest_run(bare: str) -> int:
    """Characters in the longest stretch of one unit of 1-4 non-space characters repeated back to back
    ("#####...", "abcabcabc") in `bare`, a text already `without_markup`: a looping model writes one; a
    Markdown table rule or a code banner is markup."""
    return max((len(m.group(0)) for m in _RUN.finditer(bare)), default=0)


def check_batch(
    batch: pd.DataFrame,
    *,
    repetition_threshold: float = 0.5,
    repetition_run_chars: int = 100,
    lang_min_chars: int = 40,
    lang_threshold: float = 0.5,
    langid_model: str | None = None,
) -> pd.DataFrame:
    """Columns text, finish_reason, prompt_text, lang (the language the answer should be in) -> CHECKS
    booleans, the response's detected language and its repeated n-gram ratio.

    wrong_language is judged on the prose of answers whose prose has at least `lang_min_chars`
    characters, and not where the prompt asks for a translation or another language."""
    text = batch["text"].fillna("").astype(str)
    prompts = batch["prompt_text"].fillna("").astype(str)
    stripped = text.str.strip()
    bare = [without_markup(t) for t in text]  # once per answer: the prose and the run both read it
    words = pd.Series([letter_lines(b) for b in bare], index=text.index)
    ratio = np.array([repeated_ratio(t) for t in text], dtype="float32")
    runs = np.array([longest_run(b) for b in bare])
    detected = detect(words, model_path=langid_model, threshold=lang_threshold)["lang"].to_numpy()
    expected = batch["lang"].fillna(UNDETERMINED).to_numpy()
    comparable = (
        (words.str.len().to_numpy() >= lang_min_chars)
        & (detected != UNDETERMINED)
        & (expected != UNDETERMINED)
        & ~prompts.str.contains(_OTHER_LANGUAGE_ASKED).to_numpy()
    )
    prompt_pii = [set(find_pii(p)) for p in prompts]
    return pd.DataFrame(
        {
            "empty": (stripped == "").to_numpy(),
            "truncated": (batch["finish_reason"] == "length").to_numpy(),
            "repetition": (ratio >= repetition_threshold) | (runs >= repetition_run_chars),
            "wrong_language": comparable & (detected != expected),
            "refusal": text.str.contains(_REFUSAL).to_numpy(),
            "self_identification": text.str.contains(_SELF_ID).to_numpy(),
            "pii_leak": np.array([bool(set(find_pii(_EXAMPLE_ADDRESS.sub(" ", w))) - seen) for w, seen in zip(words, prompt_pii)]),
            "response_lang": detected,
            "repeated_ratio": ratio,
        }
    )
