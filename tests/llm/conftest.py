"""A tiny random-weight LLaMA and a word-level tokenizer (with a chat template), built in code."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

# One thread: the tiny model is faster that way on a busy machine, and float results stay bit-stable.
torch.set_num_threads(1)

SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]
WORDS = [f"n{i}" for i in range(40)] + ["count", "from", "user", "assistant", "system", ":", "hello", "bye"]
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} </s> {% endfor %}"
    "{% if add_generation_prompt %}assistant : {% endif %}"
)


def make_tokenizer(chat: bool = True):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIALS + WORDS)}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                  unk_token="<unk>")
    if chat:
        tok.chat_template = CHAT_TEMPLATE
    return tok


def save_tiny_llama(path: Path, chat: bool = True, seed: int = 0) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = make_tokenizer(chat)
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id, tie_word_embeddings=False,
                         initializer_range=0.2)
    model = LlamaForCausalLM(config)
    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    return path


def counting_line(rng: random.Random) -> dict[str, str]:
    start = rng.randrange(0, 30)
    return {"text": "count " + " ".join(f"n{i}" for i in range(start, start + rng.randrange(5, 10)))}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def counting_data(tmp_path_factory) -> tuple[Path, list[dict]]:
    rng = random.Random(1)
    root = tmp_path_factory.mktemp("data")
    train = write_jsonl(root / "train.jsonl", [counting_line(rng) for _ in range(48)])
    held_out = [counting_line(rng) for _ in range(16)]
    return train, held_out


def llm_config(tmp_path: Path, base: Path, data: Path, **over):
    from lora_trainer.config import load_config

    raw = {"task_type": "text-generation", "base_model": str(base), "train_data_dir": str(data),
           "output_dir": str(tmp_path / "out"), "max_seq_length": 32, "lora_rank": 8, "lora_alpha": 16,
           "lora_dropout": 0.0, "batch_size": 8, "epochs": 2, "learning_rate": 3e-3, "seed": 7,
           "mixed_precision": "no", "device": "cpu", "save_precision": "fp32", "lr_scheduler": "constant"}
    raw.update(over)
    return load_config(raw, base_dir=str(tmp_path))
