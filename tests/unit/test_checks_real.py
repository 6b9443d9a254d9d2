"""The response checks on 820 real answers (../shared/data/responses: gpt-3.5-turbo on the arena-hard
prompts, eight models on the Japanese Rakuda questions), each firing hand-checked (docs/response_checks.md).

No Spark and no engine: the checks are pure functions over pandas batches, run here with the real
lid.176 fastText model and the real PII detectors."""

import json

import pandas as pd
import pytest

from instructlake.udfs.checks import CHECKS, check_batch
from tests.support.lake import SHARED_DATA

RESPONSES = SHARED_DATA / "responses"


# Every answer a check should fire on, by response id, with what the answer does. Checks not listed
# fire on nothing. One firing is a known false positive and is pinned as such (KNOWN_FALSE).
LLAMA_IN_ENGLISH = {  # Llama-2-7b-chat answers all 40 Japanese questions in English
    "DuRRR6dHZjNpzVZikbcPvF", "RhQ6CWJiYUTNWrHgzYHxY3", "3bYrLsRDffBHVVaSQMrgdV", "YfxSb9canFHHkyErr3P2Qf",
    "boNcQwHrpi25LUcLK9DfJ2", "dyuWMdfbrPHgqa73HEDgjf", "AU3JK6493uTdb3RXSTvHFH", "Ny2dghFV25wQcoKCxRtHwx",
    "9cYkzbGuf6QyhqMfLZcMSn", "55MFneLUdo2AyHYgBUy9BB", "YBEcF56XgNMPdoKK7ScM53", "44fEbK9ueojJJNLnGUH2fr",
    "8vRzWryUrZnvdPZf63w4R6", "NktwvvjHVpBjRKDn96Cn5T", "9LPZ2UVJnede7b7dUtbxYh", "YLZjJBx2RbZhwYYnZK7m7j",
    "cHnrDzZ8yb3gYEG4kcEkdi", "Mrh5EWv4y4BTotTNK7yD2K", "H34fjGaNXVms799Fpa9aDi", "hsCWgHctwCEWCY3pbZsp3V",
    "29bR3LAdHjBrLZXKYASFi8", "S7KxABF78rgkCpkkzQkUXw", "NHUEWvCv9Ww8KXPeiDuMAK", "mnL7wDXUBF5Ydmie6uqCtL",
    "cdXFm7ou7QN9Qp66YCaKDp", "5ik6gELf5P666AYxqwLYiU", "CboSraix8prTqGHYPeeS9b", "6F5xjHHmeo4MdRdmQAMafv",
    "TYDJRJQUbkuuEgWJPbNtzK", "CgcTvayTzZVHbKGrqvx9Qq", "eLTwVSfQHg4YAp5LtV3v9U", "Uo4SbJ8MpFasSJBSEAREEG",
    "JWdTGsN9UgvExLDpfHB4dW", "fbg5KkkaweLZ3rJMacQHJf", "AVW9s2CrY6Uw8E278beb5B", "NFgWohDtSGvZraLpCvM6Uo",
    "CDZGjujhMwPUWdndneNyBW", "2MFymKXReVgvYrab9nmgbM", "VGYF9u7j453ZyWakdpYcig", "RQkMCS4xXJDumHgW8phtMJ",
}  # fmt: skip


EXPECTED = {
    "repetition": {
        "EAsKTy8Sys32fwfYFFHmvA": "gpt-3.5: '= \\sqrt{2 + \\sqrt{3}}' looped to the end",
        "hxi68xnnryseWAEjLNFbEL": "gpt-3.5: Lojban 'cu cusku lo se du'u la djan.' looped",
        "iNeW2NezdhAbE9zuVQprn3": "rinna 3.6B: nothing but '#' (ratio 0.0, caught by the run)",
        "TAJYdS5GvBQPdVr8yH6CBh": "rinna 3.6B: nothing but '#' (ratio 0.0, caught by the run)",
        "BriTmggbYDCsCAYgsatJX3": "rinna 3.6B: '###指示: ...' repeated",
        "7biciPdpkT9nZneQFrpSQN": "rinna 3.6B: an answer, then '#' to the end",
        "PkJskRBopVoiknKWhHZxeo": "rinna 3.6B: an answer, then '#' to the end",
        "KEeZoQGJZVVTxzvfZSpww8": "rinna 3.6B: repeats its own paragraph after '###指示:'",
        "KjUYnsmAQZ2ANancBhTHUa": "ELYZA 7B: '...への影響は限られたものとなりました' for every list item",
        "ivznhjMte4sq46F7gGE4SB": "RWKV: list items 2-5 the same sentence",
        "KYEV9pnYTg9nRWQiaf2L4q": "RWKV: repetitive phrasing, not a loop (ratio 0.506)",
    },
    "wrong_language": {i: "Llama-2-7b-chat answers a Japanese question in English" for i in LLAMA_IN_ENGLISH},
    "refusal": {
        "a5KsyQ69ArtwHDTh6Uho42": "gpt-3.5: 'unable to generate a flowchart', offers a guide",
        "cTsjESr4w7tGLDx3mnrMiX": "gpt-3.5: 'cannot provide you with an AutoLISP routine'",
        "8Z6SDRikXnMdeMdiFRckDM": "gpt-3.5: 'unable to write code for you'",
        "AaihDeMBxqYvLAvF2vMeii": "gpt-3.5: 'unable to access external links'",
        "gu7uGRgEN4VhPvVcKvJkLj": "gpt-3.5: 'unable to directly access external websites'",
        "hdnRSeB2GWmNockw2K8cwx": "gpt-3.5: 'cannot assist with that request' (covert mining)",
        "2PafPv4RwZQsPpug2Kcutt": "gpt-3.5: 'cannot assist with scraping'",
        "D5PWHB33ESASVkGmJ2wVxC": "gpt-3.5: 'can't provide a character sheet' (copyright)",
        "YLZjJBx2RbZhwYYnZK7m7j": "Llama-2: 'I cannot provide a detailed answer as it is a complex and sensitive topic'",
        "hsCWgHctwCEWCY3pbZsp3V": "Llama-2: 'I cannot provide information that promotes or glorifies violence'",
        "6F5xjHHmeo4MdRdmQAMafv": "Llama-2: refuses the Pacific War question",
        "Uo4SbJ8MpFasSJBSEAREEG": "Llama-2: refuses the 三位一体改革 question",
    },
    "self_identification": {
        "FZAx32VzbdSnELKwY5oNH2": "GPT-4: '私はAIアシスタントのため'",
        "cHnrDzZ8yb3gYEG4kcEkdi": "Llama-2: 'I'm just an AI'",
        "Uo4SbJ8MpFasSJBSEAREEG": "Llama-2: 'I'm a large language model'",
        "RQkMCS4xXJDumHgW8phtMJ": "Llama-2: 'I'm just an AI'",
    },
}


KNOWN_FALSE = {("repetition", "KYEV9pnYTg9nRWQiaf2L4q")}


@pytest.fixture(scope="module")
def checked():
    rows = [json.loads(line) for f in sorted(RESPONSES.glob("*.jsonl")) for line in f.open(encoding="utf-8")]
    df = pd.DataFrame(rows)
    batch = pd.DataFrame({"text": df["text"], "finish_reason": "stop", "prompt_text": df["prompt"], "lang": df["lang"]})
    return df, check_batch(batch)


def test_the_real_answers_are_all_there(checked):
    df, _ = checked
    assert len(df) == 820 and df["id"].is_unique
    assert df["model"].nunique() == 9


@pytest.mark.parametrize("check", CHECKS)
def test_each_check_fires_on_exactly_the_hand_checked_answers(checked, check):
    df, out = checked
    fired = set(df["id"][out[check]])
    assert fired == set(EXPECTED.get(check, {})), (
        f"{check}: unexpected {sorted(fired - set(EXPECTED.get(check, {})))}, missed {sorted(set(EXPECTED.get(check, {})) - fired)}"
    )
    true = {i for i in fired if (check, i) not in KNOWN_FALSE}
    assert not fired or len(true) / len(fired) >= 0.9, f"{check} precision {len(true)}/{len(fired)}"


def test_code_math_and_data_answers_have_no_language_or_pii_to_get_wrong(checked):
    df, out = checked
    technical = (df["source"] == "arena_hard_v0.1") & df["text"].str.contains(r"```|\\\(|\\\[|\$", regex=True)
    assert technical.sum() >= 250  # most arena-hard answers carry code or math
    assert not out.loc[technical, "wrong_language"].any()
    assert not out.loc[technical, "pii_leak"].any()  # info@example.com and support@company.com live in code samples
    # The one technical answer flagged for repetition is the one that loops.
    assert set(df["id"][technical & out["repetition"]]) == {"EAsKTy8Sys32fwfYFFHmvA"}


def test_an_answer_in_the_language_the_prompt_asked_for_is_not_wrong(checked):
    df, out = checked
    lojban = df["id"] == "hxi68xnnryseWAEjLNFbEL"
    assert out.loc[lojban, "response_lang"].item() == "jbo"
    assert not out.loc[lojban, "wrong_language"].item()


def test_good_models_pass(checked):
    df, out = checked
    gpt4 = df["model"].str.startswith("gpt-4")
    failing = out.loc[gpt4, list(CHECKS)].any(axis=1)
    assert set(df["id"][gpt4][failing]) == {"FZAx32VzbdSnELKwY5oNH2"}  # the one that calls itself an AI assistant
    assert (out.loc[gpt4, "response_lang"] == "ja").all()

