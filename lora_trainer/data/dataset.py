"""The epoch plan and batch loading: deterministic, bucket-pure batches, disjoint rank shards.

Sample ids: image `i` repeated `r_i` times appears as ids `i + k * len(items)` for k < r_i, so
every sample of an epoch has its own id (and its own caption shuffle / flip), and the image is
`id % len(items)`. All randomness is derived from (seed, epoch, id), so a resumed run can skip to
the exact batch it stopped at.
"""

from __future__ import annotations

import random
from collections import defaultdict
from typing import TYPE_CHECKING, Any

from lora_trainer.data.buckets import Bucket, BucketManager, Fit
from lora_trainer.data.cache import file_sha256
from lora_trainer.data.captions import process_caption
from lora_trainer.data.images import load_rgb
from lora_trainer.errors import DatasetError

if TYPE_CHECKING:
    import torch

    from lora_trainer.config import TrainConfig
    from lora_trainer.data.scan import DatasetIndex


class TrainDataset:
    """Images of a DatasetIndex arranged into buckets, with per-epoch batches and loading."""

    def __init__(self, cfg: TrainConfig, index: DatasetIndex, buckets: BucketManager | None = None):
        if not index.items:
            raise DatasetError(f"no training images in {index.root}")
        self.cfg = cfg
        self.index = index
        self.items = index.items
        self.batch_size = cfg.batch_size
        self.seed = cfg.seed
        self.bucket_manager = buckets or BucketManager.from_config(cfg)
        self.item_bucket: list[Bucket] = [self.bucket_manager.assign(it.width, it.height) for it in self.items]
        self._sha: dict[int, str] = {}

    # ---- epoch structure ------------------------------------------------------------------------
    def sample_ids(self) -> list[int]:
        """Every sample of one epoch (repeats included), in a fixed order."""
        n = len(self.items)
        return [i + k * n for i, item in enumerate(self.items) for k in range(item.repeats)]

    def item_of(self, sample_id: int) -> int:
        return sample_id % len(self.items)

    def bucket_of(self, sample_id: int) -> Bucket:
        return self.item_bucket[self.item_of(sample_id)]

    def bucket_counts(self, with_repeats: bool = True) -> dict[str, int]:
        """{"WxH": samples per epoch} (or images when with_repeats is False), largest first."""
        counts: dict[str, int] = defaultdict(int)
        for item, (w, h) in zip(self.items, self.item_bucket, strict=True):
            counts[f"{w}x{h}"] += item.repeats if with_repeats else 1
        return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))

    def _all_batches(self, epoch: int, seed: int) -> list[list[int]]:
        rng = random.Random(f"batches:{seed}:{epoch}")
        groups: dict[Bucket, list[int]] = defaultdict(list)
        for sid in self.sample_ids():
            groups[self.bucket_of(sid)].append(sid)
        batches: list[list[int]] = []
        for bucket in sorted(groups):
            ids = groups[bucket]
            rng.shuffle(ids)
            batches += [ids[i:i + self.batch_size] for i in range(0, len(ids), self.batch_size)]
        rng.shuffle(batches)
        return batches

    def num_batches(self, world_size: int = 1) -> int:
        """Batches each rank gets per epoch (the same every epoch)."""
        groups: dict[Bucket, int] = defaultdict(int)
        for item, bucket in zip(self.items, self.item_bucket, strict=True):
            groups[bucket] += item.repeats
        total = sum(-(-count // self.batch_size) for count in groups.values())
        return total // world_size

    def batches_for_epoch(self, epoch: int, seed: int | None = None, rank: int = 0,
                          world_size: int = 1) -> list[list[int]]:
        """This rank's batches of sample ids for `epoch`. Same (seed, epoch) → same batches; each
        batch holds one bucket; ranks get disjoint, equally long shards (the few batches left
        over when the count does not divide by world_size are dropped for this epoch)."""
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world_size {world_size}")
        batches = self._all_batches(epoch, self.seed if seed is None else seed)
        per_rank = len(batches) // world_size
        if per_rank == 0:
            raise DatasetError(f"{len(batches)} batch(es) per epoch cannot be shared by {world_size} processes; "
                               "add images/repeats or lower batch_size")
        return batches[rank::world_size][:per_rank]

    # ---- loading --------------------------------------------------------------------------------
    def image_sha256(self, item_index: int) -> str:
        if item_index not in self._sha:
            self._sha[item_index] = file_sha256(self.items[item_index].path)
        return self._sha[item_index]

    def _sample(self, sample_id: int, epoch: int) -> tuple[str, bool, Fit]:
        """Caption, flip and crop of one sample: a pure function of (seed, epoch, id)."""
        cfg = self.cfg
        item_index = self.item_of(sample_id)
        item = self.items[item_index]
        rng = random.Random(f"sample:{self.seed}:{epoch}:{sample_id}")
        caption = process_caption(item.caption, rng, shuffle=cfg.shuffle_caption, keep_tokens=cfg.keep_tokens,
                                  dropout_rate=cfg.caption_dropout_rate)
        flip = rng.random() < 0.5
        flip = flip and cfg.flip_aug
        crop_rng = random.Random(rng.random()) if cfg.random_crop else None
        fit = BucketManager.fit(item.width, item.height, self.item_bucket[item_index], crop_rng)
        return caption, flip, fit

    def cache_key(self, sample_id: int, epoch: int) -> str:
        """Identifies the pixels a sample produces: image content, bucket, crop, flip."""
        _, flip, fit = self._sample(sample_id, epoch)
        return self._key(self.item_of(sample_id), fit, flip)

    def _key(self, item_index: int, fit: Fit, flip: bool) -> str:
        w, h = fit.bucket
        crop = f"{fit.crop_top_left[0]},{fit.crop_top_left[1]}" if self.cfg.random_crop else "center"
        return f"{self.image_sha256(item_index)}:{w}x{h}:{crop}:{'flip' if flip else 'noflip'}"

    def latent_variants(self) -> list[tuple[int, str, Fit, bool]]:
        """Every (image, cache key, fit, flip) a run can need a latent for: each image's centred fit in
        its bucket, and its mirror image when flip_aug is on (random crops are never cached)."""
        out = []
        for i, item in enumerate(self.items):
            fit = BucketManager.fit(item.width, item.height, self.item_bucket[i], None)
            for flip in (False, True) if self.cfg.flip_aug else (False,):
                out.append((i, self._key(i, fit, flip), fit, flip))
        return out

    def pixels_of(self, item_index: int, fit: Fit, flip: bool) -> torch.Tensor:
        """One image's pixels [1,3,H,W] in [-1,1], as `load_batch` would load it."""
        return self._pixels([(item_index, fit, flip)])

    def load_batch(self, indices: list[int], epoch: int, with_pixels: bool = True) -> dict[str, Any]:
        """pixels [B,3,H,W] float32 in [-1,1] (None when with_pixels is False, e.g. all latents are
        cached), captions, sizes (SizeInfo for SDXL conditioning), keys (latent cache), bucket."""
        from lora_trainer.data.sizes import SizeInfo

        if not indices:
            raise ValueError("empty batch")
        captions: list[str] = []
        sizes: list[SizeInfo] = []
        keys: list[str] = []
        fits: list[tuple[int, Fit, bool]] = []
        bucket = self.bucket_of(indices[0])
        for sid in indices:
            if self.bucket_of(sid) != bucket:
                raise ValueError(f"batch mixes buckets {bucket} and {self.bucket_of(sid)}")
            caption, flip, fit = self._sample(sid, epoch)
            item_index = self.item_of(sid)
            top, left = fit.crop_top_left
            if flip:  # the crop as the flipped image sees it
                left = fit.resized[0] - fit.bucket[0] - left
            captions.append(caption)
            sizes.append(SizeInfo(original=(fit.original[1], fit.original[0]), crop_top_left=(top, left),
                                  target=(fit.bucket[1], fit.bucket[0])))
            keys.append(self._key(item_index, fit, flip))
            fits.append((item_index, fit, flip))
        pixels = self._pixels(fits) if with_pixels else None
        return {"pixels": pixels, "captions": captions, "sizes": sizes, "keys": keys, "bucket": bucket,
                "items": [f[0] for f in fits], "flips": [f[2] for f in fits], "masks": self._masks(fits),
                "loss_weights": self._loss_weights(fits)}

    def _masks(self, fits: list[tuple[int, Fit, bool]]) -> torch.Tensor | None:
        """Loss masks on the latent grid [B,1,h/8,w/8] (ones for images without one); None when no image
        of the batch has a mask."""
        import numpy as np
        import torch

        from lora_trainer.data.masks import LATENT_SCALE, load_latent_mask

        cfg = self.cfg
        if not cfg.alpha_mask and not any(self.items[i].mask_path for i, _, _ in fits):
            return None
        masks = [load_latent_mask(self.items[i].path, self.items[i].mask_path, cfg.alpha_mask, fit, flip)
                 for i, fit, flip in fits]
        if all(m is None for m in masks):
            return None
        w, h = fits[0][1].bucket
        ones = np.ones((h // LATENT_SCALE, w // LATENT_SCALE), dtype=np.float32)
        return torch.from_numpy(np.stack([ones if m is None else m for m in masks]))[:, None]

    def _loss_weights(self, fits: list[tuple[int, Fit, bool]]) -> list[float]:
        """Per-sample loss weights: prior_loss_weight for regularisation images, 1 for the others."""
        return [self.cfg.prior_loss_weight if self.items[i].is_reg else 1.0 for i, _, _ in fits]

    def _pixels(self, fits: list[tuple[int, Fit, bool]]) -> torch.Tensor:
        import numpy as np
        import torch
        from PIL import Image

        arrays = []
        for item_index, fit, flip in fits:
            path = self.items[item_index].path
            try:
                image = load_rgb(path, draft_size=fit.resized)
            except OSError as exc:
                raise DatasetError(f"{path}: cannot read image during training: {exc}") from None
            ow, oh = fit.original
            if abs(image.width / image.height - ow / oh) > 0.02:  # file changed since the scan: fit it anyway
                fit = BucketManager.fit(image.width, image.height, fit.bucket)
            if image.size != fit.resized:
                downscale = fit.resized[0] < image.width
                image = image.resize(fit.resized, Image.Resampling.LANCZOS if downscale else Image.Resampling.BICUBIC,
                                     reducing_gap=3.0 if downscale else None)
            top, left = fit.crop_top_left
            image = image.crop((left, top, left + fit.bucket[0], top + fit.bucket[1]))
            if flip:
                image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            arrays.append(np.asarray(image, dtype=np.uint8))
        batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float()
        return batch.div_(127.5).sub_(1.0).contiguous()
