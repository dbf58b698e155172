from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from lora_trainer.config import load_config
from lora_trainer.data import TrainDataset, scan_dataset
from lora_trainer.data.captions import process_caption
from lora_trainer.errors import DatasetError
from tests.data.conftest import make_image

CAPTION = "trig, red hair, smile, outdoors, blue sky, tree"


def _dataset(root: Path, **extra) -> TrainDataset:
    cfg = load_config({"train_data_dir": str(root), "resolution": 128, "min_bucket_reso": 64,
                       "max_bucket_reso": 256, **extra}, check_paths=False)
    return TrainDataset(cfg, scan_dataset(cfg))


@pytest.fixture
def mixed(tmp_path: Path) -> Path:
    """7 images in 3 aspect ratios, two subsets with repeats 3 and 1."""
    sizes = [(128, 128), (130, 126), (192, 96), (200, 100), (96, 192), (64, 64), (256, 128)]
    for i, size in enumerate(sizes):
        folder = "3_thing" if i < 4 else "1_other"
        make_image(tmp_path / folder / f"img{i}.png", size)
        (tmp_path / folder / f"img{i}.txt").write_text(CAPTION, encoding="utf-8")
    return tmp_path


def test_shuffle_keep_tokens_dropout_deterministic() -> None:
    outs = [process_caption(CAPTION, random.Random(7), shuffle=True, keep_tokens=1) for _ in range(3)]
    assert outs[0] == outs[1] == outs[2]
    variants = {process_caption(CAPTION, random.Random(s), shuffle=True, keep_tokens=1) for s in range(30)}
    assert len(variants) > 5
    for v in variants:
        tags = v.split(", ")
        assert tags[0] == "trig" and sorted(tags) == sorted(CAPTION.split(", "))
    kept2 = {process_caption(CAPTION, random.Random(s), shuffle=True, keep_tokens=2) for s in range(30)}
    assert all(v.startswith("trig, red hair, ") for v in kept2)
    assert process_caption(CAPTION, random.Random(0)) == CAPTION
    dropped = [process_caption(CAPTION, random.Random(s), dropout_rate=0.3) for s in range(400)]
    share = dropped.count("") / len(dropped)
    assert 0.22 < share < 0.38
    # the same seed drops the same samples whether or not shuffling is on
    again = [process_caption(CAPTION, random.Random(s), dropout_rate=0.3, shuffle=True) for s in range(400)]
    assert [d == "" for d in dropped] == [a == "" for a in again]


def test_epoch_batches_deterministic_bucket_pure_and_repeats(mixed: Path) -> None:
    ds = _dataset(mixed, batch_size=2)
    assert len(ds.sample_ids()) == 4 * 3 + 3 * 1
    a = ds.batches_for_epoch(0, seed=1)
    assert a == ds.batches_for_epoch(0, seed=1)
    assert a != ds.batches_for_epoch(1, seed=1)
    assert a != ds.batches_for_epoch(0, seed=2)
    flat = [sid for batch in a for sid in batch]
    assert sorted(flat) == sorted(ds.sample_ids())  # every sample once, repeats honoured
    counts = {}
    for sid in flat:
        counts[ds.item_of(sid)] = counts.get(ds.item_of(sid), 0) + 1
    assert [counts[i] for i in range(len(ds.items))] == [item.repeats for item in ds.items]
    for batch in a:
        assert len({ds.bucket_of(sid) for sid in batch}) == 1
        assert 1 <= len(batch) <= 2
    assert len(a) == ds.num_batches()


def test_ranks_get_disjoint_equal_shards(mixed: Path) -> None:
    ds = _dataset(mixed, batch_size=1)
    for world in (2, 3, 4):
        shards = [ds.batches_for_epoch(5, seed=3, rank=r, world_size=world) for r in range(world)]
        assert len({len(s) for s in shards}) == 1 and len(shards[0]) == ds.num_batches(world)
        ids = [sid for s in shards for b in s for sid in b]
        assert len(ids) == len(set(ids))
        assert shards == [ds.batches_for_epoch(5, seed=3, rank=r, world_size=world) for r in range(world)]
    with pytest.raises(DatasetError):
        _dataset(mixed, batch_size=64).batches_for_epoch(0, world_size=8)


def test_load_batch_pixels_captions_sizes_keys(mixed: Path) -> None:
    ds = _dataset(mixed, batch_size=3, shuffle_caption=True, keep_tokens=1, flip_aug=True)
    batch_ids = next(b for b in ds.batches_for_epoch(0) if len(b) == 3)
    out = ds.load_batch(batch_ids, epoch=0)
    w, h = out["bucket"]
    assert out["pixels"].shape == (3, 3, h, w) and out["pixels"].dtype == torch.float32
    assert out["pixels"].min() >= -1 and out["pixels"].max() <= 1
    assert len(out["captions"]) == len(out["sizes"]) == len(out["keys"]) == 3
    assert all(c.startswith("trig, ") for c in out["captions"])
    for sid, size in zip(batch_ids, out["sizes"], strict=True):
        item = ds.items[ds.item_of(sid)]
        assert size.original == (item.height, item.width) and size.target == (h, w)
    again = ds.load_batch(batch_ids, epoch=0)
    assert again["captions"] == out["captions"] and again["keys"] == out["keys"]
    assert torch.equal(again["pixels"], out["pixels"])
    assert ds.load_batch(batch_ids, epoch=0, with_pixels=False)["pixels"] is None


def test_flip_and_crop_in_pixels(tmp_path: Path) -> None:
    make_image(tmp_path / "a.png", (128, 128))  # black left quarter
    ds = _dataset(tmp_path, flip_aug=True, num_repeats=24)
    flips = []
    for sid in ds.sample_ids():
        out = ds.load_batch([sid], epoch=0)
        px = out["pixels"][0]
        left_dark = bool(px[:, :, :8].mean() < -0.9)
        right_dark = bool(px[:, :, -8:].mean() < -0.9)
        assert left_dark != right_dark
        flip = out["flips"][0]
        assert right_dark == flip and out["keys"][0].endswith("flip" if flip else "noflip")
        flips.append(flip)
    assert 3 < sum(flips) < 21


def test_mixed_bucket_batch_refused(mixed: Path) -> None:
    ds = _dataset(mixed)
    by_bucket: dict = {}
    for sid in ds.sample_ids():
        by_bucket.setdefault(ds.bucket_of(sid), sid)
    assert len(by_bucket) >= 2
    with pytest.raises(ValueError):
        ds.load_batch(list(by_bucket.values())[:2], epoch=0)
