"""Caption text: reading caption files, tags, trigger words, per-sample shuffle and dropout."""

from __future__ import annotations

import random
import re

CAPTION_FALLBACKS = (".txt", ".caption")


def read_caption_file(path: str) -> str:
    """Caption text of a file: non-empty lines joined with ", " (one-tag-per-line files work too).
    Raises UnicodeDecodeError for non-UTF-8 files; the caller names the file."""
    with open(path, encoding="utf-8-sig") as fh:
        lines = [ln.strip() for ln in fh.read().splitlines()]
    return ", ".join(ln for ln in lines if ln)


def split_tags(caption: str) -> list[str]:
    """Comma-separated tags, stripped, empties dropped."""
    return [t.strip() for t in caption.split(",") if t.strip()]


def has_trigger(caption: str, trigger: str) -> bool:
    """True when `trigger` occurs as a whole word/phrase (case-insensitive)."""
    pattern = r"(?<!\w)" + re.escape(trigger.strip()) + r"(?!\w)"
    return re.search(pattern, caption, flags=re.IGNORECASE) is not None


def add_trigger(caption: str, trigger: str) -> str:
    """Prepend the trigger word when the caption lacks it, so `keep_tokens: 1` keeps it first."""
    trigger = trigger.strip()
    if not trigger or has_trigger(caption, trigger):
        return caption
    return f"{trigger}, {caption}" if caption.strip() else trigger


def process_caption(caption: str, rng: random.Random, *, shuffle: bool = False, keep_tokens: int = 0,
                    dropout_rate: float = 0.0) -> str:
    """The caption one training sample sees. Dropout first (an empty caption teaches the
    unconditional prediction), then shuffle all tags after the first `keep_tokens`.
    The rng is consumed the same way whatever the options, so results depend only on the seed."""
    drop = rng.random() < dropout_rate
    order_seed = rng.random()
    if drop:
        return ""
    if not shuffle:
        return caption
    tags = split_tags(caption)
    head, tail = tags[:keep_tokens], tags[keep_tokens:]
    random.Random(order_seed).shuffle(tail)
    return ", ".join(head + tail)
