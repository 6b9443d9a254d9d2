"""Text normalization and content hashing, shared by ingest, curate and generate."""

from __future__ import annotations

import hashlib
import re
import unicodedata

# C0/C1 controls except tab and newline, plus zero-width characters and the BOM, which only hide
# differences between otherwise identical prompts.
_INVISIBLE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b-\u200d\u2060\ufeff]")
_EXOTIC_SPACE = re.compile(r"[\u00a0\u1680\u2000-\u200a\u202f\u205f]")
_TRAILING_SPACE = re.compile(r"[ \t]+\n")
_BLANK_RUN = re.compile(r"\n{3,}")


def normalize(text: str) -> str:
    """NFC, unified line endings, no control or zero-width characters, exotic spaces -> ' ',
    no trailing spaces per line, at most one blank line in a row, stripped ends.
    Leading indentation is kept: prompts carry code."""
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    text = _EXOTIC_SPACE.sub(" ", _INVISIBLE.sub("", text))
    text = _BLANK_RUN.sub("\n\n", _TRAILING_SPACE.sub("\n", text))
    return text.strip()


# Chat-UI residue that comes along when a prompt is copied out of a chat page: ShareGPT's page counter
# glued to the first word ("2 / 2Give me ...") and a list number ("#2. "). Not the user's words, and it
# hides duplicates: word shingles of the first words no longer match.
_UI_RESIDUE = (
    ("page_counter", re.compile(r"^\d{1,2} / \d{1,2}(?=[^\W\d_])(?!(?:st|nd|rd|th)s?\b)")),
    ("list_number", re.compile(r"^#\d{1,3}\.[ \t]+(?=\S)")),
)


def strip_ui_residue(text: str) -> tuple[str, list[str]]:
    """(the text without leading chat-UI residue, the kinds stripped)."""
    kinds = []
    for kind, pattern in _UI_RESIDUE:
        stripped = pattern.sub("", text, count=1)
        if stripped != text:
            kinds.append(kind)
            text = stripped.lstrip()
    return text, kinds


def content_hash(*parts: str, size: int = 16) -> str:
    """Stable hex id of the parts (blake2b; never Python's per-process `hash`)."""
    h = hashlib.blake2b(digest_size=size)
    for p in parts:
        h.update(p.encode("utf-8"))
        h.update(b"\x1f")
    return h.hexdigest()


def prompt_id(normalized_text: str) -> str:
    """prompt_id = hash of the normalized text: the same prompt from any source gets the same id."""
    return content_hash(normalized_text)


# What an answer holds besides its prose: fenced code (to the end of the text when a truncated answer
# never closes its fence), inline code, LaTeX math, Markdown table rows and URLs.
_NON_PROSE = re.compile(
    r"^[ \t]*(?P<fence>```|~~~)[^\n]*\n.*?(?:^[ \t]*(?P=fence)[ \t]*$|\Z)"
    r"|`[^`\n]+`|\$\$.+?\$\$|\\\[.+?\\\]|\\\(.+?\\\)|(?<![\\\w$])\$[^$\n]+\$"
    r"|^[ \t]*\|.*$|\b(?:https?://|www\.)\S+",
    re.M | re.S,
)
_LETTER = re.compile(r"[^\W\d_]")


def without_markup(text: str) -> str:
    """The text without code, math, Markdown tables and URLs."""
    return _NON_PROSE.sub(" ", text)


def prose(text: str) -> str:
    """The natural-language part of an answer: `without_markup`, then `letter_lines`. Code, math and data
    have no language to be wrong about, and placeholder addresses in code samples are not personal data."""
    return letter_lines(without_markup(text))


def letter_lines(text: str) -> str:
    """The lines of `text` that are mostly letters (not data such as "- A: 30kW -> 0kW")."""
    lines = []
    for line in text.split("\n"):
        visible = len(line) - line.count(" ") - line.count("\t")
        if visible and len(_LETTER.findall(line)) >= 0.5 * visible:
            lines.append(line)
    return "\n".join(lines).strip()
