"""The image sets beside the training images: the held-out validation set and regularisation images.

Both are chosen before any model loads, from the scanned `DatasetIndex`:
- validation: `validation_data_dir` scanned like a dataset, or `validation_split` of the training
  images picked by seed (the same images for the same seed and dataset) and removed from training;
- regularisation (prior preservation): `reg_data_dir` scanned with kohya's `N_class/` convention,
  then repeated as kohya does so that an epoch holds as many regularisation samples as training
  samples: the first pass takes each image with its folder's repeats, further passes add one repeat
  per image in order until the counts match. They join the training items (`is_reg`), so they are
  bucketed and shuffled together with them and share batches; their loss is weighted by
  `prior_loss_weight`.
"""

from __future__ import annotations

import dataclasses
import random
from typing import TYPE_CHECKING

from lora_trainer.data.scan import scan_dataset, summarise_items
from lora_trainer.errors import ConfigError, DatasetError

if TYPE_CHECKING:
    from lora_trainer.config import TrainConfig
    from lora_trainer.data.scan import DatasetIndex, ImageItem


def _scan_other(cfg: TrainConfig, folder: str, field: str, trigger: bool) -> DatasetIndex:
    """Scan `folder` as a dataset of its own (no metadata.csv, no further sets), errors naming `field`."""
    other = dataclasses.replace(cfg, train_data_dir=folder, metadata_path=None, validation_data_dir=None,
                                validation_split=0.0, reg_data_dir=None,
                                trigger_word=cfg.trigger_word if trigger else "")
    try:
        return scan_dataset(other)
    except ConfigError as exc:
        raise ConfigError(field, str(exc).split(": ", 1)[-1]) from None
    except DatasetError as exc:
        raise ConfigError(field, str(exc)) from None


def split_validation(cfg: TrainConfig, index: DatasetIndex) -> None:
    """Fill `index.validation` (and take a validation_split's images out of `index.items`)."""
    if cfg.validation_data_dir:
        index.validation = _scan_other(cfg, cfg.validation_data_dir, "validation_data_dir", trigger=True).items
        return
    if cfg.validation_split <= 0:
        return
    n = len(index.items)
    k = max(1, round(n * cfg.validation_split))
    if k >= n:
        raise ConfigError("validation_split", f"holding out {k} of {n} image(s) leaves none to train on; add images "
                                              "or set validation_split: 0")
    picked = set(random.Random(f"validation:{cfg.seed}").sample(range(n), k))
    index.validation = [it for i, it in enumerate(index.items) if i in picked]
    index.items = [it for i, it in enumerate(index.items) if i not in picked]
    summarise_items(index)  # the LoRA's metadata describes the images it was trained on
    index.notes.append(f"{k} image(s) held out for the validation loss")


def reg_repeats(reg: list[ImageItem], train_samples: int) -> None:
    """Set each regularisation image's repeats so that they add up to `train_samples` (or a little
    more, when the first pass with the folders' own repeats already does)."""
    given = [it.repeats for it in reg]
    for it in reg:
        it.repeats = 0
    n, first = 0, True
    while n < train_samples:
        for it, r in zip(reg, given, strict=True):
            add = r if first else 1
            it.repeats += add
            n += add
            if n >= train_samples:
                break
        first = False


def add_regularisation(cfg: TrainConfig, index: DatasetIndex) -> None:
    """Append `reg_data_dir`'s images to `index.items` as regularisation items."""
    if not cfg.reg_data_dir:
        return
    reg = _scan_other(cfg, cfg.reg_data_dir, "reg_data_dir", trigger=False)
    train_samples = index.num_train_samples
    reg_repeats(reg.items, train_samples)
    items = [dataclasses.replace(it, is_reg=True) for it in reg.items if it.repeats > 0]
    index.items += items
    index.skipped += reg.skipped
    index.notes.append(f"{len(items)} regularisation image(s), {sum(it.repeats for it in items)} sample(s) per "
                       f"epoch beside {train_samples} training sample(s), loss weight {cfg.prior_loss_weight:g}")
