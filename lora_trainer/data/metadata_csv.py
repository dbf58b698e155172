"""`metadata.csv` captions: `filename,prompt` rows, optional header, quoted fields, UTF-8 (BOM ok)."""

from __future__ import annotations

import csv
import io

from lora_trainer.errors import DatasetError

HEADER_NAMES = {"filename", "file_name", "file", "image", "image_path", "path", "name"}


def read_metadata_csv(path: str) -> list[tuple[str, str, int]]:
    """(filename, prompt, line number) per row. A prompt written with unquoted commas spreads over
    several columns; they are joined back with "," so `a.png,1girl, solo` still means what it says.
    Bad rows raise DatasetError naming the file and line."""
    try:
        with open(path, "rb") as fh:
            text = fh.read().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: not UTF-8 text (byte {exc.start}); re-save it as UTF-8") from None
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read metadata file: {exc.strerror}") from None
    rows: list[tuple[str, str, int]] = []
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    first = True
    try:
        for row in reader:
            line = reader.line_num
            if not row or all(not c.strip() for c in row):
                continue
            if first:
                first = False
                if row[0].strip().lower() in HEADER_NAMES:
                    continue
            if len(row) < 2:
                raise DatasetError(f"{path} line {line}: expected 'filename,prompt', got {','.join(row)!r}")
            filename = row[0].strip()
            if not filename:
                raise DatasetError(f"{path} line {line}: empty filename")
            rows.append((filename, ",".join(row[1:]).strip(), line))
    except csv.Error as exc:
        raise DatasetError(f"{path} line {reader.line_num}: {exc}") from None
    return rows
