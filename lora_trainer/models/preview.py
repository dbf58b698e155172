"""Decoded images as PIL images: the one conversion every family's sampler ends with."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from PIL import Image


def to_pil(img: torch.Tensor) -> Image.Image:
    """One decoded image [3, H, W] with values in [-1, 1] (clamped) as an 8-bit RGB image."""
    from PIL import Image

    arr = ((img.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(arr, "RGB")
