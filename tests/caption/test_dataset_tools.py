"""Dataset tools: image checks with planted problems, tag frequency, bulk edits + undo, atomic writes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from PIL import Image

from lora_trainer.data.tools import (
    CaptionStore,
    add_trigger,
    atomic_write_text,
    check_images,
    perceptual_hash,
    remove_tag,
    replace_tag,
    tag_frequency,
    undo_last,
)
from lora_trainer.data.tools.bulk import can_undo, journal_path
from lora_trainer.data.tools.checks import hamming_distances
from lora_trainer.errors import DatasetError, UserError

from .conftest import noise


def test_report_finds_planted_corrupt_tiny_odd_and_duplicate_images(tmp_path):
    (tmp_path / "5_a").mkdir()
    (tmp_path / "5_b").mkdir()
    for i in range(4):
        noise(10 + i).save(tmp_path / "5_a" / f"ok{i}.png")
    noise(10).resize((80, 80)).save(tmp_path / "5_b" / "copy_of_ok0.jpg", quality=85)  # re-encoded duplicate
    noise(20, (16, 16)).save(tmp_path / "5_b" / "tiny.png")
    noise(21, (400, 64)).save(tmp_path / "5_b" / "banner.png")
    good = (tmp_path / "5_a" / "ok1.png").read_bytes()
    (tmp_path / "5_b" / "truncated.png").write_bytes(good[: len(good) // 2])
    (tmp_path / "5_b" / "garbage.jpg").write_bytes(os.urandom(500))
    (tmp_path / "5_b" / "notes.txt").write_text("not an image")

    report = check_images(tmp_path, min_side=64, max_aspect=4.0)
    assert report.images == 9
    assert sorted(report.by_kind("corrupt")) == ["5_b/garbage.jpg", "5_b/truncated.png"]
    assert report.by_kind("too_small") == ["5_b/tiny.png"]
    assert report.by_kind("extreme_aspect") == ["5_b/banner.png"]
    assert report.duplicate_groups == [["5_a/ok0.png", "5_b/copy_of_ok0.jpg"]]
    assert report.by_kind("duplicate") == ["5_b/copy_of_ok0.jpg"]
    assert "2 corrupt" in report.summary() and "| 5_b/tiny.png | too small |" in report.to_markdown()
    assert check_images(tmp_path / "5_a", min_side=64).ok


def test_perceptual_hash_is_stable_under_resizing_and_tells_images_apart():
    import numpy as np

    base = perceptual_hash(noise(1, (128, 128)))
    same = perceptual_hash(noise(1, (128, 128)).resize((57, 57), Image.Resampling.BILINEAR))
    others = np.array([perceptual_hash(noise(s)) for s in range(2, 12)], dtype=np.uint64)
    assert hamming_distances(base, np.array([same], dtype=np.uint64))[0] <= 4
    assert hamming_distances(base, others).min() > 10


def write(root: Path, name: str, caption: str | None) -> Path:
    image = root / name
    image.parent.mkdir(parents=True, exist_ok=True)
    noise(len(name)).save(image)
    if caption is not None:
        image.with_suffix(".txt").write_text(caption, encoding="utf-8")
    return image


def test_tag_frequency_counts_each_tag_once_per_caption(tmp_path):
    write(tmp_path, "a.png", "1girl, smile, Smile, long_hair")
    write(tmp_path, "b.png", "1girl, long hair")
    write(tmp_path, "c.png", None)
    store = CaptionStore(tmp_path)
    assert tag_frequency(store.get(i) for i in store.images()) == [("1girl", 2), ("long_hair", 2), ("smile", 1)]


def test_bulk_edits_and_undo(tmp_path):
    write(tmp_path, "1_x/a.png", "smile, 1girl, ohwx")
    write(tmp_path, "1_x/b.png", "1girl, red_eyes")
    write(tmp_path, "1_x/c.png", None)
    originals = {p: p.read_bytes() for p in tmp_path.rglob("*.txt")}
    store = CaptionStore(tmp_path)
    assert can_undo(tmp_path) is None

    result = add_trigger(store, "ohwx")
    assert result.changed == 2
    assert (tmp_path / "1_x/a.txt").read_text() == "ohwx, smile, 1girl"
    assert (tmp_path / "1_x/b.txt").read_text() == "ohwx, 1girl, red_eyes"
    assert not (tmp_path / "1_x/c.txt").exists()
    assert can_undo(tmp_path) == "add trigger 'ohwx'"
    undo_last(tmp_path)
    assert {p: p.read_bytes() for p in tmp_path.rglob("*.txt")} == originals
    with pytest.raises(UserError, match="nothing to undo"):
        undo_last(tmp_path)

    assert replace_tag(store, "red eyes", "blue eyes, looking at viewer").changed == 1
    assert (tmp_path / "1_x/b.txt").read_text() == "1girl, blue eyes, looking at viewer"
    assert remove_tag(store, "1GIRL").changed == 2  # only the last bulk edit can be undone
    assert (tmp_path / "1_x/a.txt").read_text() == "smile, ohwx"
    undo_last(tmp_path)
    assert (tmp_path / "1_x/b.txt").read_text() == "1girl, blue eyes, looking at viewer"
    with pytest.raises(UserError):
        replace_tag(store, " ", "x")


def test_undo_leaves_captions_edited_by_hand_since(tmp_path):
    write(tmp_path, "a.png", "cat")
    write(tmp_path, "b.png", "cat")
    store = CaptionStore(tmp_path)
    add_trigger(store, "ohwx")
    store.set(tmp_path / "b.png", "ohwx, cat, fixed by hand")
    result = undo_last(tmp_path)
    assert result.changed == 1 and result.skipped == ["b.txt"]
    assert (tmp_path / "a.txt").read_text() == "cat"
    assert (tmp_path / "b.txt").read_text() == "ohwx, cat, fixed by hand"


def test_undo_after_a_crash_in_the_middle_of_a_bulk_edit(tmp_path, monkeypatch):
    for name in "abcd":
        write(tmp_path, f"{name}.png", f"tag_{name}, common")
    originals = {p.name: p.read_text() for p in tmp_path.glob("*.txt")}
    store = CaptionStore(tmp_path)
    real_set, calls = CaptionStore.set, []

    def dying_set(self, image, text, only_missing=False):
        calls.append(image)
        if len(calls) == 3:
            raise SystemExit("killed")  # the process dies after two files were rewritten
        return real_set(self, image, text, only_missing)

    monkeypatch.setattr(CaptionStore, "set", dying_set)
    with pytest.raises(SystemExit):
        remove_tag(store, "common")
    monkeypatch.undo()
    assert sum("common" not in p.read_text() for p in tmp_path.glob("*.txt")) == 2
    assert journal_path(tmp_path).exists()
    undo_last(tmp_path)
    assert {p.name: p.read_text() for p in tmp_path.glob("*.txt")} == originals


def test_bulk_edits_on_metadata_csv(tmp_path):
    write(tmp_path, "a.png", None)
    write(tmp_path, "sub/b.png", None)
    csv_text = 'filename,prompt\na.png,"1girl, smile"\nsub/b.png,"say ""hi"", 1girl"\n'
    (tmp_path / "metadata.csv").write_text(csv_text)
    store = CaptionStore(tmp_path)
    assert store.fmt == "csv" and store.get(tmp_path / "sub/b.png") == 'say "hi", 1girl'
    add_trigger(store, "ohwx")
    assert (tmp_path / "metadata.csv").read_text() == (
        'filename,prompt\na.png,"ohwx, 1girl, smile"\nsub/b.png,"ohwx, say ""hi"", 1girl"\n')
    undo_last(tmp_path)
    assert (tmp_path / "metadata.csv").read_text() == csv_text


def test_atomic_write_keeps_the_old_file_when_the_write_fails(tmp_path, monkeypatch):
    target = tmp_path / "a.txt"
    target.write_text("old caption")

    def broken_fsync(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_text(target, "new caption " * 1000)
    monkeypatch.undo()
    assert target.read_text() == "old caption" and os.listdir(tmp_path) == ["a.txt"]
    atomic_write_text(target, "new, ünïcode")
    assert target.read_text(encoding="utf-8") == "new, ünïcode" and os.listdir(tmp_path) == ["a.txt"]


def test_caption_store_errors_and_lookups(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        CaptionStore(tmp_path / "nope")
    image = write(tmp_path, "x.jpg", "  spaced \n caption ")
    store = CaptionStore(tmp_path)
    assert store.fmt == "txt" and store.get(image) == "spaced, caption"  # lines join as training reads them
    (tmp_path / "metadata.csv").write_text("filename,prompt\nx.jpg\n")
    with pytest.raises(DatasetError, match="line 2"):
        CaptionStore(tmp_path, fmt="csv").get(image)
