"""Curate-stage filters on real prompts from shared/data (pure pandas, no Spark)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from instructlake.udfs import filters


def _prompts(data: Path, name: str) -> list[str]:
    """Distinct prompt texts of one shared data file (the `shared_data` fixture skips when it is absent)."""
    return list(dict.fromkeys(json.loads(line)["text"] for line in (data / "prompts" / name).open(encoding="utf-8")))


@pytest.fixture(scope="module")
def arena(shared_data: Path) -> list[str]:
    return _prompts(shared_data, "en_arena_hard_v0.1.jsonl")


@pytest.fixture(scope="module")
def real(shared_data: Path) -> pd.Series:
    names = ["en_arena_hard_v0.1.jsonl", "en_dolly_open_qa.jsonl", "en_self_instruct_seed_tasks.jsonl",
             "ja_dolly_15k_ja_v0_first5000.jsonl"]  # fmt: skip
    return pd.Series([t for n in names for t in _prompts(shared_data, n)])


def test_empty_fires_on_blank_and_invisible_text() -> None:
    s = pd.Series(["", "   \n\t", "\u200b\ufeff \u2060", None, "a", " ok "])
    assert filters.empty_reason(s).tolist() == ["empty"] * 4 + [None, None]


def test_empty_never_fires_on_real_prompts(real: pd.Series) -> None:
    assert filters.empty_reason(real).isna().all()


def test_length_bounds(arena: list[str]) -> None:
    longest = max(arena, key=len)
    s = pd.Series(["hi", "  hi  ", "What is the capital of France?", longest])
    got = filters.length_reason(s, min_chars=3, max_chars=len(longest) - 1).tolist()
    assert got == ["too_short", "too_short", None, "too_long"]
    assert filters.length_reason(pd.Series(arena), min_chars=1, max_chars=None).isna().all()


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory, real: pd.Series) -> str:
    """A small byte-level BPE trained on the real prompts, saved as a Hugging Face tokenizer directory."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1000, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=["<s>"])  # fmt: skip
    tok.train_from_iterator(real.tolist(), trainer)
    out = tmp_path_factory.mktemp("tokenizer")
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>").save_pretrained(out)
    return str(out)


def test_token_length_matches_transformers_and_fires(tokenizer_dir: str, arena: list[str]) -> None:
    from transformers import AutoTokenizer

    s = pd.Series(arena[:50])
    ids = AutoTokenizer.from_pretrained(tokenizer_dir)(arena[:50], add_special_tokens=False)["input_ids"]
    expected = [len(i) for i in ids]
    counts = filters.token_counts(s, tokenizer_dir)
    assert counts.tolist() == expected
    limit = int(counts.median())
    reasons = filters.token_length_reason(s, tokenizer_dir, max_tokens=limit)
    assert (reasons == "too_many_tokens").tolist() == (counts > limit).tolist()
    assert reasons.notna().any() and reasons.isna().any()
    assert filters.load_tokenizer(tokenizer_dir) is filters.load_tokenizer(tokenizer_dir)  # once per worker


PII_POSITIVE = {
    "email": ["write to jane.doe+work@mail.example.org today", "連絡先は taro_yamada@example.co.jp です"],
    "phone": ["call me at +1 415-555-2671", "my number is +44 20 7946 0958", "(212) 555-0187 is the office",
              "+81-3-1234-5678"],  # fmt: skip
    "ipv4": ["my server 8.8.4.4 is down", "ssh root@142.250.72.14 fails"],
    "ipv6": ["ping 2001:4860:4860::8888 please", "address 2a00:1450:4001:82a::200e"],
    "credit_card": ["my card 4111 1111 1111 1111 was charged", "pay with 5500-0000-0000-0004", "amex 378282246310005"],
    "secret": [
        "OPENAI_API_KEY=sk-proj-4f9aXk2LmQ8rT1vB7nW3yZ6cD0eH5jK",
        "aws_access_key_id = AKIAIOSFODNN7EXAMPLE",
        "AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        "token ghp_1A2b3C4d5E6f7G8h9I0jK1lM2nO3pQ4rS5tU6v",
        "slack xoxb-2048-9713-Rk3nQpL0vAbCdEfGh",
        "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
        "client = Client(api_key='a8f5f167f44f4964e6c998dee827110c')",
        'db_password: "Tr0ub4dorXtraLongPass9"',
    ],
    "name_placeholder": ["Hi, I am NAME_1 and this is NAME_2.", "Write a poem for NAME_12", "NAME_1さんへの手紙を書いて"],
}


PII_NEGATIVE = {
    "email": ["email me @ home", "user@localhost", "see foo@bar"],
    "phone": ["born 1987-06-05, id 1234567890, total 4,500,000", "call 555-1234", "x = 3 + 4 - 5",
              "ISBN 978-3-16-148410-0"],  # fmt: skip
    "ipv4": ["connect to 192.168.1.10 or 127.0.0.1", "mask 255.255.255.0", "version 1.2.3.4.5", "ip 10.0.0.1"],
    "ipv6": ["it is 12:30:45 now", "std::vector<int> v; a::b::c", "loopback ::1 and 2001:db8::1"],
    "credit_card": ["my card 4111 1111 1111 1112 was charged", "timestamp 1700000000000", "order 1234 5678 9012 3456"],
    "secret": ["api_key = os.environ['API_KEY']", 'api_key="YOUR_API_KEY_HERE_PLEASE"', "sk-short",
               "the password is secret", "AKIA is not a key"],  # fmt: skip
    "name_placeholder": ["NAME_LIST = []", "MY_NAME_1 is a variable", "the NAME column"],
}


@pytest.mark.parametrize("kind", sorted(PII_POSITIVE))
def test_pii_kind_fires(kind: str, arena: list[str]) -> None:
    for i, snippet in enumerate(PII_POSITIVE[kind]):
        text = f"{arena[i]}\n{snippet}"  # inside real prompt text, not alone
        assert kind in filters.find_pii(text), snippet


@pytest.mark.parametrize("kind", sorted(PII_NEGATIVE))
def test_pii_kind_does_not_fire(kind: str) -> None:
    for snippet in PII_NEGATIVE[kind]:
        assert kind not in filters.find_pii(snippet), snippet


def test_pii_rare_on_real_prompts(real: pd.Series) -> None:
    kinds = filters.pii_kinds(real)
    flagged = real[kinds.map(bool)]
    # The public sets hold a few real-looking contact details (a cover-letter prompt, a review with an
    # e-mail address); anything beyond a handful means a detector fires on ordinary text.
    assert len(flagged) <= 5, flagged.str[:120].tolist()
    assert set().union(*kinds) <= {"email", "phone"}


def test_redacted_flag_and_pii_reason() -> None:
    text = pd.Series(["Hello NAME_1, my mail is a.b@example.com", "plain text", "plain text", None])
    kinds = filters.pii_kinds(text, redacted=pd.Series([False, True, None, True], dtype=object))
    assert kinds.tolist() == [["email", "name_placeholder"], ["redacted"], [], ["redacted"]]
    assert filters.pii_reason(kinds).tolist() == ["pii:email,name_placeholder", "pii:redacted", None, "pii:redacted"]
    # Kinds outside `drop` only flag: nothing is rejected for them.
    assert filters.pii_reason(kinds, drop={"email"}).tolist() == ["pii:email", None, None, None]


def test_moderation_passthrough() -> None:
    flagged = pd.Series([True, False, None, True], dtype=object)
    assert filters.moderation_reason(flagged).tolist() == ["moderation", None, None, "moderation"]


def test_template_skeleton_collapses_generated_prompts() -> None:
    people = ["Alice Smith", "Bob", "Chiara Rossi", "Dmitri", "Eve"]
    prompts = [
        f'Write a {n}-word story about NAME_{i} and "{q}" set in {1900 + 7 * i}, see https://ex.com/p/{i} '
        f"or mail u{i}@ex.org. Mention {people[i % 5]} twice."
        for i, (n, q) in enumerate(zip(range(100, 2100, 40), ["the red door", "a  lost key", "Ω", "x"] * 13))
    ]
    ids = {filters.template_id(filters.template_skeleton(p, mask_names=True)) for p in prompts}
    assert len(prompts) == 50 and len(ids) == 1
    # Without name masking the five people give five skeletons.
    assert len({filters.template_skeleton(p) for p in prompts}) == 5
    assert filters.template_skeleton(prompts[0], mask_names=True) == (
        "write a <num>-word story about <name> and <q> set in <num>, see <url> or mail <email> . "
        "mention <name> twice."
    )


def test_template_skeleton_keeps_apostrophes_and_sentence_starts() -> None:
    a = filters.template_skeleton("Don't say 'yes'. Tell Paris it's fine", mask_names=True)
    assert a == "don't say <q> . tell <name> it's fine"


def test_template_ids_distinct_on_real_prompts(shared_data: Path) -> None:
    names = ["en_arena_hard_v0.1.jsonl", "en_self_instruct_seed_tasks.jsonl"]
    texts = pd.Series([t for n in names for t in _prompts(shared_data, n)])
    ids = filters.template_ids(texts)
    assert ids.nunique() == len(texts)
    assert ids.str.fullmatch(r"[0-9a-f]{16}").all()
    # Stable: a fixed value, not Python's per-process hash().
    assert filters.template_id("hello <num>") == "5b53de1faa084be9"


def test_filter_batch_reason_priority(tokenizer_dir: str) -> None:
    df = pd.DataFrame(
        {
            "text": ["", "ok?", "Tell me about NAME_1", "a fine prompt about cats", "x" * 50, "call +1 415-555-2671"],
            "redacted": [False, False, False, False, False, None],
            "moderation_flagged": [True, False, True, False, False, False],
        },
        index=[10, 11, 12, 13, 14, 15],
    )
    out = filters.filter_batch(df, min_chars=4, max_chars=40, pii_drop={"email", "name_placeholder"},
                               tokenizer_path=tokenizer_dir, max_tokens=1000)  # fmt: skip
    assert out.index.tolist() == df.index.tolist()
    assert out["reason"].tolist() == ["empty", "too_short", "moderation", None, "too_long", None]
    assert out["pii"].tolist() == [[], [], ["name_placeholder"], [], [], ["phone"]]
    assert out["template_id"].iloc[3] == filters.template_id("a fine prompt about cats")

