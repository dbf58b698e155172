"""Where captions live: `<stem>.txt` beside each image and/or one `metadata.csv` (`filename,prompt`).

The layout follows kohya (DESIGN.md §5): a dataset root holding images directly or in `N_name/`
folders. `metadata.csv` names images by their path relative to the CSV's folder, `/`-separated.
Every write is atomic; CSV edits are buffered and written whole by `flush()`.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

from lora_trainer.data.captions import CAPTION_FALLBACKS, read_caption_file
from lora_trainer.data.images import is_image_file
from lora_trainer.data.metadata_csv import read_metadata_csv
from lora_trainer.data.tools.atomic import atomic_write_text
from lora_trainer.errors import DatasetError

CSV_NAME = "metadata.csv"
FORMATS = ("auto", "txt", "csv", "both")


def list_images(root: str | os.PathLike) -> list[Path]:
    """Images the training scan sees: in `root` and its direct non-hidden subfolders (`N_name/`),
    sorted by relative path."""
    root = Path(root)
    folders = [root, *sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))]
    found = [f for folder in folders for f in folder.iterdir()
             if f.is_file() and is_image_file(f.name) and not f.name.startswith(".")]
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def clean_caption(text: str) -> str:
    """One line, trimmed: captions are single-line in both .txt and CSV form."""
    return " ".join(text.split())


def read_metadata_rows(path: Path) -> dict[str, str]:
    """{filename: prompt} of a metadata.csv, parsed exactly as training reads it."""
    return {normalize_key(name): prompt for name, prompt, _line in read_metadata_csv(str(path))}


def metadata_csv_text(rows: dict[str, str]) -> str:
    """CSV text with a `filename,prompt` header; the csv module quotes commas, quotes, newlines."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["filename", "prompt"])
    for name, prompt in rows.items():
        writer.writerow([name, prompt])
    return buffer.getvalue()


def normalize_key(name: str) -> str:
    name = name.strip().replace("\\", "/")
    while name.startswith("./"):
        name = name[2:]
    return name


class CaptionStore:
    """Captions of one dataset folder, read and written in the chosen format.

    fmt: "txt" (`<stem><caption_ext>` files), "csv" (`metadata.csv`), "both", or "auto" (what the
    folder already uses: both when it has a CSV and .txt files, the CSV alone, else .txt).
    """

    def __init__(self, root: str | os.PathLike, fmt: str = "auto", csv_path: str | os.PathLike | None = None,
                 caption_ext: str = ".txt"):
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise DatasetError(f"dataset folder '{self.root}' does not exist or is not a folder")
        if fmt not in FORMATS:
            raise DatasetError(f"caption format '{fmt}' is unknown; use one of {', '.join(FORMATS)}")
        self.csv_path = Path(csv_path).expanduser() if csv_path else self.root / CSV_NAME
        self.caption_ext = caption_ext if caption_ext.startswith(".") else f".{caption_ext}"
        self._images: list[Path] | None = None
        self._rows: dict[str, str] | None = None
        self._dirty = False
        self.fmt = self._detect() if fmt == "auto" else fmt

    def _detect(self) -> str:
        has_txt = any(self.txt_path(p).exists() for p in self.images())
        if self.csv_path.exists():
            return "both" if has_txt else "csv"
        return "txt"

    @property
    def uses_txt(self) -> bool:
        return self.fmt in ("txt", "both")

    @property
    def uses_csv(self) -> bool:
        return self.fmt in ("csv", "both")

    def images(self, refresh: bool = False) -> list[Path]:
        if self._images is None or refresh:
            self._images = list_images(self.root)
        return self._images

    def txt_path(self, image: Path) -> Path:
        return image.with_suffix(self.caption_ext)

    def csv_key(self, image: Path) -> str:
        return Path(os.path.relpath(image, self.csv_path.parent)).as_posix()

    def rows(self) -> dict[str, str]:
        if self._rows is None:
            self._rows = read_metadata_rows(self.csv_path) if self.csv_path.exists() else {}
        return self._rows

    def get(self, image: Path) -> str | None:
        """The caption of `image`, or None when it has none (an empty file counts as none)."""
        if self.uses_txt:
            for ext in dict.fromkeys((self.caption_ext, *CAPTION_FALLBACKS)):
                path = image.with_suffix(ext)
                if path.is_file():
                    try:
                        text = clean_caption(read_caption_file(str(path)))
                    except UnicodeDecodeError:
                        raise DatasetError(f"{path}: caption is not UTF-8 text; re-save it as UTF-8") from None
                    if text:
                        return text
        if self.uses_csv:
            rows = self.rows()
            key = self.csv_key(image)
            text = rows.get(key)
            if text is None and image.name in rows:  # CSV that lists bare file names
                text = rows[image.name]
            if text and clean_caption(text):
                return clean_caption(text)
        return None

    def set(self, image: Path, text: str, only_missing: bool = False) -> bool:
        """Store a caption; True when something changed. CSV changes wait for `flush()`.
        `only_missing`: write only where the caption is absent (fills the CSV from .txt in "both")."""
        text = clean_caption(text)
        changed = False
        if self.uses_txt:
            path = self.txt_path(image)
            old = path.read_text(encoding="utf-8", errors="replace") if path.exists() else None
            if old != text and not (only_missing and old and clean_caption(old)):
                atomic_write_text(path, text)
                changed = True
        if self.uses_csv:
            rows = self.rows()
            key = image.name if (self.csv_key(image) not in rows and image.name in rows) else self.csv_key(image)
            if rows.get(key) != text and not (only_missing and clean_caption(rows.get(key) or "")):
                rows[key] = text
                self._dirty = changed = True
        return changed

    def flush(self) -> None:
        """Write the CSV (whole, atomically) if it changed."""
        if self._dirty and self._rows is not None:
            atomic_write_text(self.csv_path, metadata_csv_text(self._rows))
            self._dirty = False

    def files(self) -> list[Path]:
        """Caption files a bulk edit may change (for the undo journal)."""
        out = [self.txt_path(p) for p in self.images()] if self.uses_txt else []
        if self.uses_csv:
            out.append(self.csv_path)
        return out
