"""Caption a dataset folder: pick the images the mode asks for, caption them in batches, merge
with the trigger word and existing captions, write `.txt` and/or `metadata.csv` atomically.

Reports through events ("status", "progress" with step/total_steps/it_per_s/eta_s, "log",
"done"); a stop request ends it between batches (prose captioners: between tokens, dropping the
unfinished batch) with everything done before saved.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from PIL import Image

from lora_trainer.caption.base import Captioner, CaptionStopped
from lora_trainer.data.tools.store import CaptionStore
from lora_trainer.data.tools.tags import dedupe, join_tags, norm_tag, put_first, split_tags
from lora_trainer.errors import DatasetError, UserError
from lora_trainer.events import Event, EventSink, StopFlag, null_sink

MODES = ("append", "overwrite", "skip-existing")


@dataclass
class CaptionResult:
    total: int = 0          # images in the folder
    captioned: int = 0      # images that went through the model
    written: int = 0        # captions that changed on disk
    skipped: int = 0        # kept as they were (skip-existing)
    failed: list[str] = field(default_factory=list)  # unreadable images
    stopped: bool = False
    output: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def compose(existing: str | None, new: str, mode: str, trigger: str = "", prose: bool = False) -> str:
    """The caption to store: new (overwrite/empty) or existing + new tags not already there
    (append), with the trigger word(s) first, each tag once. `prose`: `new` is sentences, kept
    whole (commas inside a sentence are not tag separators)."""
    if prose:
        return compose_prose(existing, new, mode, trigger)
    tags = split_tags(new)
    if mode == "append" and existing:
        have = split_tags(existing)
        keys = {norm_tag(t) for t in have}
        tags = have + [t for t in tags if norm_tag(t) not in keys]
    return join_tags(put_first(tags, split_tags(trigger)) if trigger.strip() else dedupe(tags))


def compose_prose(existing: str | None, new: str, mode: str, trigger: str = "") -> str:
    """Prose caption: append adds the new text after the old one unless it is already there; the
    trigger word(s) lead, as `ohwx, A woman in a red coat ...`, once."""
    text = " ".join(new.split())
    if mode == "append" and existing and existing.strip():
        base = " ".join(existing.split())
        if norm_tag(text) in norm_tag(base):
            text = base
        elif text:
            text = base + (" " if base.endswith((".", "!", "?")) else ", ") + text
    first = split_tags(trigger)
    if not first or not text:
        return text
    lead = [norm_tag(t) for t in split_tags(text)[:len(first)]]
    if lead == [norm_tag(t) for t in first]:
        return text
    return join_tags([*first, text])


def caption_dataset(root: str | os.PathLike, captioner: Captioner, *, mode: str = "skip-existing",
                    fmt: str = "txt", trigger: str = "", csv_path: str | os.PathLike | None = None,
                    caption_ext: str = ".txt", emit: EventSink = null_sink, stop: StopFlag | None = None
                    ) -> CaptionResult:
    """Caption every image under `root` that the mode selects; see the module docstring."""
    if mode not in MODES:
        raise UserError(f"caption mode '{mode}' is unknown; use one of {', '.join(MODES)}")
    store = CaptionStore(root, fmt=fmt, csv_path=csv_path, caption_ext=caption_ext)
    images = store.images()
    if not images:
        raise DatasetError(f"no images (png/jpg/jpeg/webp/bmp) found in '{store.root}'")
    result = CaptionResult(total=len(images), output=str(store.csv_path if store.uses_csv else store.root))
    existing = {image: store.get(image) for image in images}
    todo = [i for i in images if not (mode == "skip-existing" and existing[i])]
    result.skipped = len(images) - len(todo)
    if store.fmt == "both":  # a caption kept from one place is copied to the other, so both are complete
        for image in images:
            if existing[image] and mode == "skip-existing" and store.set(image, existing[image], only_missing=True):
                result.written += 1
        store.flush()
    emit(Event("status", {"message": f"captioning {len(todo)} of {len(images)} images with {captioner.name}"}))
    if todo:
        emit(Event("status", {"message": f"loading {captioner.name} model"}))
        captioner.load()
    started = time.monotonic()
    done = 0
    try:
        for start in range(0, len(todo), max(1, captioner.batch_size)):
            if stop is not None and stop.requested:
                result.stopped = True
                break
            batch = todo[start:start + captioner.batch_size]
            opened = _open_images(batch, store.root, result, emit)
            if opened:
                try:
                    captions = captioner.caption([im for _, im in opened], stop)
                except CaptionStopped:  # ended mid-generation: nothing of this batch is written
                    result.stopped = True
                    break
                for (path, _), text in zip(opened, captions, strict=True):
                    caption = compose(existing[path], text, mode, trigger, captioner.prose)
                    if not caption:
                        emit(Event("log", {"level": "warning", "message": f"{path.name}: the model gave an empty caption"}))
                        continue
                    if store.set(path, caption):
                        result.written += 1
                    result.captioned += 1
                store.flush()  # a crash later loses at most the next batch
            done += len(batch)
            elapsed = time.monotonic() - started
            rate = done / elapsed if elapsed > 0 else 0.0
            emit(Event("progress", {"step": done, "total_steps": len(todo), "it_per_s": rate,
                                    "eta_s": (len(todo) - done) / rate if rate else None,
                                    "file": batch[-1].relative_to(store.root).as_posix()}))
    finally:
        store.flush()
        captioner.close()
    emit(Event("stopped" if result.stopped else "done", {"message": _summary(result), **result.to_dict()}))
    return result


def _open_images(batch: list[Path], root: Path, result: CaptionResult, emit: EventSink
                 ) -> list[tuple[Path, Image.Image]]:
    opened = []
    for path in batch:
        try:
            with Image.open(path) as image:
                image.load()
                opened.append((path, image.copy()))
        except Exception as exc:  # noqa: BLE001 - one bad file must not end the run
            rel = path.relative_to(root).as_posix()
            result.failed.append(rel)
            emit(Event("log", {"level": "warning", "message": f"{rel}: cannot be read ({exc}); left uncaptioned"}))
    return opened


def _summary(result: CaptionResult) -> str:
    text = (f"{result.captioned} captioned, {result.written} written, {result.skipped} kept (already captioned)"
            f", {len(result.failed)} unreadable")
    return text + (" — stopped early" if result.stopped else "")
