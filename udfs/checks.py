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
from instructlake.udfs.prompts import LANG_NAMES
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
# The languages a prompt asks its answer to be in: a language name in a target position ("in plain English",
# "into Japanese", "a Japanese translation", 「日本語で」, 「英語に」, 「英訳」, 「日本語翻訳者」), not every
# language it mentions (「英語の文を日本語に」 asks for Japanese). 「日本語について」 is about Japanese.
_EN_NAMES = {name.lower(): code for code, name in {**LANG_NAMES, "la": "Latin", "jbo": "Lojban"}.items()}
_JA_NAMES = {
    "英語": "en", "日本語": "ja", "中国語": "zh", "韓国語": "ko", "ドイツ語": "de", "フランス語": "fr", "スペイン語": "es",
    "イタリア語": "it", "ポルトガル語": "pt", "ロシア語": "ru", "アラビア語": "ar", "ヒンディー語": "hi", "オランダ語": "nl",
    "ポーランド語": "pl", "トルコ語": "tr", "ベトナム語": "vi", "タイ語": "th", "インドネシア語": "id", "ラテン語": "la",
}  # fmt: skip
_STYLE = (
    r"(?:(?:plain|simple|formal|informal|casual|polite|natural|fluent|proper|good|correct|rigorous|standard|modern"
    r"|business|academic|friendly|colloquial|idiomatic|british|american)[\s,]+){0,2}"
)
_ASKED = re.compile(
    r"\b(?:in|into|to)\s+" + _STYLE + r"(?P<en>" + "|".join(_EN_NAMES) + r")\b"
    r"|\b(?P<en2>" + "|".join(_EN_NAMES) + r")\s+(?:translation|translator|version)\b"
    r"|(?P<ja>" + "|".join(_JA_NAMES) + r")(?:で|に(?!つ|おい|おけ|よ|関)|へ|訳|翻訳|版)"
    r"|(?P<abbr>英|和)(?:訳|文)",
    re.I,
)
_ABBR = {"英": "en", "和": "ja"}
# A translation asked for without naming the language ("Translate this", 「訳してください」): expect another.
_TRANSLATION = re.compile(r"\btranslat(?:e|es|ed|ing|ion|or)s?\b|翻訳|訳して|訳しなさい|訳せ", re.I)


def asked_languages(prompt: str) -> set[str]:
    """ISO codes of the languages `prompt` asks the answer to be in (see _ASKED)."""
    asked = set()
    for m in _ASKED.finditer(prompt):
        en = m.group("en") or m.group("en2")
        asked.add(_EN_NAMES[en.lower()] if en else _JA_NAMES.get(m.group("ja")) or _ABBR[m.group("abbr")])
    return asked


def other_language_asked(prompt: str, expected: str) -> bool:
    """True when the prompt asks for a language other than `expected` (an answer in it is right), or for a
    translation into a language it does not name. A prompt that names only the expected language
    (「親しみやすい日本語で」, "translate into Japanese") is judged like any other."""
    asked = asked_languages(prompt)
    return bool(asked - {expected}) if asked else bool(_TRANSLATION.search(prompt))


# Documentation addresses (RFC 2606 / 6761): what code samples and examples use, nobody's personal data.
_EXAMPLE_ADDRESS = re.compile(
    r"[\w.%+-]+@(?:[\w-]+\.)*(?:example\.(?:com|org|net)|[\w-]+\.(?:example|test|invalid|localhost))\b", re.I
)
_RUN = re.compile(r"(\S{1,4}?)\1{9,}")
_UNSPACED = re.compile(r"[\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af\u0e00-\u0e7f]")
_WORD = re.compile(r"\w+")
# A word of prose: a run of letters, or two kana or kanji (those scripts write no spaces; a Japanese word is
# about two characters long).
_PROSE_WORD = re.compile(r"[\u3040-\u30ff\u3400-\u9fff\uf900-\ufaff]{1,2}|[^\W\d_]+")
_ITEM = re.compile(r"[,;、，；]")


def prose_words(prose: str) -> int:
    """Words of `prose` outside lists of names: a line whose comma-separated items average under two words
    ("Twix、Snickers、Rolo", "Pele", "青、黄、緑") names things, and names have no language to be wrong
    about (lid.176 reads such lists of English answers as Spanish or French)."""
    total = 0
    for line in prose.split("\n"):
        items = [len(_PROSE_WORD.findall(item)) for item in _ITEM.split(line)]
        if sum(items) >= 2 * len(items):
            total += sum(items)
    return total


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
    lang_min_words: int = 5,
    lang_threshold: float = 0.5,
    langid_model: str | None = None,
) -> pd.DataFrame:
    """Columns text, finish_reason, prompt_text, lang (the language the answer should be in) -> CHECKS
    booleans, the response's detected language and its repeated n-gram ratio.

    wrong_language is judged on the prose of answers with at least `lang_min_words` words of it
    (`prose_words`: "OK", a name, a number or a list of names has no language to be wrong about), and not
    where the prompt asks for another language or a translation (`other_language_asked`)."""
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
        np.array([prose_words(w) >= lang_min_words for w in words])
        & (detected != UNDETERMINED)
        & (expected != UNDETERMINED)
        & ~np.array([other_language_asked(p, e) for p, e in zip(prompts, expected)])
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
