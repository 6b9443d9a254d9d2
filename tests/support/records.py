"""Real prompts of ../shared/data as raw records in the LMSYS-Chat-1M and WildChat layouts (ingest tests)."""

import json


def real_prompts(shared_data, n, name="en_dolly_open_qa.jsonl"):
    with open(shared_data / "prompts" / name, encoding="utf-8") as f:
        return [json.loads(line) for _, line in zip(range(n), f)]


def lmsys_record(p, i):
    return {
        "conversation_id": f"lmsys-{i}",
        "model": "vicuna-13b",
        "conversation": [
            {"role": "user", "content": p["text"]},
            {"role": "assistant", "content": "an answer"},
            {"role": "user", "content": f"follow-up {i}"},
        ],
        "turn": 2,
        "language": "English",
        "openai_moderation": [{"flagged": i % 5 == 0, "categories": {}}, {"flagged": False}, {"flagged": False}],
        "redacted": i % 7 == 0,
    }


def wildchat_record(p, i):
    return {
        "conversation_hash": f"wc{i:04x}",
        "model": "gpt-4-0314",
        "timestamp": "2023-04-09T00:02:53Z",
        "conversation": [
            {"role": "user", "content": p["text"], "language": "Japanese", "toxic": i % 4 == 0, "redacted": False},
            {"role": "assistant", "content": "回答", "language": "Japanese", "toxic": False, "redacted": False},
        ],
        "turn": 1,
        "language": "Japanese",
        "openai_moderation": [{"flagged": False}, {"flagged": False}],
        "toxic": i % 4 == 0,
        "redacted": i % 3 == 0,
    }


