"""DDPM scaled-linear noise schedule and the loss targets/weights built on it.

The schedule is the trainer's own (not the adapter's) so every host trains the same way as kohya's
sd-scripts and diffusers' examples: betas linear in sqrt-space from 0.00085 to 0.012 over 1000 steps.
"""

from __future__ import annotations

import torch

NUM_TRAIN_TIMESTEPS = 1000
BETA_START = 0.00085
BETA_END = 0.012


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
        """Per-sample loss weights of Min-SNR-γ: ε → min(snr,γ)/snr, v → min(snr,γ)/(snr+1)."""
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


def diffusion_loss(pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample MSE (mean over C,H,W), optionally weighted, then mean over the batch (in float32)."""
    per = torch.nn.functional.mse_loss(pred.float(), target.float(), reduction="none")
    per = per.mean(dim=list(range(1, per.dim())))
    if weights is not None:
        per = per * weights.to(per.device)
    return per.mean()
