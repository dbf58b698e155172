from __future__ import annotations

import os
from pathlib import Path

import torch

from lora_trainer.config import load_config
from lora_trainer.data import LatentCache, TextEncoderCache, TrainDataset, scan_dataset
from tests.data.conftest import make_image


def test_disk_latent_cache_hit_across_instances(tmp_path: Path) -> None:
    data = tmp_path / "data"
    make_image(data / "a.png", (64, 64))
    make_image(data / "copy" / "b.png", (64, 64))  # same bytes as a.png in another folder
    cfg = load_config({"train_data_dir": str(data), "resolution": 64, "min_bucket_reso": 64}, check_paths=False)
    ds = TrainDataset(cfg, scan_dataset(cfg))
    keys = ds.load_batch(ds.sample_ids(), epoch=0, with_pixels=False)["keys"]
    assert keys[0] == keys[1]  # identical content, bucket and flip → one cache entry
    cache_dir = tmp_path / "cache"
    first = LatentCache(str(cache_dir), "model-A")
    assert first.get(keys[0]) is None
    latent = torch.randn(4, 8, 8)
    first.put(keys[0], latent)
    assert not [n for n in os.listdir(cache_dir) if n.endswith(".tmp")]
    # a second run (new dataset object, new cache object) finds it
    ds2 = TrainDataset(cfg, scan_dataset(cfg))
    keys2 = ds2.load_batch(ds2.sample_ids(), epoch=3, with_pixels=False)["keys"]
    second = LatentCache(str(cache_dir), "model-A")
    got = second.get(keys2[0])
    assert got is not None and torch.equal(got, latent)
    assert second.hits == 1 and len(second) == 1
    assert torch.equal(second.get_batch(keys2), torch.stack([latent, latent]))
    # another model never sees it; edited image bytes change the key
    assert LatentCache(str(cache_dir), "model-B").get(keys2[0]) is None
    make_image(data / "a.png", (64, 64), (1, 2, 3))
    ds3 = TrainDataset(cfg, scan_dataset(cfg))
    assert ds3.load_batch([0], epoch=0, with_pixels=False)["keys"][0] != keys[0]


def test_damaged_cache_file_is_a_miss(tmp_path: Path) -> None:
    cache = LatentCache(str(tmp_path), "m")
    cache.put("k", torch.ones(4, 2, 2))
    path = cache.path_for("k")
    assert path and os.path.isfile(path)
    Path(path).write_bytes(b"broken")
    assert cache.get("k") is None and not os.path.exists(path)


def test_memory_latent_cache() -> None:
    cache = LatentCache(None, "m")
    cache.put("k", torch.zeros(4, 2, 2))
    assert "k" in cache and cache.get("k").shape == (4, 2, 2) and cache.get_batch(["k", "x"]) is None


def test_text_encoder_cache_encodes_each_caption_once() -> None:
    calls: list[list[str]] = []

    def encode(captions: list[str]) -> dict[str, torch.Tensor]:
        calls.append(list(captions))
        vals = torch.tensor([float(len(c)) for c in captions])
        return {"crossattn": vals[:, None, None].expand(-1, 3, 2).clone(), "pooled": vals[:, None].clone()}

    cache = TextEncoderCache()
    out = cache.get_or_encode(["a", "bb", "a"], encode)
    assert out["crossattn"].shape == (3, 3, 2) and out["pooled"][:, 0].tolist() == [1.0, 2.0, 1.0]
    out = cache.get_or_encode(["bb", "ccc"], encode)
    assert calls == [["a", "bb"], ["ccc"]] and out["pooled"][:, 0].tolist() == [2.0, 3.0]
    assert len(cache) == 3
