"""Preallocation: the part file's blocks are reserved up front, bytes already there stay as they are."""

from __future__ import annotations

import os
import sys

import pytest

from lora_trainer.download.fileio import open_rw, preallocate, read_at, write_at


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fallocate is Linux's")
def test_preallocate_reserves_the_blocks_and_keeps_the_bytes(tmp_path):
    size = 8 << 20
    fd = open_rw(tmp_path / "f.part")
    try:
        write_at(fd, b"resume me", 4 << 20)  # a resumed part file: some bytes are in already
        os.ftruncate(fd, size)
        sparse = os.fstat(fd).st_blocks * 512
        status = preallocate(fd, size)
        if status == "unsupported":
            pytest.skip("this filesystem has no fallocate (the file stays sparse)")
        assert status == "allocated"
        assert sparse < size <= os.fstat(fd).st_blocks * 512
        assert os.fstat(fd).st_size == size
        assert read_at(fd, 9, 4 << 20) == b"resume me"
        assert read_at(fd, 4, 0) == b"\0" * 4
    finally:
        os.close(fd)
