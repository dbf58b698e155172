"""Caption tags: comma-separated phrases, the convention of kohya captions and WD14 output."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from lora_trainer.data.captions import split_tags as _split


def split_tags(caption: str | None) -> list[str]:
    """Tags of a caption in order (the training-side split, empty captions allowed)."""
    return _split(caption) if caption else []


def join_tags(tags: Iterable[str]) -> str:
    return ", ".join(tags)


def norm_tag(tag: str) -> str:
    """Comparison key: case, spacing and `_` vs space do not make two tags different."""
    return " ".join(tag.replace("_", " ").lower().split()) if any(c.isalnum() for c in tag) else tag.strip()


def dedupe(tags: Iterable[str]) -> list[str]:
    seen: set[str] = set()
    out = []
    for tag in tags:
        key = norm_tag(tag)
        if key and key not in seen:
            seen.add(key)
            out.append(tag)
    return out


def put_first(tags: list[str], first: Iterable[str]) -> list[str]:
    """`first` (e.g. the trigger word) at the front, in its order, each once; the rest keep order."""
    first = [t for t in first if t.strip()]
    keys = {norm_tag(t) for t in first}
    return dedupe([*first, *(t for t in tags if norm_tag(t) not in keys)])


def tag_frequency(captions: Iterable[str | None]) -> list[tuple[str, int]]:
    """(tag, images containing it), most frequent first; a tag counts once per caption."""
    counts: Counter[str] = Counter()
    shown: dict[str, str] = {}
    for caption in captions:
        for tag in dedupe(split_tags(caption)):
            key = norm_tag(tag)
            shown.setdefault(key, tag)
            counts[key] += 1
    return sorted(((shown[k], n) for k, n in counts.items()), key=lambda item: (-item[1], item[0]))
