"""Checking a ranged answer against the request before a byte of it is written.

A server that answers `Range: bytes=a-b` with an impossible `Content-Range` (first > last, last past
the end), another start than asked, or a `Content-Length` that differs from the range it claims
would otherwise be written at the wrong place or loop forever on empty bodies.
"""

from __future__ import annotations

import http.client
import re

from lora_trainer.download.errors import MalformedResponseError

_CRANGE = re.compile(r"\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", re.IGNORECASE)


def parse_content_range(value: str | None) -> tuple[int, int, int | None] | None:
    """`bytes FIRST-LAST/TOTAL` → (first, last, total or None for `*`); None when it does not parse."""
    m = _CRANGE.match(value or "")
    if not m:
        return None
    return int(m.group(1)), int(m.group(2)), None if m.group(3) == "*" else int(m.group(3))


def check_partial(resp: http.client.HTTPResponse, start: int, end: int | None) -> tuple[int, int, int | None]:
    """Validate a 206 answer to `bytes=start-(end-1)` (end None: open-ended); returns its Content-Range.

    Raises MalformedResponseError naming what the server sent and what was asked."""
    raw = resp.getheader("Content-Range")
    asked = f"bytes={start}-{'' if end is None else end - 1}"
    parsed = parse_content_range(raw)
    if parsed is None:
        raise MalformedResponseError(
            f"the server answered 206 (partial content) without a valid Content-Range (got {raw!r}; asked {asked})")
    first, last, total = parsed
    if first > last or (total is not None and last >= total):
        raise MalformedResponseError(f"the server answered an impossible byte range {raw!r} (asked {asked})")
    if first != start or (end is not None and last >= end):
        raise MalformedResponseError(
            f"the server answered the byte range {raw!r}, which does not match the request ({asked})")
    length = resp.getheader("Content-Length")
    if length is not None and (not length.strip().isdigit() or int(length) != last - first + 1):
        raise MalformedResponseError(
            f"the server's Content-Length {length!r} does not match its Content-Range {raw!r} (asked {asked})")
    return first, last, total
