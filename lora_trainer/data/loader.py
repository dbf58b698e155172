"""Batches through `torch.utils.data`: a bucket batch sampler over the whole run, worker processes, pinning.

The sampler yields (epoch, sample ids) for every micro-batch from the resume position to the end of
the run, in exactly the order the training loop consumes them (`TrainDataset.batches_for_epoch`), so
one DataLoader (and one set of `num_workers` worker processes) serves the run, and loading the next
batches overlaps the current step. Loading is a pure function of (seed, epoch, sample id): workers
and prefetching change when a batch is read, never what it holds, so resume stays bit-exact.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

if TYPE_CHECKING:
    from lora_trainer.data.cache import LatentCache
    from lora_trainer.data.dataset import TrainDataset

BatchKey = tuple[int, tuple[int, ...]]  # (epoch, sample ids of one micro-batch)


class RunBatchSampler(Sampler[BatchKey]):
    """This rank's micro-batches from (`start_epoch`, `start_pos`) to the end of epoch `epochs - 1`,
    each epoch cut to `per_epoch` batches (every rank takes the same number). `batches_for(epoch)`
    gives an epoch's micro-batches in loop order (`TrainDataset.batches_for_epoch` for images, the
    token batches of an LLM run); it runs in the training process only."""

    def __init__(self, batches_for: Callable[[int], list[list[int]]], *, start_epoch: int, start_pos: int,
                 epochs: int, per_epoch: int):
        self.batches_for = batches_for
        self.start_epoch, self.start_pos, self.epochs, self.per_epoch = start_epoch, start_pos, epochs, per_epoch

    def __iter__(self) -> Iterator[BatchKey]:
        for epoch in range(self.start_epoch, self.epochs):
            first = self.start_pos if epoch == self.start_epoch else 0
            for ids in self.batches_for(epoch)[:self.per_epoch][first:]:
                yield epoch, tuple(ids)

    def __len__(self) -> int:
        return max(0, (self.epochs - self.start_epoch) * self.per_epoch - self.start_pos)


class BatchDataset(Dataset[dict[str, Any]]):
    """Images: one item = one loaded micro-batch, `TrainDataset.load_batch` plus its cached latents.

    With every latent cached (the pre-pass ran), images are not decoded at all; otherwise pixels
    are loaded and the step encodes them.
    """

    def __init__(self, dataset: TrainDataset, latent_cache: LatentCache | None = None):
        self.dataset, self.latent_cache = dataset, latent_cache

    def __getitem__(self, key: BatchKey) -> dict[str, Any]:  # type: ignore[override]
        epoch, ids = key
        latents = None
        if self.latent_cache is not None:
            batch = self.dataset.load_batch(list(ids), epoch, with_pixels=False)
            latents = self.latent_cache.get_batch(batch["keys"])
        if latents is None:
            batch = self.dataset.load_batch(list(ids), epoch)
        batch["latents"] = latents
        batch["epoch"], batch["ids"] = epoch, ids
        return batch

    def __len__(self) -> int:  # not used by the batch sampler; a Dataset must define it
        raise TypeError("BatchDataset is indexed by (epoch, ids) keys only")


def _as_is(batch: dict[str, Any]) -> dict[str, Any]:
    """The collate function: a micro-batch is already a batch (module-level so workers can pickle it)."""
    return batch


def make_loader(dataset: Dataset[dict[str, Any]], sampler: RunBatchSampler, *, num_workers: int,
                pin_memory: bool) -> DataLoader[dict[str, Any]]:
    """The run's DataLoader over a dataset indexed by (epoch, ids): `num_workers` processes (0 = load
    in the training process), tensors pinned for fast copies to a CUDA device. Its own generator
    seeds the workers, so making it draws nothing from the global RNG."""
    return DataLoader(dataset, sampler=sampler, batch_size=None, collate_fn=_as_is,
                      num_workers=num_workers, pin_memory=pin_memory, persistent_workers=False,
                      prefetch_factor=2 if num_workers > 0 else None,
                      generator=torch.Generator().manual_seed(0))
