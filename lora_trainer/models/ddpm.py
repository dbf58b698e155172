"""The SD family's diffusion maths: DDPM schedule, ε/v objective (Min-SNR, noise offset), DDIM sampler.

One definition for every SD1/SD2/SDXL adapter (diffusers, A1111 ldm/sgm, Forge), so a LoRA trains
and previews the same way whatever host loaded the model, and the same way as kohya's sd-scripts and
diffusers' examples: betas linear in sqrt-space from 0.00085 to 0.012 over 1000 steps; the sampler
spaces its timesteps like diffusers' DDIM with `timestep_spacing="leading"` and `steps_offset=1`
(SD's shipped scheduler config).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from lora_trainer.models.objective import NoisedBatch, weighted_mse

NUM_TRAIN_TIMESTEPS = 1000
BETA_START = 0.00085
BETA_END = 0.012
PREDICTION_TYPES = ("epsilon", "v_prediction")


class NoiseSchedule:
    """Holds alphas_cumprod (float64 on CPU) and moves slices to the batch's device on use."""

    def __init__(self, num_timesteps: int = NUM_TRAIN_TIMESTEPS, beta_start: float = BETA_START,
                 beta_end: float = BETA_END):
        betas = torch.linspace(beta_start ** 0.5, beta_end ** 0.5, num_timesteps, dtype=torch.float64) ** 2
        self.num_timesteps = num_timesteps
        self.betas = betas
        self.alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)

    def _coeffs(self, timesteps: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ac = self.alphas_cumprod[timesteps.detach().to("cpu").long()]
        shape = (-1,) + (1,) * (like.dim() - 1)
        sqrt_ac = ac.sqrt().to(like.device, like.dtype).view(shape)
        sqrt_1m = (1.0 - ac).sqrt().to(like.device, like.dtype).view(shape)
        return sqrt_ac, sqrt_1m

    def add_noise(self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(ᾱ_t)·x_0 + sqrt(1-ᾱ_t)·ε."""
        a, s = self._coeffs(timesteps, latents)
        return a * latents + s * noise

    def velocity(self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """v = sqrt(ᾱ_t)·ε - sqrt(1-ᾱ_t)·x_0 (v-prediction target)."""
        a, s = self._coeffs(timesteps, latents)
        return a * noise - s * latents

    def target(self, prediction_type: str, latents: torch.Tensor, noise: torch.Tensor,
               timesteps: torch.Tensor) -> torch.Tensor:
        if prediction_type == "v_prediction":
            return self.velocity(latents, noise, timesteps)
        if prediction_type == "epsilon":
            return noise
        raise ValueError(f"unknown prediction_type {prediction_type!r}")

    def snr(self, timesteps: torch.Tensor) -> torch.Tensor:
        ac = self.alphas_cumprod[timesteps.detach().to("cpu").long()]
        return ac / (1.0 - ac)

    def min_snr_weights(self, timesteps: torch.Tensor, gamma: float, prediction_type: str) -> torch.Tensor:
        """Per-sample loss weights of Min-SNR-γ (Hang et al. 2023): ε → min(snr,γ)/snr, v → min(snr,γ)/(snr+1)."""
        snr = self.snr(timesteps)
        clipped = torch.clamp(snr, max=gamma)
        w = clipped / (snr + 1.0) if prediction_type == "v_prediction" else clipped / snr
        return w.to(timesteps.device, torch.float32)


def sample_noise(latents: torch.Tensor, noise_offset: float = 0.0,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Gaussian noise like `latents`; `noise_offset` adds a per-channel constant so the model can learn
    very dark/bright images (it otherwise cannot shift the mean)."""
    noise = torch.randn(latents.shape, generator=generator, dtype=latents.dtype, device="cpu")
    if noise_offset:
        noise = noise + noise_offset * torch.randn((latents.shape[0], latents.shape[1], 1, 1),
                                                   generator=generator, dtype=latents.dtype, device="cpu")
    return noise.to(latents.device)


def sample_timesteps(batch: int, generator: torch.Generator | None = None,
                     num_timesteps: int = NUM_TRAIN_TIMESTEPS) -> torch.Tensor:
    return torch.randint(0, num_timesteps, (batch,), generator=generator, device="cpu")


@dataclass(frozen=True)
class DDPMObjective:
    """ε- or v-prediction on the DDPM schedule, with optional noise offset and Min-SNR-γ weights."""

    prediction_type: str = "epsilon"
    noise_offset: float = 0.0
    min_snr_gamma: float | None = None
    schedule: NoiseSchedule = field(default_factory=NoiseSchedule, compare=False)

    def noised(self, latents: torch.Tensor, generator: torch.Generator | None = None) -> NoisedBatch:
        noise = sample_noise(latents, self.noise_offset, generator)
        t = sample_timesteps(latents.shape[0], generator).to(latents.device)
        weights = (self.schedule.min_snr_weights(t, float(self.min_snr_gamma), self.prediction_type)
                   if self.min_snr_gamma else None)
        return NoisedBatch(noisy=self.schedule.add_noise(latents, noise, t), timesteps=t,
                           target=self.schedule.target(self.prediction_type, latents, noise, t), weights=weights)

    def loss(self, pred: torch.Tensor, batch: NoisedBatch) -> torch.Tensor:
        return weighted_mse(pred, batch.target, batch.weights)


def ddim_timesteps(steps: int, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> list[int]:
    """Descending timesteps of a `steps`-step DDIM ("leading" spacing, offset 1, as SD's scheduler config)."""
    steps = max(1, min(int(steps), num_train_timesteps))
    ratio = num_train_timesteps // steps
    return [int(t) for t in (torch.arange(steps - 1, -1, -1) * ratio + 1).clamp(max=num_train_timesteps - 1)]


Predict = Callable[[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]], torch.Tensor]


@torch.no_grad()
def ddim_sample(predict: Predict, x: torch.Tensor, cond_pair: dict[str, torch.Tensor], steps: int,
                guidance: float, prediction_type: str, schedule: NoiseSchedule | None = None) -> torch.Tensor:
    """Deterministic DDIM (η = 0) with classifier-free guidance; returns the final latents.

    `cond_pair` holds the negative prompt's conditioning then the prompt's (batch of 2), so both run in
    one model call; `predict(x, t, cond)` is the adapter's model forward.
    """
    acp = (schedule or NoiseSchedule()).alphas_cumprod
    ts = ddim_timesteps(steps, len(acp))
    x = x.float()
    for i, t in enumerate(ts):
        a_t = float(acp[t])
        a_prev = float(acp[ts[i + 1]]) if i + 1 < len(ts) else 1.0
        out = predict(torch.cat([x, x]), torch.tensor([t, t]), cond_pair).float()
        uncond, text = out.chunk(2)
        out = uncond + guidance * (text - uncond)
        if prediction_type == "v_prediction":
            x0 = a_t ** 0.5 * x - (1 - a_t) ** 0.5 * out
            eps = a_t ** 0.5 * out + (1 - a_t) ** 0.5 * x
        else:
            eps = out
            x0 = (x - (1 - a_t) ** 0.5 * eps) / a_t ** 0.5
        x = a_prev ** 0.5 * x0 + (1 - a_prev) ** 0.5 * eps
    return x
