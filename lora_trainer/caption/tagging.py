"""Turning a WD14 tagger's scores into a caption: thresholds, order, spelling. Pure numpy.

`selected_tags.csv` (SmilingWolf layout) has columns tag_id,name,category,count; category 9 is a
rating, 0 a general tag, 4 a character. Scores are already sigmoid probabilities.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lora_trainer.data.tools.tags import norm_tag
from lora_trainer.errors import ModelLoadError

RATING, GENERAL, CHARACTER = 9, 0, 4
_WORD = re.compile(r"[^\W_]{2,}")  # two letters/digits in a row: a word, not a face like ^_^ or o_o


@dataclass
class TagTable:
    names: list[str]
    categories: np.ndarray

    def __len__(self) -> int:
        return len(self.names)


def read_tag_table(path: Path) -> TagTable:
    """Read selected_tags.csv; needs the `name` and `category` columns."""
    with open(path, encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or "name" not in rows[0] or "category" not in rows[0]:
        raise ModelLoadError(f"{path}: expected a CSV with columns tag_id,name,category,count "
                             "(the selected_tags.csv that comes with the tagger)")
    try:
        categories = np.array([int(r["category"]) for r in rows], dtype=np.int64)
    except ValueError as exc:
        raise ModelLoadError(f"{path}: category column must be integers ({exc})") from exc
    return TagTable([r["name"] for r in rows], categories)


def spell(tag: str, underscores_to_spaces: bool = True) -> str:
    """`long_hair` → `long hair`; kaomoji such as `^_^`, `o_o`, `>_<` keep their underscore."""
    return tag.replace("_", " ") if underscores_to_spaces and _WORD.search(tag) else tag


def select_tags(scores: np.ndarray, table: TagTable, *, general_threshold: float = 0.35,
                character_threshold: float = 0.85, include_ratings: bool = False,
                exclude: Iterable[str] = (), always_first: Iterable[str] = (),
                underscores_to_spaces: bool = True, max_tags: int = 0) -> list[str]:
    """Tags of one image: rating (top one, if asked), then characters and general tags over their
    thresholds by falling confidence; `always_first` tags that were found move to the front."""
    if len(scores) != len(table):
        raise ModelLoadError(f"the tagger gives {len(scores)} scores but selected_tags.csv lists {len(table)} "
                             "tags: model.onnx and selected_tags.csv are from different models")
    excluded = {norm_tag(t) for t in exclude}
    cats = table.categories
    keep = ((cats == GENERAL) & (scores >= general_threshold)) | ((cats == CHARACTER) & (scores >= character_threshold))
    order = [int(i) for i in np.argsort(-scores, kind="stable") if keep[i]]
    if include_ratings and (cats == RATING).any():
        ratings = np.nonzero(cats == RATING)[0]
        order.insert(0, int(ratings[np.argmax(scores[ratings])]))
    tags = [spell(table.names[i], underscores_to_spaces) for i in order]
    tags = [t for t in tags if norm_tag(t) not in excluded]
    if max_tags > 0:
        tags = tags[:max_tags]
    first = [norm_tag(t) for t in always_first]
    front = sorted((t for t in tags if norm_tag(t) in first), key=lambda t: first.index(norm_tag(t)))
    return front + [t for t in tags if norm_tag(t) not in first]
