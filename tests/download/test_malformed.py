"""Broken answers (impossible or mismatched Content-Range, empty 206, length mismatch, garbage status
line): retried with a fresh request when they pass, else a clean failure within a minute that names
the server's error, with nothing at the final path."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from pathlib import Path

import pytest
from dlhelpers import files_under, lora_bytes
from dlserver import Resource

from lora_trainer.download import DownloadRequest, download
from lora_trainer.download.errors import MalformedResponseError
from lora_trainer.download.ranges import check_partial, parse_content_range

ROOT = Path(__file__).resolve().parents[2]
KINDS = ["inverted", "empty", "shifted", "length", "garbage", "ignored"]
SAID = {"inverted": "impossible byte range", "empty": "does not match its Content-Range",
        "shifted": "does not match the request", "length": "does not match its Content-Range",
        "garbage": "garbage answer", "ignored": "ignored the byte range"}


class _Resp:
    def __init__(self, **headers):
        self.headers = {k.replace("_", "-"): v for k, v in headers.items()}

    def getheader(self, name, default=None):
        return self.headers.get(name, default)


def test_check_partial_rules():
    ok = _Resp(Content_Range="bytes 100-199/1000", Content_Length="100")
    assert check_partial(ok, 100, 200) == (100, 199, 1000)
    assert check_partial(_Resp(Content_Range="bytes 0-9/*"), 0, None) == (0, 9, None)
    assert check_partial(_Resp(Content_Range="bytes 100-149/1000"), 100, 200) == (100, 149, 1000)  # shorter: ok
    bad = {"impossible": _Resp(Content_Range="bytes 2500001-2500000/7000000", Content_Length="0"),
           "impossible ": _Resp(Content_Range="bytes 0-1000/1000"),
           "valid Content-Range": _Resp(Content_Range="items 0-1/2"),
           "does not match the request": _Resp(Content_Range="bytes 101-199/1000"),
           "does not match the request ": _Resp(Content_Range="bytes 100-250/1000"),
           "does not match its": _Resp(Content_Range="bytes 100-199/1000", Content_Length="0")}
    for said, resp in bad.items():
        with pytest.raises(MalformedResponseError, match=said.strip()):
            check_partial(resp, 100 if "request" in said or "its" in said else 0, 200 if "request" in said else None)
    assert parse_content_range("bytes 1-2/3") == (1, 2, 3) and parse_content_range("bytes */3") is None


@pytest.mark.parametrize("kind", KINDS)
def test_broken_ranges_fail_cleanly_and_fast(srv, opts, kind):
    """Every ranged answer after the probe's is broken: the download fails, naming the error."""
    data = lora_bytes(3 << 20)
    srv.routes["/m.safetensors"] = Resource(data=data, rate=2 << 20, malformed=kind, malformed_from=1)
    opts.backoff, opts.backoff_max = 0.2, 2.0
    t = time.monotonic()
    with pytest.raises(MalformedResponseError, match=SAID[kind]):
        download(DownloadRequest([srv.url("/m.safetensors")]), opts)
    assert time.monotonic() - t < 60
    assert not (opts.root / "Lora").exists() and "m.safetensors" not in files_under(opts.root)


@pytest.mark.parametrize("kind", KINDS)
def test_a_few_broken_answers_are_retried(srv, opts, kind):
    data = lora_bytes(3 << 20)
    srv.routes["/m.safetensors"] = Resource(data=data, rate=2 << 20, malformed=kind, malformed_from=1,
                                            malformed_times=2)
    res = download(DownloadRequest([srv.url("/m.safetensors")]), opts)
    assert res.files[0].sha256 == hashlib.sha256(data).hexdigest()
    assert srv.routes["/m.safetensors"].malformed_times == 0  # both broken answers were sent


def test_cli_inverted_range_on_every_request(srv, tmp_path):
    """The reported case, run like a user: every ranged request (the first one included) answers 206,
    Content-Length 0 and an inverted Content-Range. Default retries and backoff, 16 connections."""
    data = lora_bytes(7_000_000)
    srv.routes["/m.safetensors"] = Resource(data=data, malformed="inverted")
    t = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "lora_trainer", "download", srv.url("/m.safetensors"),
                           "--to", str(tmp_path), "--flat", "-x", "16", "--proxy", ""],
                          cwd=ROOT, capture_output=True, text=True, timeout=90)
    assert time.monotonic() - t < 60
    assert proc.returncode == 5, proc.stderr
    assert f"impossible byte range 'bytes 1-0/{len(data)}'" in proc.stderr.splitlines()[-1]
    assert not (tmp_path / "m.safetensors").exists()
