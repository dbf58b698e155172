"""The streaming SHA-256: bytes written in order, out of order, faster than it hashes, or rewritten."""

from __future__ import annotations

import hashlib
import os
import threading
import time

from dlhelpers import lora_bytes
from dlserver import Resource

from lora_trainer.download import DownloadRequest, download
from lora_trainer.download.fileio import open_rw, write_at
from lora_trainer.download.hashing import StreamHasher

CHUNK = 64 << 10


class Written:
    """A file filled chunk by chunk; prefix() = bytes from 0 all written (what the scheduler reports)."""

    def __init__(self, path, size):
        self.fd = open_rw(path)
        os.ftruncate(self.fd, size)
        self.size = size
        self.done: set[int] = set()
        self.lock = threading.Lock()

    def write(self, offset: int, data: bytes) -> None:
        write_at(self.fd, data, offset)
        with self.lock:
            self.done.add(offset)

    def prefix(self) -> int:
        with self.lock:
            at = 0
            while at in self.done and at < self.size:
                at += CHUNK
            return min(at, self.size)


def feed_all(hasher: StreamHasher, w: Written, data: bytes, order: list[int]) -> None:
    buf = bytearray(CHUNK)
    for off in order:
        piece = data[off:off + CHUNK]
        buf[:len(piece)] = piece
        w.write(off, piece)
        buf = hasher.feed(off, buf, len(piece))


def test_in_order_writes_are_handed_over(tmp_path):
    data = os.urandom(40 * CHUNK + 123)
    w = Written(tmp_path / "f", len(data))
    h = StreamHasher(w.fd, w.prefix, CHUNK).start()
    feed_all(h, w, data, list(range(0, len(data), CHUNK)))
    assert h.finish(len(data)) == hashlib.sha256(data).hexdigest()
    # mostly handed over; a chunk the hasher saw in the prefix before its feed() is read back instead
    assert h.handed_over > len(data) // 2 and h.handed_over + h.read_back == len(data)


def test_out_of_order_writes_are_read_back_once_the_prefix_passes(tmp_path):
    data = os.urandom(40 * CHUNK)
    w = Written(tmp_path / "f", len(data))
    h = StreamHasher(w.fd, w.prefix, CHUNK).start()
    offsets = list(range(0, len(data), CHUNK))
    feed_all(h, w, data, offsets[1::2] + offsets[0::2])  # odd chunks first, like two connections
    deadline = time.monotonic() + 10
    while h.hashed < len(data) and time.monotonic() < deadline:  # it hashes during the "download"
        time.sleep(0.01)
    assert h.hashed == len(data)
    assert h.finish(len(data)) == hashlib.sha256(data).hexdigest()
    assert h.read_back > 0


def test_a_hasher_that_falls_behind_is_not_waited_for(tmp_path, monkeypatch):
    """behind=1, wait=0: the writer keeps buffers the hasher has no room for; those bytes are read back."""
    slow_read_back = StreamHasher._hash_upto

    def slowed(self, limit):
        time.sleep(0.002)
        slow_read_back(self, limit)

    monkeypatch.setattr(StreamHasher, "_hash_upto", slowed)
    data = os.urandom(200 * CHUNK)
    w = Written(tmp_path / "f", len(data))
    h = StreamHasher(w.fd, w.prefix, CHUNK, behind=1, wait=0.0).start()
    feed_all(h, w, data, list(range(0, len(data), CHUNK)))
    assert h.finish(len(data)) == hashlib.sha256(data).hexdigest()
    assert h.handed_over and h.read_back, (h.handed_over, h.read_back)


def test_invalidated_hash_is_none_and_close_stops_the_thread(tmp_path):
    data = os.urandom(4 * CHUNK)
    w = Written(tmp_path / "f", len(data))
    h = StreamHasher(w.fd, w.prefix, CHUNK).start()
    feed_all(h, w, data, [0, CHUNK])
    h.invalidate()
    assert h.finish(len(data)) is None
    h2 = StreamHasher(w.fd, w.prefix, CHUNK).start()
    h2.close()  # a failed download: nothing more comes
    assert not h2._thread.is_alive()


def test_download_hash_right_when_the_hasher_falls_behind(srv, opts, monkeypatch):
    """End to end: the engine's hand-over limits at their smallest; the SHA-256 must come out the same."""
    import lora_trainer.download.engine as engine

    monkeypatch.setattr(engine, "HASH_BEHIND", 1)
    monkeypatch.setattr(engine, "HASH_WAIT", 0.0)
    data = lora_bytes(6 << 20)
    srv.routes["/h.safetensors"] = Resource(data=data)
    res = download(DownloadRequest([srv.url("/h.safetensors")]), opts)
    assert res.files[0].sha256 == hashlib.sha256(data).hexdigest()
