"""Atomic file and folder writes: a crash mid-write leaves the old one or the new one, never half.

Write to a temp file in the target's folder, fsync, give it the permissions a plain `open()` would
(mkstemp makes 0600, which other programs — a WebUI run by another user, a file server — cannot
read), then `os.replace` it into place.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any


def _default_mode(folder: bool = False) -> int:
    """The mode a plain open() (0666) or mkdir() (0777) would give under the current umask."""
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if folder else 0o666) & ~umask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], suffix: str = ".tmp", private: bool = False) -> Iterator[str]:
    """`with atomic_path(p) as tmp: writer(tmp)` — for writers that want a file name, not a handle
    (a GGUF writer, an exporter); `p` appears complete when the block ends without error.
    `private` keeps mkstemp's 0600 (secrets such as tokens: only the owner may read them)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix, dir=target.parent)
    os.close(fd)
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(tmp, 0o600 if private else _default_mode())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike[str], mode: str = "wb", encoding: str | None = None,
                private: bool = False) -> Iterator[IO[Any]]:
    """`with atomic_file(p) as f: f.write(...)` — `p` appears complete, or not at all."""
    with atomic_path(path, private=private) as tmp, open(tmp, mode, encoding=encoding,
                                        **({"newline": ""} if "b" not in mode else {})) as handle:
        yield handle


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    with atomic_file(path, "wb") as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike[str], text: str, encoding: str = "utf-8", private: bool = False) -> None:
    with atomic_file(path, "w", encoding=encoding, private=private) as f:
        f.write(text)


def atomic_copy(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
    with atomic_file(dst, "wb") as out, open(src, "rb") as inp:
        shutil.copyfileobj(inp, out, 1 << 20)


def _fsync_tree(folder: str) -> None:
    for root, _dirs, files in os.walk(folder):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def atomic_dir(final: str | os.PathLike[str], write: Callable[[str], Any]) -> None:
    """Build a folder with `write(tmp_dir)` and rename it into place, replacing an old one: readers
    see the old folder or the complete new one (a crash may leave `<final>.old`, never a half folder)."""
    final = os.path.abspath(os.fspath(final))
    parent = os.path.dirname(final)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-" + os.path.basename(final) + "-", dir=parent)
    try:
        write(tmp)
        _fsync_tree(tmp)
        os.chmod(tmp, _default_mode(folder=True))  # mkdtemp makes 0700
        if os.path.exists(final):
            old = final + ".old"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
