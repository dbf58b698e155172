"""A small CLIP BPE tokenizer built in code (vocab.json + merges.txt), for the tiny built-in model.

Why: no tokenizer can be downloaded here, and the tiny model must still run the real
`transformers.CLIPTokenizer` code path. The vocabulary follows CLIP's layout: the 256 byte
characters, the same with `</w>` (end of word), merged tokens that spell each word of a small word
list, then `<|startoftext|>` and `<|endoftext|>`. Unknown words still tokenize (into characters).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"


def byte_chars() -> list[str]:
    """The 256 printable stand-ins CLIP uses for raw bytes, in CLIP's vocabulary order."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    table = {b: chr(b) for b in keep}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return [table[b] for b in keep] + [table[b] for b in range(256) if b not in keep]


def build_vocab(words: Iterable[str]) -> tuple[dict[str, int], list[str]]:
    """(vocab, merges) whose merges spell every word (lower-case ASCII letters) as one token."""
    chars = byte_chars()
    tokens = chars + [c + "</w>" for c in chars]
    merges: list[str] = []
    seen = set(tokens)
    for word in dict.fromkeys(w.lower() for w in words):
        if len(word) < 2 or not word.isascii() or not word.isalpha():
            continue
        prefix = word[0]
        for i, ch in enumerate(word[1:], start=1):
            nxt = ch + ("</w>" if i == len(word) - 1 else "")
            merged = prefix + nxt
            if merged not in seen:
                merges.append(f"{prefix} {nxt}")
                tokens.append(merged)
                seen.add(merged)
            prefix = merged
    tokens += [BOS, EOS]
    return {t: i for i, t in enumerate(tokens)}, merges


def write_tokenizer(folder: str, words: Iterable[str], model_max_length: int = 77) -> str:
    """Write vocab.json, merges.txt and the tokenizer configs into `folder`; returns `folder`."""
    vocab, merges = build_vocab(words)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "\n".join(merges) + "\n")
    cfg = {"tokenizer_class": "CLIPTokenizer", "model_max_length": model_max_length, "bos_token": BOS,
           "eos_token": EOS, "unk_token": EOS, "pad_token": EOS, "do_lower_case": True}
    with open(os.path.join(folder, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(cfg, f, indent=1)
    with open(os.path.join(folder, "special_tokens_map.json"), "w", encoding="utf-8") as f:
        json.dump({"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS}, f, indent=1)
    return folder


def make_tokenizer(words: Iterable[str], model_max_length: int = 77):  # -> CLIPTokenizer
    """A `transformers.CLIPTokenizer` over the words. Written to a temporary folder and loaded from
    there: the files API is the one every transformers version (4.30 … 5.x) shares; the tokenizer
    keeps everything in memory once loaded."""
    import tempfile

    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory() as folder:
        write_tokenizer(folder, words, model_max_length)
        return CLIPTokenizer.from_pretrained(folder)
