"""The DataLoader path: the run's batch sampler, real worker processes, resume positions, the cache pre-pass keys."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lora_trainer.config import load_config
from lora_trainer.data import (
    BatchDataset,
    LatentCache,
    RunBatchSampler,
    TrainDataset,
    make_loader,
    scan_dataset,
)
from tests.data.conftest import make_image


def _dataset(root: Path, **extra) -> TrainDataset:
    cfg = load_config({"train_data_dir": str(root), "resolution": 128, "min_bucket_reso": 64,
                       "max_bucket_reso": 256, "batch_size": 2, "caption_dropout_rate": 0.2, "flip_aug": True,
                       "shuffle_caption": True, **extra}, check_paths=False)
    return TrainDataset(cfg, scan_dataset(cfg))


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    for i, size in enumerate([(128, 128), (192, 96), (200, 100), (96, 192), (64, 64)]):
        make_image(tmp_path / "2_thing" / f"img{i}.png", size, (30 * i, 90, 160))
        (tmp_path / "2_thing" / f"img{i}.txt").write_text(f"thing, tag{i}, red", encoding="utf-8")
    return tmp_path


def _sampler(ds: TrainDataset, start_epoch: int = 0, start_pos: int = 0, rank: int = 0, world: int = 1):
    return RunBatchSampler(lambda e: ds.batches_for_epoch(e, 3, rank, world), start_epoch=start_epoch,
                           start_pos=start_pos, epochs=3, per_epoch=ds.num_batches(world))


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_yields_what_load_batch_loads_in_loop_order(folder: Path, workers: int) -> None:
    ds = _dataset(folder)
    expected = [(e, ids) for e in range(3) for ids in ds.batches_for_epoch(e, 3)[:ds.num_batches()]]
    got = list(make_loader(BatchDataset(ds), _sampler(ds), num_workers=workers, pin_memory=False))
    assert [(b["epoch"], list(b["ids"])) for b in got] == expected
    for batch, (epoch, ids) in zip(got, expected, strict=True):
        direct = ds.load_batch(ids, epoch)
        assert batch["captions"] == direct["captions"] and batch["keys"] == direct["keys"]
        assert torch.equal(batch["pixels"], direct["pixels"]) and batch["latents"] is None


def test_resume_position_starts_mid_epoch_and_ranks_are_disjoint(folder: Path) -> None:
    ds = _dataset(folder)
    full = list(_sampler(ds))
    per_epoch = ds.num_batches()
    tail = list(_sampler(ds, start_epoch=1, start_pos=2))
    assert tail == full[per_epoch + 2:] and len(_sampler(ds, 1, 2)) == len(tail)
    ranks = [list(_sampler(ds, rank=r, world=2)) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1])
    for e in range(3):
        ids = [set(i) for r in ranks for ep, i in r if ep == e]
        assert all(a.isdisjoint(b) for n, a in enumerate(ids) for b in ids[n + 1:])


def test_a_loader_does_not_touch_the_global_rng(folder: Path) -> None:
    ds = _dataset(folder)
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    list(make_loader(BatchDataset(ds), _sampler(ds), num_workers=2, pin_memory=False))
    assert torch.equal(torch.rand(3), expected)


def test_cached_latents_skip_the_pixels_and_variants_cover_every_key(folder: Path) -> None:
    ds = _dataset(folder)
    variants = ds.latent_variants()
    assert len(variants) == 2 * len(ds.items)  # flip_aug: each image and its mirror
    cache = LatentCache(None, "m")
    for i, key, fit, flip in variants:
        cache.put(key, ds.pixels_of(i, fit, flip)[0, :, ::8, ::8])
    needed = {k for e in range(3) for ids in ds.batches_for_epoch(e, 3) for k in ds.load_batch(ids, e, False)["keys"]}
    assert needed <= {v[1] for v in variants}
    batch = next(iter(make_loader(BatchDataset(ds, cache), _sampler(ds), num_workers=0, pin_memory=False)))
    assert batch["pixels"] is None and batch["latents"].shape[0] == len(batch["ids"])
