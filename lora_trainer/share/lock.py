"""One pull at a time per models folder, across threads and processes (two clicks in the tab, the tab and a
terminal, two terminals): the second waits for the first, then finds its files current.

A lock file beside the pull record (`<models>/.lora-trainer-pulls.lock`) held with an OS lock
(`lora_trainer.file_lock`): the OS drops it when the holder exits or is killed, so a crash never leaves
the folder locked. The file itself stays (removing it would race a waiter that just opened it).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from lora_trainer.errors import UserError
from lora_trainer.events import StopFlag
from lora_trainer.file_lock import os_unlock, try_os_lock

LOCK_NAME = ".lora-trainer-pulls.lock"
POLL_S = 0.2

_threads: dict[str, threading.Lock] = {}
_guard = threading.Lock()


@contextlib.contextmanager
def folder_lock(root: str | Path, on_wait: Callable[[str], None] | None = None,
                stop: StopFlag | None = None) -> Iterator[None]:
    """Hold the folder's pull lock; while another holder has it, say so once (`on_wait`) and wait.

    Waiting has no deadline of its own (the other pull may be fetching gigabytes); a stop request ends it
    with an error instead.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    path = root / LOCK_NAME
    with _guard:
        thread_lock = _threads.setdefault(str(path.resolve()), threading.Lock())
    said = False

    def waiting(pause: float) -> None:
        nonlocal said
        if stop is not None and stop.requested:
            raise UserError(f"{root}: stopped while waiting for another pull into this folder")
        if not said and on_wait is not None:
            on_wait(f"another pull is updating {root}; waiting for it to finish")
        said = True
        time.sleep(pause)

    while not thread_lock.acquire(timeout=POLL_S):
        waiting(0)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_BINARY", 0), 0o644)
        try:
            while not try_os_lock(fd):
                waiting(POLL_S)
            try:
                yield
            finally:
                os_unlock(fd)
        finally:
            os.close(fd)
    finally:
        thread_lock.release()
