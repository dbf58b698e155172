"""A non-blocking exclusive OS lock on an open file, for "one writer at a time" across processes: flock
on POSIX, msvcrt on Windows. The OS drops it when the holder exits or is killed, so a crash never leaves
anything locked. Used by the downloader's `.part` claims and the pull folder lock."""

from __future__ import annotations

import os


def try_os_lock(fd: int) -> bool:
    """Take the lock on `fd` if no other open file description holds it; never waits."""
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False


def os_unlock(fd: int) -> None:
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
        return
    fcntl.flock(fd, fcntl.LOCK_UN)
