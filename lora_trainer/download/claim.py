"""One writer per `.part` file: two queue items (or two processes) never write the same partial file."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

from lora_trainer.download.errors import BadRequestError
from lora_trainer.file_lock import try_os_lock

_active: set[str] = set()
_lock = threading.Lock()


class PartClaim:
    """Holds `<name>.part` (created if missing) until release(); the lock follows the file's inode."""

    def __init__(self, path: Path, fd: int):
        self.path, self.fd = path, fd

    def release(self) -> None:
        """Unlock; an empty part file without a resume record (nothing fetched yet) is removed."""
        try:
            empty = (os.fstat(self.fd) if self.fd >= 0 else os.stat(self.path)).st_size == 0
            if empty and not self.path.with_name(self.path.name + ".json").exists():
                self.path.unlink(missing_ok=True)
        except FileNotFoundError:
            pass
        finally:
            if self.fd >= 0:
                os.close(self.fd)
                self.fd = -1
        with _lock:
            _active.discard(str(self.path))


def _try(path: Path) -> PartClaim | None:
    key = str(path)
    with _lock:
        if key in _active:
            return None
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_BINARY", 0), 0o644)
        if os.name == "nt":  # an open file cannot be renamed there: the in-process registry only
            os.close(fd)
            fd = -1
        elif not try_os_lock(fd):  # another process writes it
            os.close(fd)
            return None
        _active.add(key)
        return PartClaim(path, fd)


def claim_part(folder: Path, name: str, url: str) -> PartClaim:
    """`name.part`, or `name.<url-hash>.part` when another download of that name is running."""
    claim = _try(folder / f"{name}.part")
    if claim is None:
        tag = hashlib.sha1(url.encode()).hexdigest()[:8]
        claim = _try(folder / f"{name}.{tag}.part")
    if claim is None:
        raise BadRequestError(f"{name} from this link is already being downloaded (another item or process)")
    return claim
