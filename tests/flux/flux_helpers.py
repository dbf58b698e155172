"""Test helpers: fixed transformer inputs, and the tiny model written as the single files Forge and
ComfyUI users have (BFL transformer, ae / clip_l / t5xxl files)."""

from __future__ import annotations

import os
from typing import Any

import torch
from safetensors.torch import save_file

from lora_trainer.models.flux_convert import diffusers_to_bfl


def transformer_inputs(parts: dict[str, Any], seed: int = 0, tokens: int = 16, text: int = 8) -> dict[str, Any]:
    """Keyword inputs for one forward of the tiny transformer (4x4 packed tokens, 8 text tokens)."""
    g = torch.Generator().manual_seed(seed)
    cfg = parts["transformer"].config
    kw: dict[str, Any] = {
        "hidden_states": torch.randn(1, tokens, cfg.in_channels, generator=g),
        "encoder_hidden_states": torch.randn(1, text, cfg.joint_attention_dim, generator=g),
        "timestep": torch.tensor([0.7]),
        "img_ids": torch.zeros(tokens, 3), "txt_ids": torch.zeros(text, 3)}
    kw["img_ids"][:, 1] = torch.arange(tokens) // 4
    kw["img_ids"][:, 2] = torch.arange(tokens) % 4
    if parts["kind"] != "chroma":
        kw["pooled_projections"] = torch.randn(1, cfg.pooled_projection_dim, generator=g)
        if cfg.guidance_embeds:
            kw["guidance"] = torch.tensor([3.5])
    return kw


@torch.no_grad()
def transformer_out(parts: dict[str, Any], seed: int = 0) -> torch.Tensor:
    return parts["transformer"](**transformer_inputs(parts, seed)).sample


@torch.no_grad()
def output_with(net: Any, parts: dict[str, Any], kw: dict[str, Any]) -> torch.Tensor:
    """The transformer's output on `kw` with `net` attached (detached again after)."""
    net.attach()
    try:
        return parts["transformer"](**kw).sample
    finally:
        net.detach()


def write_single_files(parts: dict[str, Any], folder: str, *, prefix: str = "",
                       dtype: torch.dtype | None = None) -> dict[str, str]:
    """flux1-dev.safetensors (BFL layout), ae.safetensors (LDM VAE layout), clip_l.safetensors (HF keys,
    `text_model.` kept), t5xxl.safetensors (HF T5 encoder keys). Returns {part: path}."""
    from ldm_layout import vae_to_ldm

    os.makedirs(folder, exist_ok=True)

    def cast(t: torch.Tensor) -> torch.Tensor:
        return t.to(dtype) if dtype is not None and t.is_floating_point() else t

    bfl = diffusers_to_bfl(parts["transformer"].state_dict(), chroma=parts["kind"] == "chroma")
    paths = {"transformer": os.path.join(folder, "flux1-dev.safetensors")}
    save_file({prefix + k: cast(v).contiguous() for k, v in bfl.items()}, paths["transformer"])
    paths["vae"] = os.path.join(folder, "ae.safetensors")
    save_file({k: v.contiguous() for k, v in vae_to_ldm(parts["vae"], prefix="").items()}, paths["vae"])
    t5 = {k: v for k, v in parts["text_encoder_2"].state_dict().items() if k != "encoder.embed_tokens.weight"}
    paths["t5"] = os.path.join(folder, "t5xxl_fp16.safetensors")
    save_file({k: v.contiguous() for k, v in t5.items()}, paths["t5"])
    if parts["text_encoder"] is not None:
        clip = {(k if k.startswith("text_model.") else "text_model." + k): v
                for k, v in parts["text_encoder"].state_dict().items() if not k.endswith("position_ids")}
        paths["clip_l"] = os.path.join(folder, "clip_l.safetensors")
        save_file({k: v.contiguous() for k, v in clip.items()}, paths["clip_l"])
    return paths


def write_zqx_dataset(root: str, images: int = 4) -> str:
    """The synthetic target concept under the trigger "zqx" (kohya folder layout, 1 repeat)."""
    from lora_trainer import synthetic

    synthetic.write_dataset(root, synthetic.concept_set(synthetic.TARGET_CONCEPT, images, seed=0), repeats=1,
                            name="zqx")
    return root


def tiny_run(data_dir: str, out: str, kind: str = "flux", **extra: Any) -> dict[str, Any]:
    """A 2-step rank-4 run on the built-in tiny FLUX.1 / Chroma at 64 px (the tests override what they test)."""
    return {"base_model": f"builtin:tiny-{kind}", "train_data_dir": data_dir, "output_dir": out, "resolution": 64,
            "enable_bucket": False, "min_bucket_reso": 64, "max_bucket_reso": 64, "lora_rank": 4, "lora_alpha": 2,
            "batch_size": 2, "max_train_steps": 2, "learning_rate": 1e-2, "save_precision": "fp32", "seed": 3,
            "train_text_encoder": False, **extra}
