"""TensorBoard sink: the same training events the CLI and UI render, written as event files.

Used only when the `tensorboard` package is installed (`make_tensorboard_sink` returns None
otherwise), so the core keeps working inside hosts that lack it.
"""

from __future__ import annotations

import os
from typing import Any

from lora_trainer.events import Event


class TensorBoardSink:
    """Writes loss / avg_loss / lr per step (val_loss where validated) and sample images into `log_dir`."""

    def __init__(self, log_dir: str):
        from torch.utils.tensorboard import SummaryWriter

        os.makedirs(log_dir, exist_ok=True)
        self.log_dir = log_dir
        self.writer = SummaryWriter(log_dir=log_dir)

    def __call__(self, event: Event) -> None:
        d = event.data
        if event.type == "progress" and "step" in d:
            step = int(d["step"])
            for key in ("loss", "avg_loss", "lr", "it_per_s", "val_loss"):
                if d.get(key) is not None:
                    self.writer.add_scalar(f"train/{key}", float(d[key]), step)
        elif event.type == "sample":
            self._images(int(d.get("step", 0)), d.get("paths") or [], d.get("prompts") or [])
        elif event.type in ("done", "stopped", "error", "checkpoint"):
            self.writer.flush()

    def _images(self, step: int, paths: list[str], prompts: list[str]) -> None:
        import numpy as np
        from PIL import Image

        for i, path in enumerate(paths):
            try:
                arr = np.asarray(Image.open(path).convert("RGB"))
            except OSError:
                continue
            tag = f"samples/{i:02d}" + (f" {prompts[i][:60]}" if i < len(prompts) else "")
            self.writer.add_image(tag, arr, step, dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def make_tensorboard_sink(log_dir: str) -> Any:
    """A TensorBoardSink, or None when tensorboard is not installed."""
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return None
    return TensorBoardSink(log_dir)
