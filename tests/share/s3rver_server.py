"""s3rver (npm, pinned with its lock file in s3rver_pkg/) as a second S3-compatible server for the tests.

Why a second one: moto never refuses an expired presigned link; s3rver 3.7.1 does (its authentication
middleware answers 403 AccessDenied "Request has expired" once X-Amz-Date + X-Amz-Expires has passed).
It does NOT recompute SigV4 signatures (its source says the V4 calculation is unimplemented): it only
checks the access key exists, the header set is complete and the clock skew; moto checks signatures.

Installed with `npm ci` into `.cache/s3rver-<lock hash>/` of this checkout (git-ignored), once per lock
file; later runs reuse it. Without node/npm the tests that need it are skipped with that reason.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PKG = Path(__file__).parent / "s3rver_pkg"
ACCESS_KEY = SECRET_KEY = "S3RVER"  # s3rver's one built-in account


def install() -> Path:
    """The s3rver entry script, installed on first use."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        pytest.skip("node and npm are not installed: they run s3rver, the S3 server that checks link expiry")
    lock = (PKG / "package-lock.json").read_bytes()
    home = ROOT / ".cache" / f"s3rver-{hashlib.sha256(lock).hexdigest()[:12]}"
    entry = home / "node_modules" / "s3rver" / "bin" / "s3rver.js"
    if entry.is_file():
        return entry
    home.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="s3rver-install-", dir=home.parent))
    try:
        for name in ("package.json", "package-lock.json"):
            shutil.copyfile(PKG / name, work / name)
        done = subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--ignore-scripts", "--prefix", str(work)],
                              capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            pytest.fail(f"npm ci of s3rver failed (is the npm registry reachable?): {done.stderr.strip()[-800:]}")
        try:
            os.replace(work, home)  # another run may have finished first: then use that one
        except OSError:
            if not entry.is_file():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return entry


class S3rver:
    """`with S3rver(folder, bucket) as s:` runs s3rver on a free port of 127.0.0.1 at s.url."""

    def __init__(self, folder: Path, bucket: str):
        self.entry, self.folder, self.bucket = install(), Path(folder), bucket
        self.url = ""

    def __enter__(self) -> S3rver:
        self.folder.mkdir(parents=True, exist_ok=True)
        log_path = self.folder / "s3rver.log"
        self.log = open(log_path, "w")  # noqa: SIM115 - closed in __exit__
        self.proc = subprocess.Popen(
            [shutil.which("node") or "node", str(self.entry), "-d", str(self.folder / "data"), "-a", "127.0.0.1",
             "-p", "0", "-s", "--no-vhost-buckets", "--configure-bucket", self.bucket],
            stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while not self.url:
            m = re.search(r"listening on 127\.0\.0\.1:(\d+)", log_path.read_text())
            if m:
                self.url = f"http://127.0.0.1:{m.group(1)}"
            elif self.proc.poll() is not None or time.monotonic() > deadline:
                self.__exit__()
                pytest.fail(f"s3rver did not start: {log_path.read_text()[-800:]}")
            else:
                time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self.log.close()
