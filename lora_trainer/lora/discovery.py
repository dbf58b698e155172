"""Find LoRA targets by walking `named_modules()`, matching class names, not importing diffusers.

Why class names: the core must not import diffusers/transformers/ldm, and the same rule (kohya's:
every Linear / Conv2d inside a transformer block; with LoCon also inside resnets, down- and
upsamplers) then works on diffusers modules, the WebUI's LDM/SGM modules and Forge's copies.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from torch import nn

from lora_trainer.lora import naming
from lora_trainer.lora.target import LoraTarget

# diffusers names, then LDM/SGM names of the same blocks
ATTENTION_BLOCKS = frozenset({"Transformer2DModel", "SpatialTransformer"})
CONV_BLOCKS = frozenset({"ResnetBlock2D", "Downsample2D", "Upsample2D", "ResBlock", "Downsample", "Upsample"})

_HF_TE_LINEAR = re.compile(r"(?:^|\.)encoder\.layers\.\d+\.(?:self_attn\.(?:q|k|v|out)_proj|mlp\.fc[12])$")
_OC_LINEAR = re.compile(r"(?:^|\.)resblocks\.\d+\.(?:attn\.out_proj|mlp\.c_fc|mlp\.c_proj)$")
_OC_ATTN = re.compile(r"(?:^|\.)resblocks\.\d+\.attn$")


def layer_kind(mod: nn.Module) -> str | None:
    """"linear", "conv" or "conv1x1" for a module a LoRA can wrap, else None."""
    # Forge builds its layers from its own `Linear` classes (plain modules, not nn.Linear subclasses)
    if isinstance(mod, nn.Linear) or type(mod).__name__ == "Linear":
        return "linear"
    if isinstance(mod, nn.Conv2d):
        return "conv1x1" if tuple(mod.kernel_size) == (1, 1) else "conv"
    return None


def _block_targets(root: nn.Module, name_of: Callable[[str], str], conv: bool) -> list[LoraTarget]:
    """Linear/Conv2d children of attention blocks (and, with `conv`, of resnet/sampler blocks)."""
    blocks = ATTENTION_BLOCKS | CONV_BLOCKS if conv else ATTENTION_BLOCKS
    out: list[LoraTarget] = []
    seen: set[int] = set()
    for path, mod in root.named_modules():
        if type(mod).__name__ not in blocks:
            continue
        for child_path, child in mod.named_modules():
            kind = layer_kind(child)
            if kind is None or id(child) in seen or not child_path:
                continue
            seen.add(id(child))
            full = f"{path}.{child_path}" if path else child_path
            out.append(LoraTarget(name_of(full), child, kind, "unet"))
    return out


def unet_targets(unet: nn.Module, arch: str, conv: bool = False) -> list[LoraTarget]:
    """Targets of a diffusers `UNet2DConditionModel`, named for `arch`'s files (SDXL: LDM names)."""
    return _block_targets(unet, lambda p: naming.unet_kohya_name(p, arch), conv)


def ldm_unet_targets(unet: nn.Module, arch: str, conv: bool = False) -> list[LoraTarget]:
    """Targets of the WebUI's LDM/SGM `UNetModel` (`diffusion_model`), named as kohya files name them."""
    return _block_targets(unet, lambda p: naming.ldm_unet_kohya_name(p, arch), conv)


def text_encoder_prefixes(n: int) -> list[str]:
    """Kohya prefixes for `n` text encoders (`lora_te` for SD1/SD2, `lora_te1`/`lora_te2` for SDXL)."""
    return ["lora_te"] if n == 1 else [f"lora_te{i + 1}" for i in range(n)]


def text_encoder_targets(te: nn.Module, prefix: str = "lora_te") -> list[LoraTarget]:
    """q/k/v/out projections and mlp fc1/fc2 of an HF CLIP text encoder (transformers 4 or 5)."""
    return [LoraTarget(naming.hf_clip_kohya_name(p, prefix), m, "linear", "text_encoder")
            for p, m in te.named_modules() if isinstance(m, nn.Linear) and _HF_TE_LINEAR.search(p)]


def open_clip_targets(te: nn.Module, prefix: str = "lora_te2") -> list[LoraTarget]:
    """open_clip text transformer (A1111's SD2 / SDXL-G encoder): fused q/k/v, out_proj, c_fc, c_proj."""
    out: list[LoraTarget] = []
    for p, m in te.named_modules():
        if isinstance(m, nn.MultiheadAttention) and _OC_ATTN.search(p):
            names = naming.open_clip_qkv_names(p, prefix)
            out.append(LoraTarget(names[0].rsplit("_", 2)[0] + "_qkv", m, "fused_qkv", "text_encoder", names))
        elif isinstance(m, nn.Linear) and _OC_LINEAR.search(p):
            out.append(LoraTarget(naming.open_clip_kohya_name(p, prefix), m, "linear", "text_encoder"))
    return out
