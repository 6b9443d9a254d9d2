"""wrong_language on real answers of the shapes issue #24 found missed: English answers to Japanese prompts
that name Japanese (「日本語で」, 「日本語翻訳者」), and one-line English answers to Japanese questions.

The answers are real: Llama-2-7b-chat's English answers to the Rakuda questions, and Dolly's human English
answers to its open_qa questions, whose Japanese translations (Dolly-ja) are the first 84 open_qa rows of
../shared/data/prompts in the same order as the English file's."""

import json

import pandas as pd
import pytest

from instructlake.udfs.checks import asked_languages, check_batch, other_language_asked, prose_words
from tests.support.lake import SHARED_DATA


def _rows(path: str) -> dict[str, dict]:
    return {r["id"]: r for r in map(json.loads, (SHARED_DATA / path).open(encoding="utf-8"))}


@pytest.fixture(scope="module")
def shared():
    return (
        _rows("responses/ja_rakuda_v1_answers.jsonl"),
        _rows("prompts/ja_dolly_15k_ja_v0_first5000.jsonl"),
        _rows("prompts/en_dolly_open_qa.jsonl"),
    )


def wrong(prompt: str, answer: str, lang: str) -> bool:
    batch = pd.DataFrame({"text": [answer], "finish_reason": ["stop"], "prompt_text": [prompt], "lang": [lang]})
    return bool(check_batch(batch)["wrong_language"].item())


def test_a_prompt_naming_the_expected_language_is_judged(shared):
    rakuda, _, _ = shared
    english = rakuda["DuRRR6dHZjNpzVZikbcPvF"]["text"]  # Llama-2: "Of course, I'd be happy to help! The four prefectures…"
    for prompt in (
        "取引先に送る、親しみやすい日本語でお礼のメールを書いてください。",
        "日本語翻訳者としての役割を担ってください。私が送る文章を自然な日本語にしてください。",
        "次の文章を日本語に翻訳してください。",
        "英語の文を日本語に訳してください。",  # English is the source, Japanese the target
        "Please translate the following into Japanese.",
        "Answer in polite Japanese: what are the four prefectures of Shikoku?",
    ):
        assert asked_languages(prompt) == {"ja"}, prompt
        assert wrong(prompt, english, "ja"), prompt


def test_a_prompt_naming_another_language_skips_the_check(shared):
    rakuda, _, _ = shared
    english = rakuda["DuRRR6dHZjNpzVZikbcPvF"]["text"]
    for prompt, asked in (
        ("日本語を英語に翻訳してください。", {"en"}),
        ("四国の県庁所在地を英語で答えてください。", {"en"}),
        ("この文を英訳してください。", {"en"}),
        ("Translate into rigorous Lojban: I am talking about Paris", {"jbo"}),
        ("次の文を訳してください。", set()),  # a translation into a language it does not name
    ):
        assert asked_languages(prompt) == asked, prompt
        assert other_language_asked(prompt, "ja"), prompt
        assert not wrong(prompt, english, "ja"), prompt
    assert asked_languages("日本語について教えてください。") == set()  # about Japanese, not in it
    assert not other_language_asked("日本語について教えてください。", "ja")


@pytest.mark.parametrize(
    ("ja_id", "en_id"),
    [
        ("dolly_ja_3", "dolly_open_qa_1"),  # "The name of the third daughter is Alice"
        ("dolly_ja_23", "dolly_open_qa_7"),  # "When the sun sets, the evening starts."
        ("dolly_ja_46", "dolly_open_qa_18"),  # "The currency in use in the Netherlands is the euro."
        ("dolly_ja_54", "dolly_open_qa_21"),  # "Cold water weighs more than hot water"
    ],
)
def test_a_one_line_english_answer_to_a_japanese_question_is_wrong(shared, ja_id: str, en_id: str):
    _, dolly_ja, dolly_en = shared
    question, answer = dolly_ja[ja_id]["text"], dolly_en[en_id]["response"]
    assert len(answer) < 55 and "\n" not in answer  # under the old 40-character floor or close to it
    assert wrong(question, answer, "ja")
    assert not wrong(question, dolly_ja[ja_id]["response"], "ja")  # Dolly-ja's Japanese answer passes


@pytest.mark.parametrize(
    ("ja_id", "en_id"),
    [
        ("dolly_ja_291", "dolly_open_qa_80"),  # "No"
        ("dolly_ja_22", "dolly_open_qa_6"),  # "Vermeer"
        ("dolly_ja_230", "dolly_open_qa_60"),  # "Ludwig van Beethoven" (lid.176: Dutch, 0.99)
        ("dolly_ja_31", "dolly_open_qa_10"),  # "Paul Newman"
    ],
)
def test_a_word_a_name_or_a_list_of_names_is_not_judged(shared, ja_id: str, en_id: str):
    _, dolly_ja, dolly_en = shared
    assert not wrong(dolly_ja[ja_id]["text"], dolly_en[en_id]["response"], "ja")


def test_the_floor_counts_prose_words_only():
    assert prose_words("OK") == 0 and prose_words("1806") == 0 and prose_words("42.") == 0  # a lone word names a thing
    assert prose_words("The name of the third daughter is Alice") == 8
    assert prose_words("Pele\nMessi\nRonaldo\nRonaldinho\nZinedine Zidane\nMbappe") == 2  # a list of names: under the floor
    assert prose_words("Twix、Snickers、Rolo、Caramel M&Ms、Milky Way、Milk Duds") == 0
    assert prose_words("冷水は温水より重くなる") == 6  # two kana or kanji make a word


def test_english_lists_of_names_in_english_answers_are_not_wrong(shared):
    _, _, dolly_en = shared
    row = next(r for r in dolly_en.values() if r["response"].startswith("Pele\nMessi"))
    assert not wrong(row["text"], row["response"], "en")  # lid.176 reads the list as Portuguese
