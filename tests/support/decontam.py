"""The benchmark items the decontamination tests plant (a fixture, registered in tests/conftest.py)."""

import json

import pytest


def benchmark_rows(path):
    return [json.loads(line) for line in open(path, encoding="utf-8")]


@pytest.fixture(scope="module")
def real(shared_data):
    p = shared_data / "prompts"
    return {
        "arena": benchmark_rows(p / "en_arena_hard_v0.1.jsonl"),
        "clean": [r["text"] for f in ("en_dolly_open_qa.jsonl", "en_self_instruct_seed_tasks.jsonl", "ja_dolly_15k_ja_v0_first5000.jsonl") for r in benchmark_rows(p / f)],
        "ja": benchmark_rows(p / "ja_dolly_15k_ja_v0_first5000.jsonl"),
    }  # fmt: skip


