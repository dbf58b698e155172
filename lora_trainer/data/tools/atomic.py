"""Caption-file writes go through the project's one atomic writer; `remove_file` undoes a new caption."""

from __future__ import annotations

import contextlib
import os

from lora_trainer.atomic import atomic_write_text

__all__ = ["atomic_write_text", "remove_file"]


def remove_file(path: str | os.PathLike) -> None:
    """Delete a file if it exists (undo of a caption that did not exist before)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
