"""Fixtures: a live test server and fast-retry options (helpers live in dlhelpers.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from dlserver import TestServer  # noqa: E402

from lora_trainer.download.options import DownloadOptions  # noqa: E402


@pytest.fixture
def srv():
    with TestServer() as s:
        yield s


@pytest.fixture
def opts(tmp_path):
    return DownloadOptions(root=tmp_path / "models", connections=6, min_split=64 << 10, proxy="",
                           backoff=0.02, backoff_max=0.2, read_timeout=1.0, connect_timeout=2.0, retries=6,
                           min_free_bytes=0, progress_interval=0.05)
