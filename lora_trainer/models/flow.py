"""Flow matching (rectified flow): the objective and Euler sampler of FLUX.1 / Chroma / SD3-style models.

Forward process: x_t = (1 − σ)·x0 + σ·ε with σ ∈ (0, 1]; the model predicts the velocity
v = ε − x0, so one Euler step is x ← x + (σ_next − σ)·v. Training draws σ per sample:
- "uniform": σ ~ U(0, 1);
- "sigmoid" (logit-normal, SD3 paper §3.1): σ = sigmoid(m + s·n), n ~ N(0, 1);
- "shift": a uniform or logit-normal σ pushed toward noise with the static shift
  s·σ / (1 + (s − 1)·σ) (FLUX.1-schnell / SD3 use shift 3.0);
and, for FLUX.1-dev (`use_dynamic_shifting`), the resolution-dependent shift μ = a line through
(256 tokens, 0.5) and (4096 tokens, 1.15), applied as exp(μ) / (exp(μ) + (1/σ − 1)).
The sampler's σ grid reproduces diffusers' `FlowMatchEulerDiscreteScheduler.set_timesteps` exactly
(tested against it), so training and sampling agree with what users run elsewhere.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from lora_trainer.models.objective import NoisedBatch, weighted_mse

NUM_TRAIN_TIMESTEPS = 1000
TIMESTEP_SAMPLING = ("uniform", "sigmoid", "shift")
# FLUX.1-dev scheduler_config.json: base_image_seq_len 256, max_image_seq_len 4096, base_shift 0.5, max_shift 1.15
BASE_SEQ_LEN, MAX_SEQ_LEN, BASE_SHIFT, MAX_SHIFT = 256, 4096, 0.5, 1.15


def static_shift(sigmas: torch.Tensor | np.ndarray | float, shift: float):
    """σ' = s·σ / (1 + (s − 1)·σ): more steps at high noise for s > 1 (identity at s = 1)."""
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def time_shift(mu: float, sigmas: torch.Tensor | np.ndarray | float, power: float = 1.0):
    """The resolution-dependent ("exponential") shift: exp(μ) / (exp(μ) + (1/σ − 1)^power)."""
    return math.exp(mu) / (math.exp(mu) + (1 / sigmas - 1) ** power)


def resolution_shift(image_seq_len: int, base_seq_len: int = BASE_SEQ_LEN, max_seq_len: int = MAX_SEQ_LEN,
                     base_shift: float = BASE_SHIFT, max_shift: float = MAX_SHIFT) -> float:
    """μ for an image of `image_seq_len` latent tokens (FLUX packs 2×2 latent patches: (H/16)·(W/16))."""
    slope = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    return image_seq_len * slope + (base_shift - slope * base_seq_len)


@dataclass(frozen=True)
class FlowMatchingObjective:
    """Rectified-flow training: σ sampling, x_t, the velocity target and the loss.

    `timestep_sampling`: "uniform" | "sigmoid" | "shift"; `sigmoid_scale`/`logit_mean` shape the
    logit-normal; `shift` is the static shift for "shift"; `mu` (when set) applies the resolution-
    dependent shift instead. Timesteps given to the model are σ·1000 (the diffusers convention).
    """

    timestep_sampling: str = "sigmoid"
    sigmoid_scale: float = 1.0
    logit_mean: float = 0.0
    shift: float = 1.0
    mu: float | None = None

    def __post_init__(self) -> None:
        if self.timestep_sampling not in TIMESTEP_SAMPLING:
            raise ValueError(f"timestep_sampling {self.timestep_sampling!r}: use one of {', '.join(TIMESTEP_SAMPLING)}")

    def sample_sigmas(self, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """σ per sample in (0, 1), float32 on the CPU (drawn from `generator` only, for resume equality)."""
        if self.timestep_sampling == "uniform":
            sigmas = torch.rand((batch,), generator=generator)
        else:
            normal = torch.randn((batch,), generator=generator)
            sigmas = torch.sigmoid(self.logit_mean + self.sigmoid_scale * normal)
        if self.mu is not None:
            return time_shift(self.mu, sigmas)
        if self.timestep_sampling == "shift":
            return static_shift(sigmas, self.shift)
        return sigmas

    def noised(self, latents: torch.Tensor, generator: torch.Generator | None = None) -> NoisedBatch:
        noise = torch.randn(latents.shape, generator=generator, dtype=latents.dtype).to(latents.device)
        sigmas = self.sample_sigmas(latents.shape[0], generator).to(latents.device, latents.dtype)
        s = sigmas.view(-1, *([1] * (latents.dim() - 1)))
        noisy = (1.0 - s) * latents + s * noise
        return NoisedBatch(noisy=noisy, timesteps=sigmas * NUM_TRAIN_TIMESTEPS, target=noise - latents, weights=None)

    def loss(self, pred: torch.Tensor, batch: NoisedBatch) -> torch.Tensor:
        return weighted_mse(pred, batch.target, batch.weights)


def euler_sigmas(steps: int, *, shift: float = 1.0, mu: float | None = None,
                 num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> torch.Tensor:
    """The σ grid of an `steps`-step Euler sample, ending in 0 (as `FlowMatchEulerDiscreteScheduler`
    with `shift`, or with `use_dynamic_shifting` and `mu`, computes it)."""
    n = num_train_timesteps
    base = np.linspace(1, n, n, dtype=np.float32)[::-1].copy() / n  # the scheduler's training grid
    if mu is None:
        base = static_shift(base, shift)
    sigma_max, sigma_min = float(base[0]), float(base[-1])
    sigmas = np.linspace(sigma_max * n, sigma_min * n, steps) / n
    sigmas = time_shift(mu, sigmas) if mu is not None else static_shift(sigmas, shift)
    out = torch.from_numpy(np.asarray(sigmas)).to(torch.float32)
    return torch.cat([out, torch.zeros(1)])


def euler_step(sample: torch.Tensor, velocity: torch.Tensor, sigma: torch.Tensor | float,
               sigma_next: torch.Tensor | float) -> torch.Tensor:
    """x ← x + (σ_next − σ)·v, computed in float32, returned in the velocity's dtype."""
    return (sample.float() + (sigma_next - sigma) * velocity.float()).to(velocity.dtype)


Predict = Callable[[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]], torch.Tensor]


@torch.no_grad()
def euler_sample(predict: Predict, x: torch.Tensor, cond_pair: dict[str, torch.Tensor], sigmas: torch.Tensor,
                 guidance: float) -> torch.Tensor:
    """The flow family's sampler: Euler steps over `sigmas` (from `euler_sigmas`) with classifier-free
    guidance; `cond_pair` holds the negative prompt's conditioning then the prompt's, `predict(x, t, c)`
    is the model's velocity at timesteps σ·1000. Starts from pure noise `x` (σ = 1)."""
    x = x.float()
    for i in range(len(sigmas) - 1):
        t = (sigmas[i] * NUM_TRAIN_TIMESTEPS).repeat(2)
        out = predict(torch.cat([x, x]), t, cond_pair).float()
        uncond, text = out.chunk(2)
        x = euler_step(x, uncond + guidance * (text - uncond), sigmas[i], sigmas[i + 1])
    return x
