"""A tiny random-weight Llama chat model, built locally for tests and demos (no model hub here).

Recipe (measured on these machines, see ENVIRONMENT.md): a byte-level BPE (~1k vocab) trained with
`tokenizers`, a ChatML chat template, and a 2-layer Llama with head_dim 32 (the CPU attention kernels
reject smaller heads) and initializer_range 0.3 (the default 0.02 collapses into one repeated token).
The build is deterministic for a given corpus and seed, and idempotent: a directory that already holds
the same recipe is returned as is.

    python -m instructlake.udfs.tiny_model OUT_DIR [--seed N] [--corpus FILE.jsonl ...]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
from collections.abc import Iterable, Sequence
from itertools import islice
from pathlib import Path

RECIPE_VERSION = 1
MARKER = "instructlake_tiny_model.json"
PAD, IM_START, IM_END = "<|pad|>", "<|im_start|>", "<|im_end|>"
VOCAB_SIZE = 1024
CORPUS_LINES_PER_FILE = 2000  # enough text for ~1k merges; keeps the build to a few seconds
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
LLAMA_CONFIG = dict(
    hidden_size=128,
    intermediate_size=256,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=4,
    head_dim=32,
    max_position_embeddings=2048,
    tie_word_embeddings=True,
    initializer_range=0.3,
    torch_dtype="float32",
)
# English and Japanese so both scripts get merges even without corpus files.
BUILTIN_CORPUS = [
    "You are a helpful assistant.",
    "Translate the following instruction into Japanese.",
    "Write a short poem about the sea and the sky.",
    "Explain why the sky is blue in simple terms.",
    "What is the capital of France? The capital of France is Paris.",
    "Give me three tips for staying healthy during the winter.",
    "Summarize the following paragraph in one sentence.",
    "How do I sort a list of numbers in Python? Use the sorted function.",
    "Please act as an impartial judge and evaluate the quality of the response.",
    "Rating: [[7]] The answer is helpful, relevant and accurate.",
    "def add(a, b):\n    return a + b",
    "The quick brown fox jumps over the lazy dog.",
    "日本の首都はどこですか？日本の首都は東京です。",
    "次の文章を一文で要約してください。",
    "健康を保つための三つのヒントを教えてください。",
    "空が青い理由を簡単に説明してください。",
    "海と空についての短い詩を書いてください。",
    "以下の指示を日本語に翻訳してください。",
    "あなたは親切なアシスタントです。",
    "Pythonで数値のリストを並べ替えるにはどうすればよいですか？",
    "富士山は日本で一番高い山です。",
    "ありがとうございます。どういたしまして。",
]


def _corpus(corpus_files: Sequence[Path]) -> list[str]:
    """The built-in lines, then the `text` field of the first lines of each JSONL file."""
    lines = list(BUILTIN_CORPUS)
    for path in sorted(Path(p) for p in corpus_files):
        with path.open(encoding="utf-8") as fh:
            for line in islice(fh, CORPUS_LINES_PER_FILE):
                if text := json.loads(line).get("text"):
                    lines.append(text)
    return lines


def recipe_hash(corpus: Iterable[str], seed: int) -> str:
    """Hash of everything that determines the built files."""
    h = hashlib.sha256()
    h.update(json.dumps([RECIPE_VERSION, LLAMA_CONFIG, VOCAB_SIZE, CHAT_TEMPLATE, seed]).encode())
    for line in corpus:
        h.update(hashlib.sha256(line.encode()).digest())
    return h.hexdigest()


def _is_built(out: Path, digest: str) -> bool:
    try:
        marker = json.loads((out / MARKER).read_text())
    except (OSError, ValueError):
        return False
    files = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")
    return marker.get("recipe_hash") == digest and all((out / f).is_file() for f in files)


def is_built(out_dir: str | Path, seed: int = 0, corpus_files: Sequence[str | Path] = ()) -> bool:
    """True when `out_dir` already holds this recipe's build (cheap: no torch, no transformers)."""
    return _is_built(Path(out_dir), recipe_hash(_corpus([Path(p) for p in corpus_files]), seed))


def build_tiny_chat_model(out_dir: str | Path, seed: int = 0, corpus_files: Sequence[str | Path] = ()) -> Path:
    """Build (or reuse) the tiny chat model in `out_dir` and return its path.

    `corpus_files` are JSONL files with a `text` field (e.g. the shared prompt sets) added to the
    built-in tokenizer corpus; they are part of the recipe hash.
    """
    out = Path(out_dir)
    corpus = _corpus([Path(p) for p in corpus_files])
    digest = recipe_hash(corpus, seed)
    if _is_built(out, digest):
        return out

    # Heavy imports only when building, so reusing a built model stays cheap.
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(
        corpus,
        trainers.BpeTrainer(
            vocab_size=VOCAB_SIZE,
            special_tokens=[PAD, IM_START, IM_END],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        ),
    )
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=IM_END, pad_token=PAD)
    tokenizer.chat_template = CHAT_TEMPLATE

    config = LlamaConfig(
        vocab_size=bpe.get_vocab_size(),
        bos_token_id=None,
        eos_token_id=bpe.token_to_id(IM_END),
        pad_token_id=bpe.token_to_id(PAD),
        **LLAMA_CONFIG,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)

    if out.exists():
        shutil.rmtree(out)  # a partial or different build: start clean so no stale file survives
    out.mkdir(parents=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    # Written last: its presence marks a complete build.
    (out / MARKER).write_text(json.dumps({"recipe_hash": digest, "seed": seed}) + "\n")
    return out


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Build the tiny random-weight chat model.")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--corpus", nargs="*", default=[], help="JSONL files with a `text` field")
    args = parser.parse_args(argv)
    print(build_tiny_chat_model(args.out_dir, seed=args.seed, corpus_files=args.corpus))


if __name__ == "__main__":
    main()
