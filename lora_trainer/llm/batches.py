"""Deterministic batching and the causal-LM loss (shared by training, tests and evaluation).

The order of an epoch depends only on (seed, epoch), so a resumed run sees the same batches as an
uninterrupted one; ranks take interleaved micro-batches of the same global order.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from lora_trainer.llm.encode import IGNORE

Example = tuple[Any, Any]  # (input ids, labels): int sequences or int32 numpy arrays


def micro_batches(n_examples: int, batch_size: int, seed: int, epoch: int, rank: int = 0,
                  world_size: int = 1) -> list[list[int]]:
    """This rank's micro-batches (example indices) for one epoch; every rank gets the same count."""
    from lora_trainer.train.common import derive_seed

    gen = torch.Generator().manual_seed(derive_seed(seed, "llm-order", epoch))
    order = torch.randperm(n_examples, generator=gen).tolist()
    batches = [order[i:i + batch_size] for i in range(0, n_examples, batch_size)]
    per_rank = math.ceil(len(batches) / world_size)
    batches += batches[: per_rank * world_size - len(batches)]  # wrap so ranks stay in lockstep
    return batches[rank::world_size]


def collate(examples: Sequence[Example], pad_id: int, device: Any = "cpu") -> dict[str, torch.Tensor]:
    """Right-pad to the longest example: input_ids, attention_mask, labels (-100 on padding)."""
    width = max(len(ids) for ids, _ in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, (x, y) in enumerate(examples):
        ids[row, :len(x)] = torch.as_tensor(x, dtype=torch.long)
        labels[row, :len(y)] = torch.as_tensor(y, dtype=torch.long)
        mask[row, :len(x)] = 1
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device)}


class TokenBatches(Dataset[dict[str, Any]]):
    """The LLM run's DataLoader items: (epoch, example ids) → the padded micro-batch on the CPU
    (pinned and moved by the loader and the step), tagged with its key so the step can check it."""

    def __init__(self, examples: Sequence[Example], pad_id: int):
        self.examples, self.pad_id = examples, pad_id

    def __getitem__(self, key: tuple[int, tuple[int, ...]]) -> dict[str, Any]:  # type: ignore[override]
        epoch, ids = key
        batch: dict[str, Any] = collate([self.examples[i] for i in ids], self.pad_id)
        batch["epoch"], batch["ids"] = epoch, ids
        return batch

    def __len__(self) -> int:  # indexed by (epoch, ids) keys only
        raise TypeError("TokenBatches is indexed by (epoch, ids) keys only")


def target_count(batch: dict[str, torch.Tensor]) -> int:
    """Tokens that carry loss (labels shifted by one, as the model predicts the next token)."""
    return int((batch["labels"][:, 1:] != IGNORE).sum())


def summed_loss(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sum of next-token cross-entropy over the labelled tokens (fp32 softmax)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    shifted = logits[:, :-1].float()
    targets = batch["labels"][:, 1:]
    return F.cross_entropy(shifted.reshape(-1, shifted.shape[-1]), targets.reshape(-1), ignore_index=IGNORE,
                           reduction="sum")


@torch.no_grad()
def mean_loss(model: Any, examples: Sequence[Example], pad_id: int, batch_size: int = 8,
              device: Any = "cpu") -> float:
    """Token-averaged loss over examples (held-out evaluation)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for i in range(0, len(examples), batch_size):
            batch = collate(examples[i:i + batch_size], pad_id, device)
            total += float(summed_loss(model, batch))
            count += target_count(batch)
    finally:
        model.train(was_training)
    return total / max(1, count)
