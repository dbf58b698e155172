"""SHA-256 of a file that is being written out of order, computed while it is written.

Bytes are hashed strictly in file order. A writer whose bytes are exactly the next ones hands its
buffer over (no read-back: the common case of one fast stream); bytes written elsewhere are read back
from the file (the page cache, usually) once everything before them is on disk, which the caller
reports through `prefix()`. The hashing runs on its own thread: hashlib releases the GIL, so it runs
alongside the network reads.
"""

from __future__ import annotations

import hashlib
import queue
import threading
from collections.abc import Callable

from lora_trainer.download.fileio import read_at

READ_BACK = 4 << 20  # bytes per read-back


class StreamHasher:
    """`feed()` after each write, `finish()` once the file is complete; `None` from finish() means
    "hash the file again" (the bytes were rewritten, see `invalidate`)."""

    def __init__(self, fd: int, prefix: Callable[[], int], buf_size: int, behind: int = 16, wait: float = 0.2):
        self.fd = fd
        self.prefix = prefix  # bytes from 0 that are all written (may be far beyond the file's end when done)
        self.buf_size = buf_size
        self.behind = behind  # buffers a writer may have waiting for the hasher before it waits for it
        self.wait = wait  # seconds it waits at most (then it keeps its buffer; those bytes are read back)
        self._sha = hashlib.sha256()
        self.hashed = 0  # bytes hashed so far
        self._fed = 0  # bytes hashed or queued for hashing, in order
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._free = threading.Condition(self._lock)  # the hasher gave a buffer back
        self._pool: list[bytearray] = []  # spare buffers the hasher gave back
        self._queued = 0  # buffers waiting for the hasher
        self._stale = False
        self.handed_over = self.read_back = 0  # bytes hashed each way (for tests and tuning)
        self._thread = threading.Thread(target=self._run, daemon=True, name="dl-hash")

    def start(self) -> StreamHasher:
        self._thread.start()
        return self

    def feed(self, offset: int, buf: bytearray, n: int) -> bytearray:
        """After buf[:n] was written at offset: hand the buffer over if those are the next bytes in
        order and return a spare one to read on into; else return buf itself (it stays the caller's)."""
        if offset != self._fed:
            return buf
        with self._lock:
            if self._queued >= self.behind and offset == self._fed:
                # the hasher is behind: wait for it (backpressure) rather than read the bytes back later
                self._free.wait_for(lambda: self._queued < self.behind, self.wait)
            if offset != self._fed or self._queued >= self.behind:
                return buf
            self._q.put((offset, buf, n))
            self._fed = offset + n
            self._queued += 1
            return self._pool.pop() if self._pool else bytearray(self.buf_size)

    def invalidate(self) -> None:
        """Bytes already hashed were rewritten (a stream without ranges started over): finish() gives None."""
        self._stale = True

    def close(self) -> None:
        """Stop the thread once it has hashed what is queued (also when the download failed)."""
        if self._thread.is_alive():
            self._q.put(None)
            self._thread.join()

    def finish(self, size: int) -> str | None:
        """Stop the thread after what is queued, hash the rest up to size; the hex digest or None."""
        self.close()
        if self._stale:
            return None
        self._hash_upto(size)
        return self._sha.hexdigest()

    # -- the hashing thread --------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            try:
                item = self._q.get_nowait()
            except queue.Empty:
                if self._claim_prefix():
                    continue
                try:
                    item = self._q.get(timeout=0.05)
                except queue.Empty:
                    continue
            if item is None:
                return
            offset, buf, n = item
            if offset != self.hashed:  # cannot happen; the caller then hashes the whole file again
                self._stale = True
            if buf is None:
                self._hash_upto(n)
                continue
            self._sha.update(memoryview(buf)[:n])
            self.hashed += n
            self.handed_over += n
            with self._lock:
                self._queued -= 1
                self._pool.append(buf)
                self._free.notify()

    def _claim_prefix(self) -> bool:
        """Queue a read-back of the finished prefix beyond what is hashed or queued already."""
        with self._lock:
            limit = self.prefix()
            if self._fed < limit < 1 << 62:
                self._q.put((self._fed, None, limit))
                self._fed = limit
                return True
            return False

    def _hash_upto(self, limit: int) -> None:
        while self.hashed < limit:
            data = read_at(self.fd, min(READ_BACK, limit - self.hashed), self.hashed)
            if not data:
                break
            self._sha.update(data)
            self.hashed += len(data)
            self.read_back += len(data)
