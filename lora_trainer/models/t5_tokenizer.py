"""A small T5-style (SentencePiece Unigram) tokenizer built in code, for the tiny FLUX.1 / Chroma models.

Why: FLUX.1 and Chroma read prompts through a T5 tokenizer; none can be downloaded here, and the tiny
models must still run the real `transformers` T5 tokenizer code path (pad/eos/unk ids, `▁` word
marks, `</s>` appended, padding to `max_length`). The vocabulary follows T5's layout: `<pad>` = 0,
`</s>` = 1, `<unk>` = 2, then `▁word` pieces for a small word list and single characters, so unknown
words still tokenize (into characters); words appear lower-case and capitalised. Built with the
`tokenizers` library (no sentencepiece model file), saved as `tokenizer.json` so
`T5TokenizerFast.from_pretrained` reads it back.
"""

from __future__ import annotations

import json
import os
import string
from collections.abc import Iterable

PAD, EOS, UNK = "<pad>", "</s>", "<unk>"
WORD_MARK = "\u2581"  # SentencePiece's "▁" (start of a word)


def build_pieces(words: Iterable[str]) -> list[tuple[str, float]]:
    """(piece, log-probability) in id order: specials, whole words, then characters (lower scores,
    so the Unigram model prefers a whole word when it knows it)."""
    pieces: list[tuple[str, float]] = [(PAD, 0.0), (EOS, 0.0), (UNK, 0.0)]
    seen = {p for p, _ in pieces}
    for w in dict.fromkeys(v for word in words for v in (word.lower(), word.capitalize())):
        piece = WORD_MARK + w
        if w and piece not in seen:
            pieces.append((piece, -5.0))
            seen.add(piece)
    for ch in [WORD_MARK, *string.ascii_letters, *string.digits, *string.punctuation]:
        for piece in (ch, WORD_MARK + ch):
            if piece not in seen:
                pieces.append((piece, -10.0))
                seen.add(piece)
    return pieces


def _backend(words: Iterable[str]):  # -> tokenizers.Tokenizer
    from tokenizers import Tokenizer, decoders, pre_tokenizers, processors
    from tokenizers.models import Unigram

    pieces = build_pieces(words)
    tok = Tokenizer(Unigram(pieces, unk_id=2))
    # what transformers' T5 tokenizer sets up itself (it drops a custom normalizer, so no lower-casing:
    # like T5, the vocabulary has both cases instead)
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                                 pre_tokenizers.Metaspace(replacement=WORD_MARK,
                                                                          prepend_scheme="always")])
    tok.decoder = decoders.Metaspace(replacement=WORD_MARK, prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(single=f"$A {EOS}", pair=f"$A {EOS} $B {EOS}",
                                                       special_tokens=[(EOS, 1)])
    return tok


def write_t5_tokenizer(folder: str, words: Iterable[str], model_max_length: int = 512) -> str:
    """Write tokenizer.json + tokenizer_config.json + special_tokens_map.json into `folder`."""
    os.makedirs(folder, exist_ok=True)
    _backend(words).save(os.path.join(folder, "tokenizer.json"))
    cfg = {"tokenizer_class": "T5Tokenizer", "model_max_length": model_max_length, "eos_token": EOS,
           "pad_token": PAD, "unk_token": UNK, "extra_ids": 0, "additional_special_tokens": []}
    with open(os.path.join(folder, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(cfg, f, indent=1)
    with open(os.path.join(folder, "special_tokens_map.json"), "w", encoding="utf-8") as f:
        json.dump({"eos_token": EOS, "pad_token": PAD, "unk_token": UNK}, f, indent=1)
    return folder


def make_t5_tokenizer(words: Iterable[str], model_max_length: int = 512):  # -> T5TokenizerFast
    """A `transformers` fast T5 tokenizer over the words (written to a temporary folder and read back,
    the loading path every transformers version shares)."""
    import tempfile

    from transformers import T5TokenizerFast

    with tempfile.TemporaryDirectory() as folder:
        write_t5_tokenizer(folder, words, model_max_length)
        return T5TokenizerFast.from_pretrained(folder)
