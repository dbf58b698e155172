"""The transfer engine against a real server with throttling and injected faults."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path

import pytest
from dlhelpers import files_under, lora_bytes
from dlserver import Raw, Redirect, Resource, Signed

from lora_trainer.download import DownloadRequest, download
from lora_trainer.download.errors import LinkExpiredError, NetworkError, VerificationError
from lora_trainer.events import StopFlag


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def test_throttled_parallel_ranges(srv, opts):
    data = lora_bytes(3 << 20)
    srv.routes["/m.safetensors"] = Resource(data=data, rate=1 << 20)
    events = []
    t = time.monotonic()
    res = download(DownloadRequest([srv.url("/m.safetensors")]), opts, events.append)
    took = time.monotonic() - t
    f = res.files[0]
    assert f.sha256 == sha(data) and f.kind == "lora"
    assert f.path.endswith(os.path.join("Lora", "m.safetensors"))
    ranges = [r for p, r, _ in srv.log if p == "/m.safetensors"]
    assert len(ranges) >= 6  # several connections
    assert took < 2.2, took  # one connection alone would need 3 s
    prog = [e for e in events if e.type == "progress"]
    assert prog and prog[-1].data["done_bytes"] == len(data) and prog[-1].data["total_bytes"] == len(data)
    assert any(e.type == "done" for e in events)
    assert files_under(opts.root) == ["Lora/m.json", "Lora/m.safetensors"]


def test_slow_segment_is_resplit(srv, opts):
    """One connection stalls after a little data; idle connections take over the rest of its range."""
    data = lora_bytes(2 << 20)
    srv.routes["/s.safetensors"] = Resource(data=data, rate=2 << 20, stalls=[None, None, 40000], stall_seconds=5)
    opts.read_timeout = 6.0  # the stall is not detected by timeout: an idle connection must take the range over
    t = time.monotonic()
    res = download(DownloadRequest([srv.url("/s.safetensors")]), opts)
    assert res.files[0].sha256 == sha(data)
    assert time.monotonic() - t < 4.5  # before the stalled connection would have woken up


def test_drops_mid_body(srv, opts):
    data = lora_bytes(1 << 20)
    srv.routes["/d.safetensors"] = Resource(data=data, rate=4 << 20, drops=[100_000, 30_000, 70_000, 5, 200_000])
    res = download(DownloadRequest([srv.url("/d.safetensors")]), opts)
    assert res.files[0].sha256 == sha(data)


def test_stall_read_timeout(srv, opts):
    data = lora_bytes(600_000)
    srv.routes["/t.safetensors"] = Resource(data=data, stalls=[150_000], stall_seconds=3)
    opts.read_timeout, opts.connections = 0.4, 1
    t = time.monotonic()
    res = download(DownloadRequest([srv.url("/t.safetensors")]), opts)
    assert res.files[0].sha256 == sha(data)
    assert time.monotonic() - t < 2.5


def test_5xx_and_429_bursts_with_retry_after(srv, opts):
    data = lora_bytes(500_000)
    srv.routes["/b.safetensors"] = Resource(data=data, statuses=[503, 500, 429, 502, 503], retry_after="1")
    t = time.monotonic()
    res = download(DownloadRequest([srv.url("/b.safetensors")]), opts)
    assert res.files[0].sha256 == sha(data)
    assert time.monotonic() - t >= 1.0  # Retry-After honoured


def test_redirect_chain_to_expiring_signed_url(srv, opts):
    data = lora_bytes(2 << 20)
    srv.routes["/real.safetensors"] = Resource(data=data, rate=1 << 20, drops=[300_000, 300_000])
    signer = Signed("/real.safetensors", ttl=0.2)  # expires before the drops (at 0.3 s)
    srv.routes["/hf/resolve/main/x.safetensors"] = Redirect("/hop")
    srv.routes["/hop"] = signer
    opts.connections = 3
    res = download(DownloadRequest([srv.url("/hf/resolve/main/x.safetensors")]), opts)
    assert res.files[0].sha256 == sha(data)
    assert os.path.basename(res.files[0].path) == "x.safetensors"
    assert signer.issued >= 2  # expired 403 → fresh signed URL from the original link
    assert any(p.startswith("/cdn/") for p, _, _ in srv.log)


def test_link_fully_expired_is_clear_error(srv, opts):
    srv.routes["/gone"] = Raw(403, b"<Error>Request has expired</Error>", "application/xml")
    with pytest.raises(LinkExpiredError, match="paste a fresh direct link"):
        download(DownloadRequest([srv.url("/gone")], name="a.safetensors"), opts)
    assert files_under(opts.root) == []


def test_html_login_page_with_200(srv, opts):
    srv.routes["/m.safetensors"] = Raw(200, b"<!DOCTYPE html><html><body>Please log in</body></html>" * 20)
    with pytest.raises(LinkExpiredError, match="web page .* expired or needs a login"):
        download(DownloadRequest([srv.url("/m.safetensors")]), opts)
    assert files_under(opts.root) == []


def test_small_json_error_body(srv, opts):
    srv.routes["/m.safetensors"] = Raw(200, b'{"error":"Unauthorized"}', "application/json")
    with pytest.raises(LinkExpiredError, match="Unauthorized"):
        download(DownloadRequest([srv.url("/m.safetensors")]), opts)
    assert files_under(opts.root) == []


def test_content_length_too_long(srv, opts):
    data = lora_bytes(300_000)
    srv.routes["/w.safetensors"] = Resource(data=data, ranges=False, length_delta=5000)
    opts.retries = 2
    with pytest.raises(NetworkError, match="fewer bytes than announced"):
        download(DownloadRequest([srv.url("/w.safetensors")]), opts)
    assert not (opts.root / "Lora").exists() and not (opts.root / "w.safetensors").exists()


def test_content_length_too_short_fails_header_check(srv, opts):
    data = lora_bytes(300_000)
    srv.routes["/w.safetensors"] = Resource(data=data, ranges=False, length_delta=-5000)
    with pytest.raises(VerificationError, match="truncated"):
        download(DownloadRequest([srv.url("/w.safetensors")]), opts)
    assert files_under(opts.root) == []


def test_remote_changes_mid_download_restarts_clean(srv, opts):
    old, new = lora_bytes(1 << 20), lora_bytes(1 << 20)
    # changes just after the probe's first 64 KiB: the probe's own answer goes on with the old
    # bytes, every later request (the other connections) gets the new file with another ETag
    srv.routes["/c.safetensors"] = Resource(data=old, rate=1 << 20, change_after=70_000, new_data=new)
    events = []
    res = download(DownloadRequest([srv.url("/c.safetensors")]), opts, events.append)
    assert res.files[0].sha256 == sha(new)  # never a splice of old and new
    assert any("starting over" in e.data.get("message", "") for e in events if e.type == "log")


def test_no_range_support_single_stream(srv, opts):
    data = lora_bytes(800_000)
    srv.routes["/n.safetensors"] = Resource(data=data, ranges=False, rate=2 << 20, drops=[200_000])
    res = download(DownloadRequest([srv.url("/n.safetensors")]), opts)
    assert res.files[0].sha256 == sha(data)
    assert all(len(h) and p == "/n.safetensors" for p, _, h in srv.log)


def test_sha256_mismatch_leaves_nothing(srv, opts):
    srv.routes["/m.safetensors"] = Resource(data=lora_bytes(100_000))
    with pytest.raises(VerificationError, match="SHA-256 mismatch"):
        download(DownloadRequest([srv.url("/m.safetensors")], sha256="0" * 64), opts)
    assert files_under(opts.root) == []


def test_mirror_fallback_reuses_bytes(srv, opts):
    data = lora_bytes(2 << 20)
    first = Resource(data=data, rate=1 << 20)
    state = {"n": 0}

    def flaky(handler):
        state["n"] += 1
        if state["n"] <= 7:  # the probe and the first ranges; these connections drop after 200 kB
            first.drops = [200_000]
            return handler._resource(first)
        return handler._raw(Raw(403, b"<html>expired</html>"))

    srv.routes["/m1/m.safetensors"] = flaky
    second = Resource(data=data, etag=first.current_etag())
    srv.routes["/m2/m.safetensors"] = second
    res = download(DownloadRequest([srv.url("/m1/m.safetensors"), srv.url("/m2/m.safetensors")]), opts)
    assert res.files[0].sha256 == sha(data)
    asked = 0
    for path, rng, _ in srv.log:
        if path == "/m2/m.safetensors" and rng and rng != "bytes=0-":
            a, b = rng.split("=")[1].split("-")
            asked += int(b) + 1 - int(a)
    assert 0 < asked < len(data) - 200_000  # the second mirror was asked only for what was missing


def test_cancel_keeps_nothing_final(srv, opts):
    data = lora_bytes(2 << 20)
    srv.routes["/x.safetensors"] = Resource(data=data, rate=256 << 10)
    stop = StopFlag()
    threading.Timer(0.3, stop.request).start()
    from lora_trainer.download.errors import CancelledError

    with pytest.raises(CancelledError):
        download(DownloadRequest([srv.url("/x.safetensors")]), opts, stop=stop)
    assert files_under(opts.root) == ["x.safetensors.part", "x.safetensors.part.json"]


def test_fast_stream_needs_one_request_and_hashes_in_line(srv, opts):
    """An unthrottled server: the probe's stream carries the whole file; no extra connections."""
    data = lora_bytes(3 << 20)
    srv.routes["/f.safetensors"] = Resource(data=data)
    res = download(DownloadRequest([srv.url("/f.safetensors")]), opts)
    assert res.files[0].sha256 == sha(data)
    assert [r for p, r, _ in srv.log] == ["bytes=0-"]


def test_corrupt_mirror_then_good_one(srv, opts):
    good = lora_bytes(300_000)
    bad = bytearray(good)
    bad[100_000] ^= 0xFF
    srv.routes["/bad/m.safetensors"] = Resource(data=bytes(bad), etag='"x1"')
    srv.routes["/good/m.safetensors"] = Resource(data=good, etag='"x2"')
    events = []
    res = download(DownloadRequest([srv.url("/bad/m.safetensors"), srv.url("/good/m.safetensors")],
                                   sha256=sha(good)), opts, events.append)
    assert Path(res.path).read_bytes() == good
    assert any("SHA-256 mismatch" in e.data.get("message", "") for e in events if e.type == "log")
    assert files_under(opts.root) == ["Lora/m.json", "Lora/m.safetensors"]


def test_windows_style_io_without_pwrite(srv, opts, monkeypatch):
    """Windows has no os.pwrite/pread: per-thread descriptors with seek+write must give the same file."""
    import lora_trainer.download.fileio as fileio

    monkeypatch.setattr(fileio, "POSITIONAL", False)
    data = lora_bytes(2 << 20)
    srv.routes["/w.safetensors"] = Resource(data=data, rate=2 << 20, drops=[None, 300_000])
    res = download(DownloadRequest([srv.url("/w.safetensors")]), opts)
    assert res.files[0].sha256 == sha(data)


def test_signed_url_expiring_into_an_html_page_mid_download(srv, opts):
    """Some CDNs answer an expired signed URL with 200 + a login page: re-resolve, keep the bytes."""
    data = lora_bytes(2 << 20)
    srv.routes["/real.safetensors"] = Resource(data=data, rate=1 << 20, drops=[None, 250_000, 250_000])
    signer = Signed("/real.safetensors", ttl=0.15, expired=Raw(200, b"<!DOCTYPE html><html>log in</html>"))
    srv.routes["/share/abc"] = signer
    opts.connections = 3
    res = download(DownloadRequest([srv.url("/share/abc")], name="x.safetensors"), opts)
    assert res.files[0].sha256 == sha(data) and signer.issued >= 2
    served = srv.routes["/real.safetensors"].served
    assert served < 2.5 * len(data)  # not restarted from zero again and again


def test_mirror_with_other_etag_reuses_bytes_when_sha_known(srv, opts):
    data = lora_bytes(1 << 20)
    first = Resource(data=data, rate=1 << 20, etag='"server-a"')
    state = {"n": 0}

    def dies(handler):
        state["n"] += 1
        if state["n"] <= 7:
            first.drops = [150_000]
            return handler._resource(first)
        return handler._raw(Raw(410, b"gone", "text/plain"))

    srv.routes["/a/m.safetensors"] = dies
    second = Resource(data=data, etag='"server-b"', last_modified=None)
    srv.routes["/b/m.safetensors"] = second
    res = download(DownloadRequest([srv.url("/a/m.safetensors"), srv.url("/b/m.safetensors")], sha256=sha(data)), opts)
    assert res.files[0].sha256 == sha(data)
    asked = sum(int(r.split("=")[1].split("-")[1]) + 1 - int(r.split("=")[1].split("-")[0])
                for p, r, _ in srv.log if p == "/b/m.safetensors" and r != "bytes=0-")
    assert 0 < asked < len(data) - 100_000
