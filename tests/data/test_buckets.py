from __future__ import annotations

import math
import random

import pytest

from lora_trainer.config import load_config
from lora_trainer.data.buckets import BucketManager, make_bucket_resolutions


@pytest.mark.parametrize(("reso", "lo", "hi", "step"), [(512, 256, 1024, 64), (1024, 512, 2048, 64),
                                                          (768, 256, 1024, 32)])
def test_bucket_bounds(reso: int, lo: int, hi: int, step: int) -> None:
    buckets = make_bucket_resolutions(reso * reso, lo, hi, step)
    assert (reso, reso) in buckets
    for w, h in buckets:
        assert w * h <= reso * reso
        assert w % step == 0 and h % step == 0
        assert lo <= w <= hi and lo <= h <= hi
        assert (h, w) in buckets


def test_known_sd15_buckets() -> None:
    buckets = make_bucket_resolutions(512 * 512, 256, 1024, 64)
    assert buckets == sorted({(256, 1024), (320, 768), (384, 640), (448, 576), (512, 512), (576, 448),
                              (640, 384), (704, 320), (768, 320), (832, 256), (896, 256), (960, 256),
                              (1024, 256), (320, 704), (256, 832), (256, 896), (256, 960)})


def test_assignment_by_closest_aspect() -> None:
    cfg = load_config({"resolution": 512}, check_paths=False)
    manager = BucketManager.from_config(cfg)
    assert manager.assign(1000, 1000) == (512, 512)
    assert manager.assign(1920, 1080) == (640, 384)     # 1.78 → 1.67 (closest in log ratio)
    assert manager.assign(1080, 1920) == (384, 640)
    assert manager.assign(5000, 100) == (1024, 256)     # extreme ratios take the extreme bucket
    for w, h in [(300, 200), (123, 456), (800, 600)]:
        b = manager.assign(w, h)
        best = min(abs(math.log(bw / bh) - math.log(w / h)) for bw, bh in manager.buckets)
        assert abs(math.log(b[0] / b[1]) - math.log(w / h)) == pytest.approx(best)


def test_no_bucket_mode_and_wh_resolution() -> None:
    cfg = load_config({"resolution": "768,512", "enable_bucket": False}, check_paths=False)
    manager = BucketManager.from_config(cfg)
    assert manager.buckets == [(768, 512)]
    assert manager.assign(100, 900) == (768, 512)
    cfg = load_config({"resolution": "832,1216", "max_bucket_reso": 2048}, check_paths=False)
    assert (832, 1216) in BucketManager.from_config(cfg).buckets


def test_fit_covers_bucket_and_centres() -> None:
    fit = BucketManager.fit(1000, 500, (512, 512))
    assert fit.resized == (1024, 512) and fit.crop_top_left == (0, 256)
    fit = BucketManager.fit(300, 200, (640, 384))
    assert fit.resized[0] >= 640 and fit.resized[1] >= 384
    rng = random.Random(0)
    for _ in range(20):
        fit = BucketManager.fit(1000, 500, (512, 512), rng)
        top, left = fit.crop_top_left
        assert top == 0 and 0 <= left <= 512
