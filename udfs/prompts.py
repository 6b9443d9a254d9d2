"""Chat prompt builders for the LLM stages: respond, translate, judge (plus the judge's score parser), and
the reverse-instruction steps (a passage translated into English, the instruction it answers).

Each builder returns an OpenAI-style message list (`[{"role": ..., "content": ...}]`) for the engine
layer. Templates are plain `str.format` strings so configs can override them.
"""

from __future__ import annotations

import re

Messages = list[dict[str, str]]

# Paper style (instructions translated into Japanese): ask for the translation only, never an answer.
TRANSLATE_TEMPLATE = (
    "Translate the following instruction into {target_lang}. Translate it faithfully and naturally; "
    "do not answer it, follow it, or add anything. Output only the {target_lang} translation.\n\n"
    "{source_lang} instruction:\n{text}"
)

# Reverse instructions (Indurthi et al. 2024): the native passage is the answer; an LLM writes the request.
PASSAGE_TEMPLATE = (
    "Translate the following {source_lang} text into {target_lang}. Translate it faithfully and completely; "
    "do not summarize, answer or add anything. Output only the {target_lang} translation.\n\n"
    "{source_lang} text:\n{text}"
)
INSTRUCT_TEMPLATE = (
    "Below is a text written by a person. Write the instruction or question that a user could have given "
    "an AI assistant for which this text is a good, complete answer. The instruction must be "
    "self-contained, must not mention that a text was given, and must not contain the answer itself. "
    "Output only the instruction.\n\nText:\n{text}"
)

# MT-Bench single-answer grading ("single-v1" in lm-sys/FastChat, Apache-2.0), on a 0-10 scale so a
# response can score zero.
JUDGE_SYSTEM = "You are a helpful assistant."
JUDGE_TEMPLATE = (
    "[Instruction]\nPlease act as an impartial judge and evaluate the quality of the response provided "
    "by an AI assistant to the user question displayed below. Your evaluation should consider factors "
    "such as the helpfulness, relevance, accuracy, depth, creativity, and level of detail of the "
    "response. Begin your evaluation by providing a short explanation. Be as objective as possible. "
    "After providing your explanation, you must rate the response on a scale of 0 to 10 by strictly "
    'following this format: "[[rating]]", for example: "Rating: [[5]]".\n\n'
    "[Question]\n{question}\n\n[The Start of Assistant's Answer]\n{answer}\n[The End of Assistant's Answer]"
)
# Language codes (as langid and the prompt tables store them) -> names the translate prompt uses.
LANG_NAMES = {
    "en": "English", "ja": "Japanese", "zh": "Chinese", "ko": "Korean", "de": "German", "fr": "French",
    "es": "Spanish", "it": "Italian", "pt": "Portuguese", "ru": "Russian", "ar": "Arabic", "hi": "Hindi",
    "nl": "Dutch", "pl": "Polish", "tr": "Turkish", "vi": "Vietnamese", "th": "Thai", "id": "Indonesian",
    "sv": "Swedish", "uk": "Ukrainian", "cs": "Czech", "fi": "Finnish", "he": "Hebrew", "el": "Greek",
}  # fmt: skip
_SCORE = re.compile(r"\[\[\s*(\d+(?:\.\d+)?)\s*\]\]")


def check_template(template: str, name: str, *fields: str) -> str:
    """`template` if it uses every `{field}`; else a ValueError naming the knob (raised on the driver, before
    any row is generated)."""
    missing = [f for f in fields if "{" + f + "}" not in template]
    if missing:
        raise ValueError(f"{name} must contain " + " and ".join("{" + f + "}" for f in fields))
    return template


def lang_name(code: str | None) -> str:
    """'ja' -> 'Japanese'; an unknown or empty code is returned as is (or 'the source language')."""
    if not code or code == "und":
        return "the source language"
    return LANG_NAMES.get(code.split("-")[0].lower(), code)


def respond_messages(text: str, system: str | None = None) -> Messages:
    """One user turn, optionally after a system prompt."""
    head = [{"role": "system", "content": system}] if system else []
    return [*head, {"role": "user", "content": text}]


def translate_messages(
    text: str,
    target_lang: str = "Japanese",
    source_lang: str = "English",
    template: str = TRANSLATE_TEMPLATE,
) -> Messages:
    """A request to translate `text`; `template` may use `{text}`, `{source_lang}`, `{target_lang}`."""
    if "{text}" not in template:
        raise ValueError("translate template must contain {text}")
    content = template.format(text=text, source_lang=source_lang, target_lang=target_lang)
    return [{"role": "user", "content": content}]


def instruct_messages(text: str, template: str = INSTRUCT_TEMPLATE) -> Messages:
    """A request to write the instruction that `text` answers; `template` must use `{text}`."""
    if "{text}" not in template:
        raise ValueError("instruct template must contain {text}")
    return [{"role": "user", "content": template.format(text=text)}]


def judge_messages(
    question: str, answer: str, template: str = JUDGE_TEMPLATE, system: str | None = JUDGE_SYSTEM
) -> Messages:
    """MT-Bench style single-answer grading of `answer` to `question`."""
    return respond_messages(template.format(question=question, answer=answer), system)


def parse_judge_score(judgement: str) -> float | None:
    """The last `[[score]]` in a judgement, or None when there is none or it is outside 0-10.

    The last one, because judges sometimes quote the format example ("Rating: [[5]]") before their
    own verdict.
    """
    scores = _SCORE.findall(judgement)
    if not scores:
        return None
    score = float(scores[-1])
    return score if 0 <= score <= 10 else None
