"""The FLUX.1 / Chroma sampler and prompt encoding, on the parts dict (`flux_tiny` / `flux_loading`).

Why our own instead of FluxPipeline: sample images during training must run with the LoRA attached to
whatever modules the run holds (the WebUI's, ours), with fixed seeds, and the conditioning must be
computable once and cached; the pipeline owns its modules and re-encodes. The maths is
`flux_math` (shifted sigmas, Euler); this module only calls the text encoders and the transformer
the way FluxPipeline / ChromaPipeline do (facts from their `encode_prompt` and denoising loops):
FLUX.1 reads the T5 sequence unmasked and CLIP-L's pooled vector, dev gets the guidance strength as
an input; Chroma reads the T5 sequence with its attention mask (keeping the first padding token),
has no CLIP, and uses true classifier-free guidance with a negative prompt.
"""

from __future__ import annotations

from typing import Any

import torch

from lora_trainer.models import flux_math
from lora_trainer.models.preview import to_pil

CLIP_MAX_LENGTH = 77


def encode_prompts(parts: dict[str, Any], prompts: list[str],
                   max_sequence_length: int = 512) -> dict[str, torch.Tensor]:
    """{"t5": [B, L, D]} plus {"pooled": [B, D]} for FLUX.1 or {"t5_mask": [B, L]} for Chroma; batch first,
    so the values can be cached. T5 is never trained and runs without grad; CLIP-L runs in the caller's
    grad mode (with grad when a CLIP-L LoRA is trained)."""
    tok, t5 = parts["tokenizer_2"], parts["text_encoder_2"]
    dev = next(t5.parameters()).device
    enc = tok(prompts, padding="max_length", max_length=max_sequence_length, truncation=True, return_tensors="pt")
    if parts["kind"] == "chroma":
        mask = enc.attention_mask.to(dev)
        with torch.no_grad():
            seq = t5(enc.input_ids.to(dev), attention_mask=mask)[0]
        keep = torch.arange(mask.shape[1], device=dev)[None, :] <= mask.sum(1, keepdim=True)
        return {"t5": seq, "t5_mask": keep.to(seq.dtype)}
    with torch.no_grad():
        seq = t5(enc.input_ids.to(dev))[0]
    clip = parts["text_encoder"]
    ids = parts["tokenizer"](prompts, padding="max_length", max_length=CLIP_MAX_LENGTH, truncation=True,
                             return_tensors="pt").input_ids
    pooled = clip(ids.to(next(clip.parameters()).device)).pooler_output
    return {"t5": seq, "pooled": pooled}


def transformer_call(parts: dict[str, Any], x: torch.Tensor, sigma: torch.Tensor, cond: dict[str, torch.Tensor],
                     img_ids: torch.Tensor, guidance: torch.Tensor | None) -> torch.Tensor:
    """One transformer forward on packed tokens `x` at `sigma` ([B] in [0, 1]); returns the velocity."""
    tr = parts["transformer"]
    dtype = next(tr.parameters()).dtype
    cond = {k: v.to(x.device) for k, v in cond.items()}  # cached conditioning may sit in CPU memory
    kw: dict[str, Any] = {"hidden_states": x.to(dtype), "timestep": sigma.to(dtype),
                          "encoder_hidden_states": cond["t5"].to(dtype), "img_ids": img_ids,
                          "txt_ids": flux_math.text_ids(cond["t5"].shape[1], device=x.device, dtype=dtype),
                          "return_dict": False}
    if parts["kind"] == "chroma":
        if "t5_mask" in cond:
            ones = torch.ones(x.shape[0], x.shape[1], device=x.device, dtype=cond["t5_mask"].dtype)
            kw["attention_mask"] = torch.cat([cond["t5_mask"], ones], 1)
    else:
        kw["pooled_projections"] = cond["pooled"].to(dtype)
        kw["guidance"] = guidance
    return tr(**kw)[0]


@torch.no_grad()
def sample_latents(parts: dict[str, Any], cond: dict[str, torch.Tensor], *, height: int, width: int, steps: int = 20,
                   guidance_scale: float = 3.5, negative: dict[str, torch.Tensor] | None = None,
                   generator: torch.Generator | None = None, noise: torch.Tensor | None = None) -> torch.Tensor:
    """Packed latents [B, N, 64] after `steps` Euler steps from seeded noise, for a `height` x `width`
    image (pixels, multiples of 16). FLUX.1-dev: `guidance_scale` is its distilled-guidance input;
    Chroma: true CFG against `negative` when `guidance_scale` > 1; schnell: no guidance."""
    batch = cond["t5"].shape[0]
    lh, lw = height // flux_math.VAE_DOWNSCALE, width // flux_math.VAE_DOWNSCALE
    dev = next(parts["transformer"].parameters()).device
    if noise is None:
        noise = torch.randn(batch, flux_math.LATENT_CHANNELS, lh, lw, generator=generator)
    x = flux_math.pack_latents(noise.to(dev, torch.float32))
    ids = flux_math.image_ids(lh, lw, device=dev)
    sigmas = flux_math.scheduler_sigmas(steps, x.shape[1], dict(parts["scheduler"].config)).to(dev)
    guidance = flux_math.guidance_input(parts["kind"], batch, guidance_scale, device=dev)
    cfg = parts["kind"] == "chroma" and guidance_scale > 1 and negative is not None

    def velocity(xt: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        v = transformer_call(parts, xt, sigma, cond, ids, guidance)
        if cfg:
            v_neg = transformer_call(parts, xt, sigma, negative, ids, guidance)
            v = v_neg + guidance_scale * (v - v_neg)
        return v

    return flux_math.euler_sample(velocity, x, sigmas)


@torch.no_grad()
def decode(parts: dict[str, Any], packed: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Images [B, 3, H, W] in [-1, 1] from packed latents."""
    vae = parts["vae"]
    z = flux_math.unpack_latents(packed, height // flux_math.VAE_DOWNSCALE, width // flux_math.VAE_DOWNSCALE)
    z = flux_math.unscale_latents(z, vae.config.scaling_factor, vae.config.shift_factor)
    return vae.decode(z.to(next(vae.parameters()).dtype)).sample.clamp(-1, 1)


@torch.no_grad()
def generate(parts: dict[str, Any], prompt: str, *, negative_prompt: str = "", seed: int = 0, steps: int = 20,
             width: int = 1024, height: int = 1024, guidance_scale: float | None = None,
             max_sequence_length: int = 512) -> Any:
    """One PIL image (sample previews). Default guidance: 3.5 for dev (its input), 5.0 CFG for Chroma."""
    if guidance_scale is None:
        guidance_scale = 5.0 if parts["kind"] == "chroma" else 3.5
    cond = encode_prompts(parts, [prompt], max_sequence_length)
    negative = encode_prompts(parts, [negative_prompt], max_sequence_length) if parts["kind"] == "chroma" else None
    return render(parts, cond, negative, height=height, width=width, steps=steps, guidance_scale=guidance_scale,
                  seed=seed)


@torch.no_grad()
def render(parts: dict[str, Any], cond: dict[str, torch.Tensor], negative: dict[str, torch.Tensor] | None, *,
           height: int, width: int, steps: int, guidance_scale: float, seed: int) -> Any:
    """One PIL image from encoded prompts: Euler from a fixed seed, then the VAE."""
    packed = sample_latents(parts, cond, height=height, width=width, steps=steps, guidance_scale=guidance_scale,
                            negative=negative, generator=torch.Generator().manual_seed(seed))
    return to_pil(decode(parts, packed, height, width)[0])
