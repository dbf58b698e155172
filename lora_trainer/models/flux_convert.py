"""FLUX.1 / Chroma transformer weights: BFL single-file layout <-> diffusers layout, any width.

Why our own: diffusers' single-file converters hard-code the real model's width (inner_dim 3072), so
they cannot read a tiny model, and they only go one way; tests need the inverse to write a
BFL-layout file (what Forge and ComfyUI users have) from a diffusers model. The module table is
`lora.naming_flux` (shared with the LoRA writer); the facts are those of diffusers'
`convert_flux_transformer_checkpoint_to_diffusers` / `convert_chroma_transformer_checkpoint_to_diffusers`:
fused q/k/v (and the single-block MLP input) are row blocks, RMSNorm `.scale` is diffusers `.weight`,
the final adaLN modulation stores (shift, scale) where diffusers stores (scale, shift).
"""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Any

import torch

from lora_trainer.lora import naming_flux
from lora_trainer.lora.flux_format import MLP_RATIO

BFL_PREFIXES = ("model.diffusion_model.", "diffusion_model.")
_NORM_OUT = "norm_out.linear"
_CHROMA_GUIDANCE = re.compile(r"^distilled_guidance_layer\.(layers|norms)\.(\d+)(?:\.(in|out)_layer)?$")


def _swap_halves(t: torch.Tensor) -> torch.Tensor:
    a, b = t.chunk(2, dim=0)
    return torch.cat([b, a], dim=0)


def _block_norm(path: str, bfl_to_diffusers: bool) -> str | None:
    """Map an RMSNorm module path between layouts (None when `path` is no block norm)."""
    m = re.match(r"^(transformer_blocks|single_transformer_blocks|double_blocks|single_blocks)\.(\d+)\.(.+)$", path)
    if not m:
        return None
    double = m[1] in ("transformer_blocks", "double_blocks")
    table = naming_flux.DOUBLE_NORMS if double else naming_flux.SINGLE_NORMS
    if bfl_to_diffusers:
        table = {v: k for k, v in table.items()}
        root = "transformer_blocks" if double else "single_transformer_blocks"
    else:
        root = "double_blocks" if double else "single_blocks"
    return f"{root}.{m[2]}.{table[m[3]]}" if m[3] in table else None


def diffusers_to_bfl(sd: dict[str, torch.Tensor], *, chroma: bool) -> dict[str, torch.Tensor]:
    """A diffusers FluxTransformer2DModel / ChromaTransformer2DModel state dict in the BFL layout
    (no `model.diffusion_model.` prefix). ValueError for a key with no BFL place."""
    out: dict[str, torch.Tensor] = {}
    fused: dict[str, dict[int, torch.Tensor]] = defaultdict(dict)
    for key, t in sd.items():
        path, _, leaf = key.rpartition(".")
        if chroma and (m := re.match(r"^distilled_guidance_layer\.norms\.(\d+)$", path)):
            out[f"distilled_guidance_layer.norms.{m[1]}.scale"] = t
            continue
        norm = _block_norm(path, bfl_to_diffusers=False)
        if norm is not None:
            out[f"{norm}.scale"] = t
            continue
        slot = naming_flux.bfl_slot(path, chroma)
        if slot.parts > 1:
            fused[f"{slot.path}.{leaf}"][slot.part] = t
        else:
            out[f"{slot.path}.{leaf}"] = _swap_halves(t) if path == _NORM_OUT else t
    for key, parts in fused.items():
        out[key] = torch.cat([parts[i] for i in sorted(parts)], 0)
    return out


def strip_bfl_prefix(sd: dict[str, Any]) -> dict[str, Any]:
    """Transformer keys of a single file without `model.diffusion_model.` (all-in-one files) prefixes."""
    for p in BFL_PREFIXES:
        if any(k.startswith(p) for k in sd):
            return {k[len(p):]: v for k, v in sd.items() if k.startswith(p)}
    return sd


def bfl_to_diffusers(sd: dict[str, torch.Tensor], *, chroma: bool) -> dict[str, torch.Tensor]:
    """Inverse of `diffusers_to_bfl` (accepts the `model.diffusion_model.` prefix). The width is read
    from `img_in.weight`. ValueError for a key with no diffusers place."""
    sd = strip_bfl_prefix(sd)
    hidden = int(sd["img_in.weight"].shape[0])
    top = {v: k for k, v in (naming_flux.TOP_CHROMA if chroma else naming_flux.TOP_FLUX).items()}
    out: dict[str, torch.Tensor] = {}
    for key, t in sd.items():
        path, _, leaf = key.rpartition(".")
        if path in top:
            new = top[path]
            out[f"{new}.{leaf}"] = _swap_halves(t) if new == _NORM_OUT else t
            continue
        if chroma and (m := _CHROMA_GUIDANCE.match(path)):
            if m[1] == "norms":
                out[f"distilled_guidance_layer.norms.{m[2]}.weight"] = t
            else:
                out[f"distilled_guidance_layer.layers.{m[2]}.linear_{1 if m[3] == 'in' else 2}.{leaf}"] = t
            continue
        norm = _block_norm(path, bfl_to_diffusers=True)
        if norm is not None and leaf == "scale":
            out[f"{norm}.weight"] = t
            continue
        try:
            paths = naming_flux.slot_paths(path)
        except ValueError:
            raise ValueError(f"{key}: not a {'Chroma' if chroma else 'FLUX.1'} transformer weight") from None
        if len(paths) == 1:
            out[f"{paths[0]}.{leaf}"] = t
            continue
        dims = [hidden] * 3 + ([MLP_RATIO * hidden] if len(paths) == 4 else [])
        for p, piece in zip(paths, torch.split(t, dims, 0), strict=True):
            out[f"{p}.{leaf}"] = piece.contiguous()
    return out
