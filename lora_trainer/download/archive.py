"""Zip archives: refuse path tricks (zip-slip, symlinks, absolute/drive paths) and bombs, extract models only."""

from __future__ import annotations

import os
import stat
import zipfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from lora_trainer.download.errors import SpaceError, UnsafeError, VerificationError
from lora_trainer.download.naming import sanitize
from lora_trainer.download.verify import PICKLE_EXTS

MODEL_EXTS = (".safetensors", *PICKLE_EXTS)
MAX_RATIO = 200  # uncompressed/compressed beyond this (on a big member) smells like a zip bomb


def check_member(info: zipfile.ZipInfo) -> None:
    """Raise UnsafeError for a member whose path could escape the target folder."""
    raw = info.filename
    mode = info.external_attr >> 16
    parts = PurePosixPath(raw.replace("\\", "/")).parts
    if (raw.startswith(("/", "\\")) or (len(raw) > 1 and raw[1] == ":") or ".." in parts
            or stat.S_ISLNK(mode)):
        raise UnsafeError(f"refused the archive: member '{raw}' tries to write outside the target folder "
                          "(zip-slip) or is a link; nothing was extracted")


def safe_members(zf: zipfile.ZipFile, max_total: int) -> Iterator[tuple[zipfile.ZipInfo, str]]:
    """(member, safe flat name) for each model file; checks every member before anything is extracted."""
    infos = zf.infolist()
    total = 0
    for info in infos:
        check_member(info)
        total += info.file_size
        if info.file_size > 10 << 20 and info.file_size > MAX_RATIO * max(1, info.compress_size):
            raise UnsafeError(f"refused the archive: member '{info.filename}' expands {info.file_size} bytes "
                              "from almost nothing (zip bomb)")
    if total > max_total:
        raise SpaceError(f"the archive would unpack to {total} bytes, above the cap of {max_total}")
    for info in infos:
        if info.is_dir():
            continue
        name = sanitize(PurePosixPath(info.filename.replace("\\", "/")).name)
        lower = name.lower()
        if lower.endswith(MODEL_EXTS):  # pickles among them are told apart by their bytes after extraction
            yield info, name


def extract_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, dest: Path) -> None:
    """Stream one member to dest, counting real bytes (declared sizes can lie)."""
    limit = info.file_size
    written = 0
    with zf.open(info) as src, open(dest, "wb") as out:
        while chunk := src.read(1 << 20):
            written += len(chunk)
            if written > limit:
                raise UnsafeError(f"refused the archive: member '{info.filename}' is larger than it declares")
            out.write(chunk)


def open_zip(path: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except zipfile.BadZipFile as exc:
        raise VerificationError(f"{path.name}: a broken zip archive ({exc}); download it again") from exc


def tmp_name(folder: Path, name: str) -> Path:
    return folder / f".{name}.{os.getpid()}.unzip"
