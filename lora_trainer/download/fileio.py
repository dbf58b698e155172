"""Positional file I/O that also works on Windows (no os.pwrite/pread there): every thread that writes
uses its own descriptor, so seek+write on it cannot race with another thread's position."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

POSITIONAL = hasattr(os, "pwrite") and hasattr(os, "pread")


def open_rw(path: Path) -> int:
    return os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_BINARY", 0), 0o644)


def write_at(fd: int, data, offset: int) -> None:
    view = memoryview(data)
    if not POSITIONAL:
        os.lseek(fd, offset, os.SEEK_SET)
    while view:
        n = os.pwrite(fd, view, offset) if POSITIONAL else os.write(fd, view)
        view, offset = view[n:], offset + n


def read_at(fd: int, size: int, offset: int) -> bytes:
    if POSITIONAL:
        return os.pread(fd, size, offset)
    os.lseek(fd, offset, os.SEEK_SET)
    return os.read(fd, size)


def sync_data(fd: int) -> None:
    """Push written data to the disk (fdatasync where it exists); errors only cost durability."""
    with contextlib.suppress(OSError):
        os.fdatasync(fd) if hasattr(os, "fdatasync") else os.fsync(fd)
