"""Dataset discovery: kohya `N_name/` folders, plain folders, caption files and metadata.csv.

Everything here runs before a model loads, so a bad dataset fails in seconds with the file named.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from lora_trainer.data.captions import CAPTION_FALLBACKS, add_trigger, read_caption_file, split_tags
from lora_trainer.data.images import ImageProblem, is_image_file, is_unsupported_image, probe_image
from lora_trainer.data.masks import check_mask_size, find_mask, is_mask_file
from lora_trainer.data.metadata_csv import read_metadata_csv
from lora_trainer.errors import ConfigError, DatasetError

if TYPE_CHECKING:
    from lora_trainer.config import TrainConfig
    from lora_trainer.events import EventSink

_REPEATS_DIR = re.compile(r"^(\d+)_(.*)$")


@dataclass
class ImageItem:
    """One training image. `caption` already has the trigger word; `caption_source` says where the
    text came from: "csv" | "file" | "class" (folder class tokens) | "none"."""

    path: str
    caption: str
    repeats: int
    subset: str
    width: int
    height: int
    caption_source: str = "none"
    mask_path: str | None = None  # `<stem>-masklabel.png` beside the image (masked loss)
    is_reg: bool = False  # a regularisation image (reg_data_dir)


@dataclass
class DatasetIndex:
    """What `scan_dataset` found. `skipped` lists (path, reason) for files not used."""

    root: str
    items: list[ImageItem] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    tag_frequency: dict[str, dict[str, int]] = field(default_factory=dict)
    dataset_dirs: dict[str, dict[str, int]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    validation: list[ImageItem] = field(default_factory=list)  # held-out images (data/extra_sets.py)

    @property
    def num_images(self) -> int:
        return len(self.items)

    @property
    def num_repeats_total(self) -> int:
        """Samples per epoch: every image times its repeats (regularisation images included)."""
        return sum(item.repeats for item in self.items)

    @property
    def num_train_samples(self) -> int:
        """Samples per epoch of the training images alone (kohya's ss_num_train_images)."""
        return sum(item.repeats for item in self.items if not item.is_reg)

    def summary(self) -> dict[str, object]:
        """JSON-safe overview for the UI / API (no per-image list)."""
        return {"root": self.root, "num_images": self.num_images, "num_repeats_total": self.num_repeats_total,
                "dataset_dirs": self.dataset_dirs, "skipped": [list(s) for s in self.skipped], "notes": self.notes}

    def warning_message(self) -> str | None:
        """The one warning that lists every skipped file (None when nothing was skipped)."""
        if not self.skipped:
            return None
        lines = [f"skipped {len(self.skipped)} file(s) in the dataset:"]
        lines += [f"  {path}: {reason}" for path, reason in self.skipped]
        return "\n".join(lines)


@dataclass
class _Subset:
    name: str
    folder: str
    repeats: int
    class_tokens: str | None


def _subset_for(folder: str, name: str, default_repeats: int) -> _Subset | None:
    match = _REPEATS_DIR.match(name)
    if not match:
        return _Subset(name, folder, default_repeats, None)
    repeats = int(match.group(1))
    if repeats < 1:
        return None
    tokens = match.group(2).strip() or None  # verbatim, as kohya uses it
    return _Subset(name, folder, repeats, tokens)


def _find_caption(image_path: str, extension: str) -> str | None:
    stem = os.path.splitext(image_path)[0]
    for ext in (extension, *CAPTION_FALLBACKS):
        candidate = stem + ext
        if os.path.isfile(candidate):
            return candidate
    return None


def _list_files(folder: str) -> list[str]:
    try:
        return sorted(e.name for e in os.scandir(folder) if e.is_file())
    except OSError as exc:
        raise DatasetError(f"{folder}: cannot list folder: {exc.strerror}") from None


def _subsets(root: str, default_repeats: int, notes: list[str]) -> list[_Subset]:
    subsets: list[_Subset] = []
    root_subset = _subset_for(root, os.path.basename(os.path.normpath(root)), default_repeats)
    if root_subset is not None and any(is_image_file(n) or is_unsupported_image(n) for n in _list_files(root)):
        subsets.append(root_subset)
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        if not entry.is_dir() or entry.name.startswith("."):
            continue
        subset = _subset_for(entry.path, entry.name, default_repeats)
        if subset is None:
            notes.append(f"folder {entry.name!r} has 0 repeats; ignored")
            continue
        subsets.append(subset)
    return subsets


def _csv_captions(cfg: TrainConfig, root: str) -> tuple[str | None, dict[str, tuple[str, int]]]:
    csv_path = cfg.metadata_path
    if not csv_path:
        candidate = os.path.join(root, "metadata.csv")
        csv_path = candidate if os.path.isfile(candidate) else None
    if not csv_path:
        return None, {}
    captions: dict[str, tuple[str, int]] = {}
    base = os.path.dirname(os.path.abspath(csv_path))
    for filename, prompt, line in read_metadata_csv(csv_path):
        for folder in (base, root):
            path = os.path.normpath(os.path.join(folder, filename))
            if os.path.isfile(path):
                break
        else:
            raise DatasetError(f"{csv_path} line {line}: image not found: {filename} (looked in {base})")
        captions[path] = (prompt, line)
    return csv_path, captions


def scan_dataset(cfg: TrainConfig, emit: EventSink | None = None) -> DatasetIndex:
    """Find every training image with its caption, repeats and size; raise DatasetError when
    nothing usable is there. Skipped files are returned in `.skipped` and reported as ONE warning
    event when `emit` is given."""
    root = cfg.train_data_dir
    if not root:
        raise ConfigError("train_data_dir", "is required: the folder with the training images")
    if not os.path.isdir(root):
        raise ConfigError("train_data_dir", f"folder not found: {root}")
    root = os.path.abspath(root)
    index = DatasetIndex(root=root)
    csv_path, csv_captions = _csv_captions(cfg, root)

    found: list[tuple[str, _Subset]] = []
    for subset in _subsets(root, cfg.num_repeats, index.notes):
        if subset.folder != root:
            nested = sorted(e.name for e in os.scandir(subset.folder) if e.is_dir() and not e.name.startswith("."))
            if nested:
                index.notes.append(f"folders inside {subset.name!r} are not scanned: {', '.join(nested[:5])}")
        for name in _list_files(subset.folder):
            path = os.path.join(subset.folder, name)
            if is_mask_file(name):
                continue
            if is_image_file(name):
                found.append((path, subset))
            elif is_unsupported_image(name):
                index.skipped.append((path, f"unsupported format {os.path.splitext(name)[1].lower()} "
                                      "(use png, jpg, webp or bmp)"))
    seen = {os.path.normpath(p) for p, _ in found} | {os.path.normpath(p) for p, _ in index.skipped}
    for path in csv_captions:  # metadata.csv rows for images outside the scanned folders
        if path not in seen:
            folder = os.path.dirname(path)
            subset = _subset_for(folder, os.path.basename(folder), cfg.num_repeats) or \
                _Subset(os.path.basename(folder), folder, cfg.num_repeats, None)
            if is_image_file(path):
                found.append((path, subset))
            else:
                index.skipped.append((path, "listed in metadata.csv but not a supported image file"))

    for (path, subset), probed in zip(found, _probe_all([p for p, _ in found]), strict=True):
        if isinstance(probed, str):
            index.skipped.append((path, probed))
            continue
        width, height = probed
        caption, source = _caption_for(os.path.normpath(path), subset, cfg.caption_extension, csv_captions)
        caption = add_trigger(caption, cfg.trigger_word)
        mask = find_mask(path) if cfg.masked_loss else None
        if mask:
            check_mask_size(mask, path, (width, height))
        index.items.append(ImageItem(path, caption, subset.repeats, subset.name, width, height, source, mask))

    if not index.items:
        where = f"{root}" + (f" or {csv_path}" if csv_path else "")
        extra = f"; {len(index.skipped)} file(s) skipped: " + "; ".join(
            f"{os.path.basename(p)} ({r})" for p, r in index.skipped[:5]) if index.skipped else ""
        raise DatasetError(f"no usable training images in {where}: put .png/.jpg/.jpeg/.webp/.bmp files there "
                           f"or in N_name subfolders (N = repeats){extra}")
    _summarise(index)
    message = index.warning_message()
    if emit is not None and message:
        from lora_trainer.events import Event

        emit(Event("log", {"level": "warning", "message": message, "skipped": [list(s) for s in index.skipped]}))
    return index


def _probe_one(path: str) -> tuple[int, int] | str:
    try:
        return probe_image(path)
    except ImageProblem as exc:
        return str(exc)


def _probe_all(paths: list[str]) -> list[tuple[int, int] | str]:
    """Sizes (or the reason a file is unusable), probed on a few threads: PIL releases the GIL
    while decoding, so a large dataset is checked several times faster."""
    workers = min(8, os.cpu_count() or 1, max(1, len(paths) // 16))
    if workers <= 1:
        return [_probe_one(p) for p in paths]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(_probe_one, paths))


def _caption_for(path: str, subset: _Subset, extension: str,
                 csv_captions: dict[str, tuple[str, int]]) -> tuple[str, str]:
    if path in csv_captions:
        return csv_captions[path][0], "csv"
    caption_file = _find_caption(path, extension)
    if caption_file:
        try:
            return read_caption_file(caption_file), "file"
        except UnicodeDecodeError:
            raise DatasetError(f"{caption_file}: caption is not UTF-8 text; re-save it as UTF-8") from None
        except OSError as exc:
            raise DatasetError(f"{caption_file}: cannot read caption: {exc.strerror}") from None
    if subset.class_tokens:
        return subset.class_tokens, "class"
    return "", "none"


def summarise_items(index: DatasetIndex) -> None:
    """Tag frequency (per image, not per repeat: kohya's ss_tag_frequency) and dataset_dirs of the
    training images (regularisation images are not counted, as in kohya's metadata)."""
    tags: dict[str, Counter[str]] = {}
    dirs: dict[str, dict[str, int]] = {}
    for item in index.items:
        if item.is_reg:
            continue
        tags.setdefault(item.subset, Counter()).update(set(split_tags(item.caption)))
        entry = dirs.setdefault(item.subset, {"n_repeats": item.repeats, "img_count": 0})
        entry["img_count"] += 1
    index.tag_frequency = {s: dict(c.most_common()) for s, c in tags.items()}
    index.dataset_dirs = dirs


def _summarise(index: DatasetIndex) -> None:
    summarise_items(index)
    uncaptioned = sum(1 for item in index.items if not item.caption)
    if uncaptioned:
        index.notes.append(f"{uncaptioned} image(s) have no caption (no caption file, csv row, folder class "
                           "tokens or trigger_word)")
