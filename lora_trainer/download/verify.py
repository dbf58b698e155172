"""Is it the file? SHA-256, safetensors header vs size, and 'that is a web page, not a model' checks."""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path

from lora_trainer.download.errors import AuthRequiredError, LinkExpiredError, VerificationError
from lora_trainer.safetensors_header import HeaderError, read_header

DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
               "U16": 2, "U32": 4, "U64": 8, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}
MAX_HEADER = 100 << 20
PICKLE_EXTS = (".ckpt", ".pt", ".pth", ".bin", ".pkl")  # names pickles usually have (content decides)
PICKLE_SUFFIX = ".pickle"  # added to a pickle kept outside the model folders: the WebUI lists none of these


def sha256_file(path: Path, chunk: int = 4 << 20) -> str:
    """Hex SHA-256 of a file, read in large blocks (the page cache usually still holds it)."""
    h = hashlib.sha256()
    buf = bytearray(chunk)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def read_safetensors_header(path: Path) -> dict:
    """Parse and check a safetensors header: tensors must tile the data area exactly (catches truncation)."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        try:
            header, start = read_header(f, size=size, max_len=MAX_HEADER)
        except HeaderError as exc:
            raise VerificationError({
                "short": f"{path.name}: too short to be a safetensors file ({size} bytes)",
                "length": f"{path.name}: not a valid safetensors file ({exc}); the download is incomplete or the "
                          "server sent something else",
                "json": f"{path.name}: safetensors header is not valid JSON ({exc})",
                "object": f"{path.name}: safetensors header is not a JSON object"}[exc.reason]) from exc
    data_len = size - start
    end_max = 0
    for key, info in header.items():
        if key == "__metadata__":
            continue
        try:
            begin, end = info["data_offsets"]
            count = math.prod(info["shape"]) * DTYPE_BYTES.get(info["dtype"], 0)
        except (KeyError, TypeError, ValueError) as exc:
            raise VerificationError(f"{path.name}: tensor '{key}' has a malformed header entry") from exc
        if not 0 <= begin <= end or (count and end - begin != count):
            raise VerificationError(f"{path.name}: tensor '{key}' has inconsistent offsets")
        end_max = max(end_max, end)
    if end_max != data_len:
        raise VerificationError(
            f"{path.name}: the tensors need {end_max} data bytes but the file has {data_len}; "
            "the download is truncated or corrupt — download it again")
    return header


def check_sha256(path: Path, actual: str, expected: str | None, where: str = "") -> None:
    if expected and actual.lower() != expected.lower():
        raise VerificationError(
            f"{path.name}: SHA-256 mismatch{where}: expected {expected.lower()}, got {actual}; "
            "the file is corrupt or a different version — check the hash or download again")


def sniff_error_page(first: bytes, content_type: str, total: int | None, name: str,
                     civitai: bool = False) -> None:
    """Raise when the start of a body is an HTML page or a small JSON error instead of a model."""
    lower_name = name.lower()
    if lower_name.endswith((".html", ".htm", ".json", ".txt")):
        return
    head = first[:1024].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    ctype = (content_type or "").lower()
    if head.startswith((b"<!doctype html", b"<html", b"<head", b"<body", b"<!--", b"<script")) or (
            "text/html" in ctype and head.startswith(b"<")):
        raise LinkExpiredError(
            "the server sent a web page (HTML) instead of the file: the link has expired or needs a login; "
            "paste a fresh direct link (netdisk links are only valid for a short time)")
    small = total is None or total <= 65536
    if small and head.startswith(b"{") and len(first) < 65536:
        try:
            data = json.loads(first.decode("utf-8"))
        except (ValueError, UnicodeDecodeError):
            return
        if isinstance(data, dict) and any(k in data for k in ("error", "message", "detail", "errors")):
            msg = next((str(data[k]) for k in ("error", "message", "detail", "errors") if k in data), "")[:200]
            if civitai:
                raise AuthRequiredError(
                    f"Civitai answered with an error instead of the file ({msg}): this file needs an API "
                    "token — pass --token, set 'Civitai API token' in the settings, or set CIVITAI_TOKEN")
            raise LinkExpiredError(
                f"the server answered with an error message instead of the file ({msg}): the link has "
                "expired or needs a login/token; paste a fresh direct link")


def looks_like_pickle(path: Path) -> bool:
    """A pickle or a torch zip checkpoint (`*/data.pkl`); we never load these."""
    with open(path, "rb") as f:
        head = f.read(4)
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return True
    if head == b"PK\x03\x04":
        import zipfile

        try:
            with zipfile.ZipFile(path) as z:
                return any(n.endswith("data.pkl") for n in z.namelist())
        except zipfile.BadZipFile:
            return False
    return False


def is_zip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"PK\x03\x04"
