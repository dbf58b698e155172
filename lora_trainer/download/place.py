"""Putting a verified file at its final path: routed folder, same-hash reuse, `name (1).ext`, atomic rename."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

from lora_trainer.atomic import atomic_copy
from lora_trainer.download.errors import SpaceError
from lora_trainer.download.naming import free_name
from lora_trainer.download.verify import sha256_file


def place(tmp: Path, folder: Path, name: str, sha256: str) -> tuple[Path, bool]:
    """Move tmp to folder/name. Returns (path, existed): an identical file already there is kept."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / name
    if target.exists():
        if target.is_file() and target.stat().st_size == tmp.stat().st_size and sha256_file(target) == sha256:
            tmp.unlink()
            return target, True
        target = free_name(folder, name)
    try:
        os.replace(tmp, target)
    except OSError:  # another file system: copy next to the target, then rename there
        atomic_copy(tmp, target)
        with contextlib.suppress(OSError):
            tmp.unlink()
    return target, False


def check_free(folder: Path, need: int, keep: int) -> None:
    """Refuse before downloading (or unpacking) what would not fit, keeping `keep` bytes free."""
    free = shutil.disk_usage(folder).free
    if free - need < keep:
        raise SpaceError(f"not enough free space in {folder}: need {need >> 20} MiB more, "
                         f"have {free >> 20} MiB; free some space or choose another folder with --to")
