"""Write diffusers parts back into the original LDM/SGM single-file key layout (test helper).

Why here: the loader reads original-layout files with diffusers' converters; writing them with an
independent mapping (the lora area's UNet path map, plus the VAE and CLIP layouts below) and
loading them back checks both directions against each other.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from lora_trainer.lora.naming import (
    SD_UP_BLOCKS_WITH_ATTENTION,
    SDXL_UP_BLOCKS_WITH_ATTENTION,
    diffusers_to_ldm_unet_path,
)


def unet_to_ldm(unet: torch.nn.Module, arch: str, prefix: str = "model.diffusion_model.") -> dict[str, Any]:
    ups = SDXL_UP_BLOCKS_WITH_ATTENTION if arch == "sdxl" else SD_UP_BLOCKS_WITH_ATTENTION
    out = {}
    for key, v in unet.state_dict().items():
        module, leaf = key.rsplit(".", 1)
        out[prefix + diffusers_to_ldm_unet_path(module, ups) + "." + leaf] = v.clone()
    return out


_VAE_RESNET = {"conv_shortcut": "nin_shortcut"}
_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def vae_to_ldm(vae: torch.nn.Module, prefix: str = "first_stage_model.") -> dict[str, Any]:
    n_up = len(vae.config.block_out_channels)
    out = {}
    for key, v in vae.state_dict().items():
        k = key
        k = re.sub(r"^encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.", r"encoder.down.\1.block.\2.", k)
        k = re.sub(r"^encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample.", k)
        m = re.match(r"^decoder\.up_blocks\.(\d+)\.(resnets\.(\d+)|upsamplers\.0)\.(.*)$", k)
        if m:
            i = n_up - 1 - int(m[1])
            k = f"decoder.up.{i}.block.{m[3]}.{m[4]}" if m[3] is not None else f"decoder.up.{i}.upsample.{m[4]}"
        k = re.sub(r"\.mid_block\.resnets\.(\d+)\.", lambda mm: f".mid.block_{int(mm[1]) + 1}.", k)
        attn = re.match(r"^(encoder|decoder)\.mid_block\.attentions\.0\.(.*)\.(weight|bias)$", k)
        if attn:
            k = f"{attn[1]}.mid.attn_1.{_VAE_ATTN[attn[2]]}.{attn[3]}"
            if attn[3] == "weight" and attn[2] != "group_norm":
                v = v.reshape(*v.shape, 1, 1)
        k = k.replace("conv_norm_out", "norm_out")
        for a, b in _VAE_RESNET.items():
            k = k.replace(a, b)
        out[prefix + k] = v.clone()
    return out


def clip_to_ldm(te: torch.nn.Module, prefix: str) -> dict[str, Any]:
    """HF CLIP text model in its HF layout under `prefix` (SD1 `cond_stage_model.transformer.`,
    SDXL `conditioner.embedders.0.transformer.`); transformers 5 drops `text_model.`, files keep it."""
    out = {}
    for key, v in te.state_dict().items():
        if key.endswith("position_ids"):
            continue
        k = key if key.startswith("text_model.") else "text_model." + key
        out[prefix + k] = v.clone()
    return out


def open_clip_to_ldm(te: torch.nn.Module, prefix: str) -> dict[str, Any]:
    """HF CLIP text model -> open_clip layout (fused q/k/v in in_proj, c_fc/c_proj, ln_final)."""
    sd = {(k[len("text_model."):] if k.startswith("text_model.") else k): v for k, v in te.state_dict().items()}
    out: dict[str, Any] = {prefix + "token_embedding.weight": sd["embeddings.token_embedding.weight"],
                           prefix + "positional_embedding": sd["embeddings.position_embedding.weight"],
                           prefix + "ln_final.weight": sd["final_layer_norm.weight"],
                           prefix + "ln_final.bias": sd["final_layer_norm.bias"]}
    if "text_projection.weight" in sd:
        out[prefix + "text_projection"] = sd["text_projection.weight"].T.contiguous()
    n = te.config.num_hidden_layers
    for i in range(n):
        h, r = f"encoder.layers.{i}.", f"{prefix}transformer.resblocks.{i}."
        for part in ("weight", "bias"):
            out[r + f"attn.in_proj_{part}"] = torch.cat([sd[h + f"self_attn.{x}_proj.{part}"] for x in "qkv"])
            out[r + f"attn.out_proj.{part}"] = sd[h + f"self_attn.out_proj.{part}"]
            out[r + f"ln_1.{part}"] = sd[h + f"layer_norm1.{part}"]
            out[r + f"ln_2.{part}"] = sd[h + f"layer_norm2.{part}"]
            out[r + f"mlp.c_fc.{part}"] = sd[h + f"mlp.fc1.{part}"]
            out[r + f"mlp.c_proj.{part}"] = sd[h + f"mlp.fc2.{part}"]
    return {k: v.clone() for k, v in out.items()}


def adapter_to_ldm(adapter: Any) -> dict[str, Any]:
    """Whole model in the original single-file layout of its arch."""
    sd = {**unet_to_ldm(adapter.unet, adapter.arch), **vae_to_ldm(adapter.vae)}
    if adapter.arch == "sd1":
        sd.update(clip_to_ldm(adapter.text_encoders[0], "cond_stage_model.transformer."))
    elif adapter.arch == "sd2":
        sd.update(open_clip_to_ldm(adapter.text_encoders[0], "cond_stage_model.model."))
    else:
        sd.update(clip_to_ldm(adapter.text_encoders[0], "conditioner.embedders.0.transformer."))
        sd.update(open_clip_to_ldm(adapter.text_encoders[1], "conditioner.embedders.1.model."))
    return {k: v.contiguous() for k, v in sd.items()}
