"""The validation loss: the family's own loss on held-out images, with every random draw fixed.

Like the demo's held-out metric (`train/evaluate.py`), the inputs are fixed once: each held-out
image's latents (VAE sampled with a per-image seed) and `DRAWS` noise/timestep draws from a
generator seeded by (seed, image). Unlike it, the noise, timesteps and loss come from the model
family's objective, so the number is comparable with the training loss on every family (DDPM ε/v,
flow matching) and repeats exactly for the same seed, before and after a resume.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from lora_trainer.models.objective import NoisedBatch, Objective

DRAWS = 4  # noise/timestep draws per held-out image


@dataclass
class HeldOutInput:
    """One held-out image made ready: DRAWS noised copies, its caption, SDXL sizes and loss mask."""

    noised: NoisedBatch
    captions: list[str]
    sizes: list[Any]
    mask: torch.Tensor | None


def fixed_input(latent: torch.Tensor, caption: str, size: Any, mask: torch.Tensor | None, objective: Objective,
                seed: int) -> HeldOutInput:
    """The fixed noised input of one image (`latent` [C,h,w]) from a generator seeded by `seed`."""
    gen = torch.Generator().manual_seed(seed)
    latents = latent[None].expand(DRAWS, *latent.shape).contiguous()
    masks = None if mask is None else mask[None].expand(DRAWS, *mask.shape).to(latent.device)
    return HeldOutInput(objective.noised(latents, gen), [caption] * DRAWS, [size] * DRAWS, masks)


@torch.no_grad()
def held_out_loss(inputs: list[HeldOutInput], loss_of: Callable[[HeldOutInput], torch.Tensor]) -> float:
    """The mean of `loss_of` over the held-out images (summed in float64, so the order of additions is
    the only rounding that matters, and it is fixed)."""
    total = 0.0
    for item in inputs:
        total += float(loss_of(item).double())
    return total / max(1, len(inputs))
