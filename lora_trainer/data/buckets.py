"""Aspect-ratio buckets: the sizes images are trained at, and how an image is fitted into one.

Every bucket has area ≤ the training resolution's area and sides that are multiples of
`bucket_reso_steps` within [min_bucket_reso, max_bucket_reso]; an image goes to the bucket whose
aspect ratio is closest (in log space, so 2:1 and 1:2 are equally far from 1:1), is scaled to
cover it and cropped (centre, or random with `random_crop`). Batches never mix buckets.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lora_trainer.config import TrainConfig

Bucket = tuple[int, int]  # (width, height)


def make_bucket_resolutions(max_area: int, min_reso: int, max_reso: int, step: int) -> list[Bucket]:
    """For each width on the step grid, the tallest height that keeps the area within `max_area`
    (and its transpose): the largest bucket for every aspect ratio."""
    buckets: set[Bucket] = set()
    width = min_reso
    while width <= max_reso:
        height = min(max_reso, (max_area // width) // step * step)
        if height >= min_reso:
            buckets.add((width, height))
            buckets.add((height, width))
        width += step
    return sorted(buckets)


@dataclass(frozen=True)
class Fit:
    """How an image of `original` (w, h) becomes a `bucket` sample: resize to `resized` (w, h),
    then crop the bucket at `crop_top_left` (top, left) in resized pixels."""

    bucket: Bucket
    original: tuple[int, int]
    resized: tuple[int, int]
    crop_top_left: tuple[int, int]


class BucketManager:
    """The bucket list of a config and the image → bucket assignment."""

    def __init__(self, buckets: list[Bucket]):
        if not buckets:
            raise ValueError("no buckets")
        self.buckets = sorted(buckets)
        self._log_ratios = [math.log(w / h) for w, h in self.buckets]

    @classmethod
    def from_config(cls, cfg: TrainConfig) -> BucketManager:
        width, height = cfg.resolution_wh
        if not cfg.enable_bucket:
            return cls([(width, height)])
        buckets = make_bucket_resolutions(width * height, cfg.min_bucket_reso, cfg.max_bucket_reso,
                                          cfg.bucket_reso_steps)
        if (width, height) not in buckets:
            buckets.append((width, height))  # a W,H resolution is always its own bucket
        return cls(buckets)

    def assign(self, width: int, height: int) -> Bucket:
        """Closest aspect ratio; on a tie the larger bucket (less upscaling)."""
        target = math.log(width / height)
        best = min(range(len(self.buckets)),
                   key=lambda i: (round(abs(self._log_ratios[i] - target), 12),
                                  -self.buckets[i][0] * self.buckets[i][1]))
        return self.buckets[best]

    @staticmethod
    def fit(width: int, height: int, bucket: Bucket, rng: random.Random | None = None) -> Fit:
        """Scale to cover the bucket (aspect kept), then crop centred or at a random offset."""
        bw, bh = bucket
        scale = max(bw / width, bh / height)
        rw = max(bw, round(width * scale))
        rh = max(bh, round(height * scale))
        if rng is None:
            left, top = (rw - bw) // 2, (rh - bh) // 2
        else:
            left, top = rng.randint(0, rw - bw), rng.randint(0, rh - bh)
        return Fit(bucket, (width, height), (rw, rh), (top, left))
