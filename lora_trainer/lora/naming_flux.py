"""FLUX.1 / Chroma module names: diffusers transformer paths <-> BFL (Forge, ComfyUI, kohya) paths.

Why this exists: Forge, ComfyUI and kohya name Flux LoRA keys after Black Forest Labs' module layout
(`double_blocks.0.img_attn.qkv`, `single_blocks.0.linear1`), where q/k/v (and, in single blocks, the
MLP input) are one fused Linear, while diffusers keeps them separate (`transformer_blocks.0.attn.to_q`,
`single_transformer_blocks.0.proj_mlp`). One table serves the weight converter (single files) and the
LoRA writer (fused keys). Facts from diffusers' `convert_flux_transformer_checkpoint_to_diffusers` /
`convert_chroma_transformer_checkpoint_to_diffusers`, Forge `backend/nn/flux.py` / `chroma.py` and
kohya `networks/lora_flux.py`.

A path maps to `BflSlot(path, part, parts)`: `part` of `parts` row blocks of the BFL weight, in
order q, k, v (, mlp). Modulation (`*_mod.lin`, `modulation.lin`) exists only in FLUX.1; Chroma
replaces it with one `distilled_guidance_layer`.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from lora_trainer.lora.naming import kohya_name

UNET_PREFIX = "lora_unet"
CLIP_PREFIX = "lora_te1"          # CLIP-L of FLUX.1 (kohya, Forge, ComfyUI, diffusers read it)
INTERNAL_PREFIX = "lora_transformer"  # run-time names of diffusers modules (OneTrainer's file style)


class BflSlot(NamedTuple):
    path: str   # BFL module path, e.g. "double_blocks.0.img_attn.qkv"
    part: int   # row block inside the BFL weight (0 unless fused)
    parts: int  # number of row blocks (1, 3 for qkv, 4 for single-block linear1)


# inside double block i (diffusers child -> BFL child, part, parts)
_DOUBLE = {
    "norm1.linear": ("img_mod.lin", 0, 1),
    "norm1_context.linear": ("txt_mod.lin", 0, 1),
    "attn.to_q": ("img_attn.qkv", 0, 3),
    "attn.to_k": ("img_attn.qkv", 1, 3),
    "attn.to_v": ("img_attn.qkv", 2, 3),
    "attn.add_q_proj": ("txt_attn.qkv", 0, 3),
    "attn.add_k_proj": ("txt_attn.qkv", 1, 3),
    "attn.add_v_proj": ("txt_attn.qkv", 2, 3),
    "attn.to_out.0": ("img_attn.proj", 0, 1),
    "attn.to_add_out": ("txt_attn.proj", 0, 1),
    "ff.net.0.proj": ("img_mlp.0", 0, 1),
    "ff.net.2": ("img_mlp.2", 0, 1),
    "ff_context.net.0.proj": ("txt_mlp.0", 0, 1),
    "ff_context.net.2": ("txt_mlp.2", 0, 1),
}
_SINGLE = {
    "norm.linear": ("modulation.lin", 0, 1),
    "attn.to_q": ("linear1", 0, 4),
    "attn.to_k": ("linear1", 1, 4),
    "attn.to_v": ("linear1", 2, 4),
    "proj_mlp": ("linear1", 3, 4),
    "proj_out": ("linear2", 0, 1),
}
# RMSNorm scales (weights only, no LoRA): diffusers `.weight` <-> BFL `.scale`
DOUBLE_NORMS = {
    "attn.norm_q": "img_attn.norm.query_norm", "attn.norm_k": "img_attn.norm.key_norm",
    "attn.norm_added_q": "txt_attn.norm.query_norm", "attn.norm_added_k": "txt_attn.norm.key_norm",
}
SINGLE_NORMS = {"attn.norm_q": "norm.query_norm", "attn.norm_k": "norm.key_norm"}
# outside the blocks (FLUX.1); `norm_out.linear` halves are swapped (scale, shift vs shift, scale)
TOP_FLUX = {
    "time_text_embed.timestep_embedder.linear_1": "time_in.in_layer",
    "time_text_embed.timestep_embedder.linear_2": "time_in.out_layer",
    "time_text_embed.text_embedder.linear_1": "vector_in.in_layer",
    "time_text_embed.text_embedder.linear_2": "vector_in.out_layer",
    "time_text_embed.guidance_embedder.linear_1": "guidance_in.in_layer",
    "time_text_embed.guidance_embedder.linear_2": "guidance_in.out_layer",
    "context_embedder": "txt_in",
    "x_embedder": "img_in",
    "proj_out": "final_layer.linear",
    "norm_out.linear": "final_layer.adaLN_modulation.1",
}
TOP_CHROMA = {
    "context_embedder": "txt_in",
    "x_embedder": "img_in",
    "proj_out": "final_layer.linear",
    "distilled_guidance_layer.in_proj": "distilled_guidance_layer.in_proj",
    "distilled_guidance_layer.out_proj": "distilled_guidance_layer.out_proj",
}
MODULATION_BFL = ("img_mod.lin", "txt_mod.lin", "modulation.lin")
BFL_BLOCK_CHILDREN = tuple(dict.fromkeys(bfl for bfl, _, _ in [*_DOUBLE.values(), *_SINGLE.values()]))

_D = re.compile(r"^transformer_blocks\.(\d+)\.(.+)$")
_S = re.compile(r"^single_transformer_blocks\.(\d+)\.(.+)$")
_CHROMA_LAYER = re.compile(r"^distilled_guidance_layer\.layers\.(\d+)\.linear_([12])$")


def bfl_slot(path: str, chroma: bool = False) -> BflSlot:
    """BFL module of a diffusers Flux/Chroma transformer Linear; ValueError for any other path
    (and for modulation paths when `chroma`: Chroma has none)."""
    if m := _D.match(path):
        hit = _DOUBLE.get(m[2])
        if hit is not None and not (chroma and hit[0] in MODULATION_BFL):
            return BflSlot(f"double_blocks.{m[1]}.{hit[0]}", hit[1], hit[2])
    elif m := _S.match(path):
        hit = _SINGLE.get(m[2])
        if hit is not None and not (chroma and hit[0] in MODULATION_BFL):
            return BflSlot(f"single_blocks.{m[1]}.{hit[0]}", hit[1], hit[2])
    elif chroma and (m := _CHROMA_LAYER.match(path)):
        return BflSlot(f"distilled_guidance_layer.layers.{m[1]}.{'in' if m[2] == '1' else 'out'}_layer", 0, 1)
    else:
        top = (TOP_CHROMA if chroma else TOP_FLUX).get(path)
        if top is not None:
            return BflSlot(top, 0, 1)
    raise ValueError(f"not a {'Chroma' if chroma else 'FLUX.1'} transformer Linear path: {path!r}")


def bfl_kohya_name(bfl_path: str) -> str:
    """`double_blocks.0.img_attn.qkv` -> `lora_unet_double_blocks_0_img_attn_qkv` (kohya / Forge)."""
    return kohya_name(UNET_PREFIX, bfl_path)


def internal_name(diffusers_path: str) -> str:
    """Run-time LoRA name of a diffusers transformer module (unique per module; never fused)."""
    return kohya_name(INTERNAL_PREFIX, diffusers_path)


def block_index(path: str) -> tuple[str, int] | None:
    """("double" | "single", i) for a path inside a block (diffusers or BFL naming), else None."""
    for rx, kind in ((_D, "double"), (_S, "single")):
        if m := rx.match(path):
            return kind, int(m[1])
    m = re.match(r"^(double|single)_blocks\.(\d+)\.", path)
    return (m[1], int(m[2])) if m else None


def parse_block_selection(spec: str | None, count: int, what: str = "blocks") -> set[int]:
    """Which of `count` blocks to train: None/""/"all" -> all, "none" -> none, "0-3,7" -> {0,1,2,3,7}.
    ValueError (naming `what`) for an index outside 0..count-1 or bad syntax."""
    text = (spec or "all").strip().lower()
    if text == "all":
        return set(range(count))
    if text == "none":
        return set()
    out: set[int] = set()
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        try:
            lo, _, hi = item.partition("-")
            a, b = int(lo), int(hi) if hi else int(lo)
        except ValueError:
            raise ValueError(f"{what}: {item!r} is not an index or a range like 0-5") from None
        if not (0 <= a <= b < count):
            raise ValueError(f"{what}: {item!r} is outside 0-{count - 1} (the model has {count})")
        out.update(range(a, b + 1))
    return out


_U_DOUBLE = {k.replace(".", "_"): k for k in _DOUBLE}
_U_SINGLE = {k.replace(".", "_"): k for k in _SINGLE}
_K_D = re.compile(r"^transformer_blocks_(\d+)_(.+)$")
_K_S = re.compile(r"^single_transformer_blocks_(\d+)_(.+)$")


def internal_to_path(name: str) -> str:
    """Inverse of `internal_name` for block Linears (`lora_transformer_transformer_blocks_0_attn_to_q`
    -> `transformer_blocks.0.attn.to_q`); ValueError for anything else."""
    rest = name.removeprefix(INTERNAL_PREFIX + "_")
    if rest != name:
        if (m := _K_D.match(rest)) and m[2] in _U_DOUBLE:
            return f"transformer_blocks.{m[1]}.{_U_DOUBLE[m[2]]}"
        if (m := _K_S.match(rest)) and m[2] in _U_SINGLE:
            return f"single_transformer_blocks.{m[1]}.{_U_SINGLE[m[2]]}"
    raise ValueError(f"not a FLUX.1/Chroma block LoRA name: {name!r}")


def slot_paths(bfl_path: str) -> list[str]:
    """The diffusers paths whose row blocks make up BFL module `bfl_path`, in row order."""
    m = re.match(r"^(double|single)_blocks\.(\d+)\.(.+)$", bfl_path)
    if not m:
        raise ValueError(f"not a BFL block module path: {bfl_path!r}")
    table, root = (_DOUBLE, "transformer_blocks") if m[1] == "double" else (_SINGLE, "single_transformer_blocks")
    hits = sorted((part, child) for child, (bfl, part, _) in table.items() if bfl == m[3])
    if not hits:
        raise ValueError(f"not a BFL block module path: {bfl_path!r}")
    return [f"{root}.{m[2]}.{child}" for _, child in hits]
