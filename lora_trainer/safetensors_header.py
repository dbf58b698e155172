"""The one reader of a .safetensors header: an 8-byte little-endian length, then that many bytes of JSON.

Callers turn `HeaderError` into their own error type and words (a model to re-download, a LoRA file, a
download that arrived damaged); `reason` tells them which check failed.
"""

from __future__ import annotations

import json
import struct
from typing import IO, Any


class HeaderError(ValueError):
    """reason: "short" (under 8 bytes), "length" (the length does not fit), "json" (not JSON) or "object"
    (JSON but not an object)."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


def read_header(fh: IO[bytes], *, size: int | None = None, max_len: int | None = None) -> tuple[dict[str, Any], int]:
    """(the header, `__metadata__` included; the offset where tensor data starts) of the file open at its
    start. `size`: the file's size, which the header must fit in; `max_len`: the longest header accepted."""
    head = fh.read(8)
    if len(head) < 8:
        raise HeaderError("short", f"too short to be a .safetensors file ({len(head)} bytes)")
    (n,) = struct.unpack("<Q", head)
    if (max_len is not None and n > max_len) or (size is not None and 8 + n > size):
        raise HeaderError("length", f"header length {n} does not fit in {size} bytes")
    try:
        header = json.loads(fh.read(n))
    except ValueError as exc:
        raise HeaderError("json", str(exc)) from exc
    if not isinstance(header, dict):
        raise HeaderError("object", "the header is not a JSON object")
    return header, 8 + n
