"""The training objective seam: what a model family does between clean latents and a loss.

The loop never knows whether a family is trained by DDPM noise prediction or by flow matching: it
asks the adapter's `objective` for a `NoisedBatch` (model input, timesteps, target, per-sample
weights), runs the model, and asks the same objective for the loss. Every random draw goes through
the generator it is given, so a resumed run draws exactly what the uninterrupted one drew.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch


@dataclass
class NoisedBatch:
    """One micro-batch made ready for the model: input, the timesteps it is told, what it should output."""

    noisy: torch.Tensor
    timesteps: torch.Tensor
    target: torch.Tensor
    weights: torch.Tensor | None = None  # per-sample loss weights (e.g. Min-SNR), None = equal


class Objective(Protocol):
    """A family's training objective (DDPM ε/v in `models.ddpm`, rectified flow in `models.flow`)."""

    def noised(self, latents: torch.Tensor, generator: torch.Generator | None = None) -> NoisedBatch: ...

    def loss(self, pred: torch.Tensor, batch: NoisedBatch) -> torch.Tensor: ...


def weighted_mse(pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample MSE (mean over all but the batch dimension), optionally weighted, then the batch mean,
    all in float32 (half-precision squares overflow)."""
    per = torch.nn.functional.mse_loss(pred.float(), target.float(), reduction="none")
    per = per.mean(dim=list(range(1, per.dim())))
    if weights is not None:
        per = per * weights.to(per.device)
    return per.mean()
