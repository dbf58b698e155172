"""The link list format: one file per line, `name | url [mirror ...] | sha256`, any order, `#` comments."""

from __future__ import annotations

import re

from lora_trainer.download.errors import BadRequestError
from lora_trainer.download.fetch import SHA_RE, DownloadRequest

_URLISH = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def parse_line(line: str, lineno: int | None = None) -> DownloadRequest | None:
    """One request from a line; None for blank lines and comments. Several URLs = mirrors of one file."""
    text = line.strip()
    if not text or text.startswith("#"):
        return None
    urls: list[str] = []
    name = sha = None
    for field in (f.strip() for f in text.split("|")):
        if not field:
            continue
        words = field.split()
        if all(_URLISH.match(w) for w in words):
            urls.extend(words)
        elif SHA_RE.match(field):
            sha = field.lower()
        elif name is None:
            name = field
        else:
            where = f"line {lineno}: " if lineno else ""
            raise BadRequestError(f"{where}'{field}' is neither a link nor a SHA-256; write `name | url | sha256`")
    if not urls:
        where = f"line {lineno}: " if lineno else ""
        raise BadRequestError(f"{where}no http(s) link in '{text}'; write `name | url | sha256` "
                              "(name and sha256 optional)")
    req = DownloadRequest(urls=urls, name=name, sha256=sha)
    req.validate()
    return req


def parse_text(text: str) -> list[DownloadRequest]:
    """All requests of a pasted block or a list file."""
    out = []
    for i, line in enumerate(text.splitlines(), 1):
        req = parse_line(line, i)
        if req is not None:
            out.append(req)
    return out
