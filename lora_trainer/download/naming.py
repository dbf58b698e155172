"""File names: from Content-Disposition (RFC 6266 / 5987), the URL, or the user; made safe; no clobbering."""

from __future__ import annotations

import contextlib
import re
import unicodedata
from pathlib import Path
from urllib.parse import unquote, urlsplit

_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)), *(f"lpt{i}" for i in range(10))}
_BAD_CHARS = re.compile(r'[\x00-\x1f\x7f/\\:*?"<>|]')
MAX_NAME_BYTES = 200
# parameters of a Content-Disposition header: name=token | name="quoted \" string"
_PARAM = re.compile(r';\s*([!#$%&\'*+.^_`|~0-9A-Za-z-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)')


def _fix_mojibake(value: str) -> str:
    """http.client decodes headers as latin-1; servers often send raw UTF-8 (Chinese names)."""
    try:
        return value.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return value


def parse_content_disposition(header: str | None) -> str | None:
    """The file name a Content-Disposition header offers; `filename*` (RFC 5987) wins over `filename`."""
    if not header:
        return None
    params: dict[str, str] = {}
    for key, raw in _PARAM.findall(";" + header.split(";", 1)[1] if ";" in header else ""):
        value = raw.strip()
        if value.startswith('"') and value.endswith('"') and len(value) >= 2:
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        params.setdefault(key.lower(), value)
    ext = params.get("filename*")
    if ext and "'" in ext:
        charset, _lang, encoded = ext.split("'", 2)
        try:
            return unquote(encoded, encoding=charset or "utf-8", errors="strict")
        except (LookupError, UnicodeDecodeError):
            pass
    plain = params.get("filename")
    if plain:
        plain = _fix_mojibake(plain)
        if re.search(r"%[0-9A-Fa-f]{2}", plain):
            with contextlib.suppress(UnicodeDecodeError):
                plain = unquote(plain, errors="strict")
        return plain
    return None


def name_from_url(url: str) -> str | None:
    """Last path segment of a URL, percent-decoded (e.g. HF `.../resolve/main/x.safetensors`)."""
    path = urlsplit(url).path
    last = path.rstrip("/").rsplit("/", 1)[-1]
    if not last:
        return None
    try:
        return unquote(last, errors="strict")
    except UnicodeDecodeError:
        return last


def sanitize(name: str | None, fallback: str = "download") -> str:
    """A name that is one plain file name on Windows, macOS and Linux: no separators, `..`, reserved names."""
    name = unicodedata.normalize("NFC", name or "")
    name = name.replace("\\", "/").rsplit("/", 1)[-1]  # keep only the last component of any path
    name = _BAD_CHARS.sub("_", name)
    name = name.strip().strip(".").strip()
    if not name or set(name) <= {"_", "."}:
        name = fallback
    stem, dot, ext = name.rpartition(".")
    if not dot:
        stem, ext = name, ""
    if stem.split(".")[0].lower() in _RESERVED:
        stem = "_" + stem
    if len(ext.encode()) > 16:  # not a real extension
        stem, ext = f"{stem}.{ext}" if stem else ext, ""
    suffix = f".{ext}" if ext else ""
    budget = MAX_NAME_BYTES - len(suffix.encode())
    raw = stem.encode()
    if len(raw) > budget:
        stem = raw[:budget].decode("utf-8", "ignore").rstrip(". ")
    return (stem or fallback) + suffix


def choose_name(user_name: str | None, disposition: str | None, urls: list[str], hints: tuple[str, ...] = ()) -> str:
    """User-given name (extension added from the server's name when missing) > Content-Disposition >
    a source's own file name (`hints`, e.g. Civitai's API) > the URLs (original link first, then the
    redirect target), preferring names that have an extension."""
    candidates = [parse_content_disposition(disposition), *hints, *(name_from_url(u) for u in urls)]
    names = [sanitize(c) for c in candidates if c]
    server_name = next((n for n in names if "." in n), names[0] if names else None)
    if user_name:
        name = sanitize(user_name)
        if "." not in name and server_name and "." in server_name:
            name += "." + server_name.rsplit(".", 1)[1]
        return name
    return server_name or "download"


def free_name(folder: Path, name: str) -> Path:
    """`name`, or `name (1).ext`, `name (2).ext` ... — the first one that does not exist yet."""
    path = folder / name
    if not path.exists():
        return path
    stem, dot, ext = name.rpartition(".")
    if not dot:
        stem, ext = name, ""
    for i in range(1, 10000):
        candidate = folder / (f"{stem} ({i})" + (f".{ext}" if ext else ""))
        if not candidate.exists():
            return candidate
    raise FileExistsError(f"too many files named like {name} in {folder}")
