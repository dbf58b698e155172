"""Per-image size conditioning, as the dataset produces it and SDXL-type models consume it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class SizeInfo:
    """Per-image size conditioning (SDXL uses it; SD1/SD2 ignore it). (height, width) pairs."""

    original: tuple[int, int]
    crop_top_left: tuple[int, int] = (0, 0)
    target: tuple[int, int] = (0, 0)
