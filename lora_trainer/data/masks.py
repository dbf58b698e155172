"""Loss masks: which pixels of an image the LoRA should learn from.

A mask is a grey image beside its image named `<stem>-masklabel.png` (OneTrainer's convention;
white = learn, black = ignore, grey = partly), or, with `alpha_mask`, the image's own alpha
channel (kohya's option). It goes through the same resize, crop and flip as the image and is then
averaged down to the latent grid (1/8 size), where it weights the per-pixel loss.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from PIL import Image, ImageOps

from lora_trainer.errors import DatasetError

if TYPE_CHECKING:
    import numpy as np

    from lora_trainer.data.buckets import Fit

MASK_SUFFIX = "-masklabel"
LATENT_SCALE = 8


def is_mask_file(name: str) -> bool:
    """A mask image (never a training image itself)."""
    return os.path.splitext(name)[0].endswith(MASK_SUFFIX)


def find_mask(image_path: str) -> str | None:
    """The mask file beside `image_path`, if there is one."""
    stem = os.path.splitext(image_path)[0] + MASK_SUFFIX
    for ext in (".png", ".jpg", ".jpeg", ".webp", ".bmp"):
        if os.path.isfile(stem + ext):
            return stem + ext
    return None


def check_mask_size(mask_path: str, image_path: str, image_size: tuple[int, int]) -> None:
    """One line naming the mask when it does not have its image's size (or cannot be read)."""
    try:
        with Image.open(mask_path) as im:
            size = ImageOps.exif_transpose(im).size if im.getexif().get(0x0112, 1) != 1 else im.size
    except OSError as exc:
        raise DatasetError(f"{mask_path}: cannot read mask: {exc}") from None
    if size != tuple(image_size):
        raise DatasetError(f"{mask_path}: mask is {size[0]}x{size[1]} but its image {os.path.basename(image_path)} "
                           f"is {image_size[0]}x{image_size[1]}; save the mask at the image's size")


def _mask_image(image_path: str, mask_path: str | None, alpha: bool) -> Image.Image | None:
    """The mask as an 'L' image at the image's size, or None (train everywhere)."""
    try:
        if mask_path:
            with Image.open(mask_path) as im:
                return ImageOps.exif_transpose(im).convert("L")
        if alpha:
            with Image.open(image_path) as im:
                im = ImageOps.exif_transpose(im)
                if "A" in im.getbands() or "transparency" in im.info:
                    return im.convert("RGBA").getchannel("A")
    except OSError as exc:
        raise DatasetError(f"{mask_path or image_path}: cannot read mask during training: {exc}") from None
    return None


def load_latent_mask(image_path: str, mask_path: str | None, alpha: bool, fit: Fit, flip: bool) -> np.ndarray | None:
    """The mask on the latent grid of `fit`'s bucket, float32 in [0, 1] ([h/8, w/8]); None = no mask."""
    import numpy as np

    mask = _mask_image(image_path, mask_path, alpha)
    if mask is None:
        return None
    if mask.size != fit.resized:
        mask = mask.resize(fit.resized, Image.Resampling.BILINEAR)
    top, left = fit.crop_top_left
    mask = mask.crop((left, top, left + fit.bucket[0], top + fit.bucket[1]))
    if flip:
        mask = mask.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    grid = (fit.bucket[0] // LATENT_SCALE, fit.bucket[1] // LATENT_SCALE)
    mask = mask.resize(grid, Image.Resampling.BOX)  # the area average of each 8x8 cell
    return np.asarray(mask, dtype=np.float32) / 255.0
