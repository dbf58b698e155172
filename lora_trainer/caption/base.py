"""What every captioner offers, and the device choice they share."""

from __future__ import annotations

from typing import Protocol

from PIL import Image

from lora_trainer.errors import UserError
from lora_trainer.events import StopFlag


class CaptionStopped(Exception):
    """A stop request ended a batch in the middle of generation; its half-written captions are dropped."""


class Captioner(Protocol):
    name: str
    batch_size: int
    prose: bool  # True: captions are sentences (kept whole), False: comma-separated tags

    def load(self) -> None:
        """Load the model (heavy); called once before the first batch."""

    def caption(self, images: list[Image.Image], stop: StopFlag | None = None) -> list[str]:
        """One caption (sentence or comma-separated tags) per RGB image. Captioners with long
        generations watch `stop` between tokens and raise CaptionStopped; the others finish the batch."""

    def close(self) -> None:
        """Free the model and its GPU memory."""


def pick_device(device: str) -> str:
    """"auto" → cuda when torch sees a GPU, else cpu; "cuda" without a GPU is a UserError."""
    if device not in ("auto", "cpu", "cuda") and not device.startswith("cuda:"):
        raise UserError(f"device '{device}' is unknown; use auto, cpu or cuda")
    if device == "cpu":
        return "cpu"
    import torch

    if torch.cuda.is_available():
        return "cuda" if device == "auto" else device
    if device == "auto":
        return "cpu"
    raise UserError(f"device '{device}' was asked for but torch sees no CUDA GPU; use --device cpu")


def to_rgb(image: Image.Image, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """RGB copy; transparency is flattened onto `background` (taggers were trained on white)."""
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, background)
        canvas.paste(rgba, mask=rgba.split()[3])
        return canvas
    return image.convert("RGB")
