"""A connection that goes silent (socket left open) loses the rest of its range to another one
within seconds, long before the read timeout; deadlines, never sleeps."""

from __future__ import annotations

import hashlib
import threading
import time

from dlhelpers import lora_bytes
from dlserver import Resource

from lora_trainer.download import DownloadRequest, download


def run_with_deadline(req, opts, deadline: float):
    """download() in a thread; (result or exception, seconds), failing the test at the deadline."""
    out: dict = {}

    def go():
        try:
            out["res"] = download(req, opts)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            out["res"] = exc
        out["took"] = time.monotonic() - t0

    t0 = time.monotonic()
    t = threading.Thread(target=go, daemon=True)
    t.start()
    t.join(deadline)
    assert not t.is_alive(), f"not finished after {deadline} s"
    if isinstance(out["res"], BaseException):
        raise out["res"]
    return out["res"], out["took"]


def test_silent_connection_is_taken_over_long_before_the_read_timeout(srv, opts):
    """The issue's scenario: one answer stops after 500 kB and keeps its socket open; the default
    stall timeout (4 s) applies, the read timeout is 30 s."""
    data = lora_bytes(6 << 20)
    srv.routes["/s.safetensors"] = Resource(data=data, rate=2 << 20, stalls=[None, 500_000], stall_seconds=None)
    opts.read_timeout, opts.connections = 30.0, 4
    opts.stall_timeout = 4.0
    res, took = run_with_deadline(DownloadRequest([srv.url("/s.safetensors")]), opts, deadline=12)
    assert res.files[0].sha256 == hashlib.sha256(data).hexdigest()
    assert took < 9, took  # ~1 s of transfer + at most the 4 s stall timeout, far below 30 s


def test_single_connection_stall_reconnects(srv, opts):
    data = lora_bytes(2 << 20)
    srv.routes["/one.safetensors"] = Resource(data=data, stalls=[300_000], stall_seconds=None)
    opts.read_timeout, opts.stall_timeout, opts.connections = 30.0, 1.0, 1
    res, took = run_with_deadline(DownloadRequest([srv.url("/one.safetensors")]), opts, deadline=10)
    assert res.files[0].sha256 == hashlib.sha256(data).hexdigest()
    ranges = [r for p, r, _ in srv.log if p == "/one.safetensors"]
    assert len(ranges) == 2 and 0 < int(ranges[1].split("=")[1].split("-")[0]) <= 300_000, ranges  # goes on


def test_every_answer_stalls_fails_cleanly(srv, opts):
    """A server whose answers all go silent after their headers: bounded, a clear error, nothing placed."""
    data = lora_bytes(1 << 20)
    srv.routes["/dead.safetensors"] = Resource(data=data, stalls=[0] * 500, stall_seconds=None)
    opts.read_timeout, opts.stall_timeout, opts.retries, opts.connections = 30.0, 0.3, 2, 2
    try:
        run_with_deadline(DownloadRequest([srv.url("/dead.safetensors")]), opts, deadline=30)
    except Exception as exc:  # noqa: BLE001
        assert "stalled" in str(exc), exc
    else:
        raise AssertionError("a server that never sends a body byte cannot succeed")
    assert not (opts.root / "Lora").exists()
