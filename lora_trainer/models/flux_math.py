"""FLUX.1 / Chroma pieces of the training step and the sampler, as pure torch functions.

Why separate and pure: the flow-matching objective is shared by every rectified-flow family, but the
FLUX.1 specifics (16-channel latents scaled and shifted, 2x2 patches packed into tokens with 3-axis
position ids, a guidance input for dev and none for schnell/Chroma, a sigma shift that grows with the
image's token count) are few and easy to get subtly wrong; each is one small function here, checked
against diffusers' FluxPipeline / FlowMatchEulerDiscreteScheduler in the tests. Facts from diffusers
`pipeline_flux.py` (`_pack_latents`, `_prepare_latent_image_ids`, `calculate_shift`) and
`scheduling_flow_match_euler_discrete.py` (`time_shift`, `step`), and FLUX.1's `ae` (scale 0.3611,
shift 0.1159).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from lora_trainer.models import flow

LATENT_CHANNELS = 16
LATENT_SCALE = 0.3611
LATENT_SHIFT = 0.1159
VAE_DOWNSCALE = 8
PATCH = 2


# ---- latents -------------------------------------------------------------------------------------
def scale_latents(z: torch.Tensor, scale: float = LATENT_SCALE, shift: float = LATENT_SHIFT) -> torch.Tensor:
    """VAE latent -> model space: (z - shift) * scale."""
    return (z - shift) * scale


def unscale_latents(x: torch.Tensor, scale: float = LATENT_SCALE, shift: float = LATENT_SHIFT) -> torch.Tensor:
    """Model space -> VAE latent (for decoding): x / scale + shift."""
    return x / scale + shift


def pack_latents(x: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B, (H/2)(W/2), 4C]: each 2x2 patch becomes one token, channels outermost
    (channel c, row dy, column dx at index 4c + 2dy + dx), tokens in row-major order."""
    b, c, h, w = x.shape
    if h % PATCH or w % PATCH:
        raise ValueError(f"latent height and width must be even to pack 2x2 patches, got {h}x{w}")
    x = x.view(b, c, h // PATCH, PATCH, w // PATCH, PATCH).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // PATCH) * (w // PATCH), c * PATCH * PATCH)


def unpack_latents(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Inverse of `pack_latents` for a latent of `height` x `width` (not pixels)."""
    b, n, d = tokens.shape
    h2, w2 = height // PATCH, width // PATCH
    if n != h2 * w2:
        raise ValueError(f"{n} tokens do not make a {height}x{width} latent")
    x = tokens.view(b, h2, w2, d // (PATCH * PATCH), PATCH, PATCH).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, d // (PATCH * PATCH), height, width)


def image_ids(height: int, width: int, *, device: torch.device | None = None,
              dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Position ids [(H/2)(W/2), 3] of the packed tokens of a `height` x `width` latent: (0, row, column)."""
    h2, w2 = height // PATCH, width // PATCH
    ids = torch.zeros(h2, w2, 3, device=device, dtype=dtype)
    ids[..., 1] = torch.arange(h2, device=device, dtype=dtype)[:, None]
    ids[..., 2] = torch.arange(w2, device=device, dtype=dtype)[None, :]
    return ids.reshape(h2 * w2, 3)


def text_ids(length: int, *, device: torch.device | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Position ids [length, 3] of the text tokens: all zero (text has no 2-D position)."""
    return torch.zeros(length, 3, device=device, dtype=dtype)


def guidance_input(kind: str, batch: int, value: float = 1.0, *,
                   device: torch.device | None = None) -> torch.Tensor | None:
    """The distilled-guidance input: a [B] tensor of `value` for FLUX.1-dev (train with 1.0), None for
    schnell and Chroma (they have no guidance embedder)."""
    if kind != "flux-dev":
        return None
    return torch.full((batch,), float(value), device=device, dtype=torch.float32)


# ---- sigmas --------------------------------------------------------------------------------------
def image_seq_len(height: int, width: int) -> int:
    """Packed token count of a `height` x `width` latent."""
    return (height // PATCH) * (width // PATCH)


def shift_mu(seq_len: int, base_seq_len: int = 256, max_seq_len: int = 4096, base_shift: float = 0.5,
             max_shift: float = 1.15) -> float:
    """FLUX.1's resolution-dependent shift exponent: linear in the token count, 0.5 at 256 tokens
    (512 px), 1.15 at 4096 (1024 px)."""
    m = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    return seq_len * m + (base_shift - m * base_seq_len)


def shift_sigmas(sigmas: torch.Tensor, *, mu: float | None = None, shift: float = 1.0) -> torch.Tensor:
    """Dynamic shift (mu given: e^mu / (e^mu + 1/s - 1)) or fixed shift (s' = shift*s / (1 + (shift-1)*s))."""
    if mu is not None:
        return math.exp(mu) / (math.exp(mu) + (1 / sigmas - 1))
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def sample_sigmas(steps: int, *, seq_len: int, dynamic: bool = True, shift: float = 1.0,
                  base_seq_len: int = 256, max_seq_len: int = 4096, base_shift: float = 0.5,
                  max_shift: float = 1.15) -> torch.Tensor:
    """The sampler's sigmas, `steps` + 1 values from about 1 down to 0 (float32): linspace(1, 1/steps),
    shifted for the image size (dev, Chroma) or by a fixed `shift` (schnell: 1), then a terminal 0."""
    if steps < 1:
        raise ValueError("steps must be >= 1")
    base = torch.linspace(1.0, 1.0 / steps, steps, dtype=torch.float64).to(torch.float32)
    mu = shift_mu(seq_len, base_seq_len, max_seq_len, base_shift, max_shift) if dynamic else None
    s = shift_sigmas(base, mu=mu, shift=shift).to(torch.float32)
    return torch.cat([s, torch.zeros(1)])


def scheduler_sigmas(steps: int, seq_len: int, scheduler_config: dict) -> torch.Tensor:
    """`sample_sigmas` with the settings of a FlowMatchEulerDiscreteScheduler config (scheduler_config.json)."""
    c = scheduler_config
    return sample_sigmas(steps, seq_len=seq_len, dynamic=bool(c.get("use_dynamic_shifting", False)),
                         shift=float(c.get("shift", 1.0)), base_seq_len=int(c.get("base_image_seq_len", 256)),
                         max_seq_len=int(c.get("max_image_seq_len", 4096)),
                         base_shift=float(c.get("base_shift", 0.5)),
                         max_shift=float(c.get("max_shift", 1.15)))


def euler_sample(velocity: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x: torch.Tensor,
                 sigmas: torch.Tensor) -> torch.Tensor:
    """Integrate dx/dsigma = v from sigmas[0] (noise) to sigmas[-1] (data) with Euler steps:
    x <- x + (sigma_next - sigma) * v(x, sigma), in float32 whatever the model dtype.
    `velocity(x, sigma)` gets sigma as a [B] tensor in [0, 1] (the transformer's `timestep`)."""
    for i in range(len(sigmas) - 1):
        sigma = sigmas[i].expand(x.shape[0]).to(x.dtype)
        x = flow.euler_step(x, velocity(x, sigma), sigmas[i], sigmas[i + 1])
    return x
