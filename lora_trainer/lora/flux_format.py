"""FLUX.1 / Chroma LoRA files in the kohya layout: separate q/k/v LoRAs written as one fused module.

Why: the run trains one LoRA per diffusers Linear (`to_q`, `to_k`, `to_v`, `proj_mlp` ...), but every
consumer of kohya-format Flux files (Forge, ComfyUI, kohya, diffusers' kohya converter) expects BFL's
fused projections (`img_attn.qkv`, single-block `linear1`). A set of per-part LoRAs is exactly one
LoRA on the fused weight: downs stacked ([sum r_i, in]), ups block-diagonal ([sum out_i, sum r_i]),
rank sum r_i, and alpha chosen so alpha / rank keeps each part's scale (alpha x number of parts when
the parts share rank and alpha; up blocks are rescaled otherwise). A part that was not trained gets
zero rows. Reading a file back splits a fused module into parts, exactly: block-diagonal ups give
each part its own rank-r pair, any other fused LoRA gives each part the shared down and its rows of up.
"""

from __future__ import annotations

import re
from collections import defaultdict

import torch

from lora_trainer.lora import naming_flux
from lora_trainer.lora.network import split_kohya_key

MLP_RATIO = 4  # FLUX.1 and Chroma: single-block MLP width = 4 x hidden

_LORA_SUFFIXES = (".lora_down.weight", ".lora_up.weight", ".alpha")
_BFL_CHILD = {bfl.replace(".", "_"): bfl for bfl in naming_flux.BFL_BLOCK_CHILDREN}
_K_BLOCK = re.compile(r"^lora_unet_(double|single)_blocks_(\d+)_(.+)$")


def _part_dims(bfl_path: str, hidden: int) -> list[int]:
    """Row sizes of a fused BFL weight: q, k, v (, MLP input) for a model of width `hidden`."""
    return [hidden] * 3 + ([MLP_RATIO * hidden] if bfl_path.endswith("linear1") else [])


def _alpha(sd: dict[str, torch.Tensor], name: str, rank: int) -> float:
    a = sd.get(name + ".alpha")
    return float(a.item()) if a is not None else float(rank)


def fuse_flux_state_dict(sd: dict[str, torch.Tensor], *, chroma: bool) -> dict[str, torch.Tensor]:
    """Run-time state dict (`lora_transformer_...` per diffusers module, `lora_te1_...`; names of a run
    on a BFL-layout model pass through) -> file keys (`lora_unet_double_blocks_0_img_attn_qkv...`).
    ValueError for a key with no place in the file (e.g. a modulation LoRA for Chroma, which has none)."""
    out: dict[str, torch.Tensor] = {}
    groups: dict[str, dict[int, str]] = defaultdict(dict)
    for key in sd:
        name, suf = split_kohya_key(key)
        if not suf:
            raise ValueError(f"not a kohya LoRA key: {key!r}")
        if name.startswith(naming_flux.CLIP_PREFIX + "_"):
            if chroma:
                raise ValueError(f"{key}: Chroma has no CLIP text encoder; train the transformer only")
            out[key] = sd[key]
            continue
        bfl = bfl_path_of_key_name(name)
        if bfl is not None:  # trained on a BFL-layout model (Forge's): already the file's name
            if chroma and bfl.endswith(naming_flux.MODULATION_BFL):
                raise ValueError(f"{key}: not a Chroma module (Chroma has no modulation layers)")
            out[key] = sd[key]
            continue
        slot = naming_flux.bfl_slot(naming_flux.internal_to_path(name), chroma)
        if slot.parts == 1:
            out[naming_flux.bfl_kohya_name(slot.path) + suf] = sd[key]
        elif suf not in _LORA_SUFFIXES:
            raise ValueError(f"{key}: a {suf} module on one part of {naming_flux.bfl_kohya_name(slot.path)} "
                             "cannot be written exactly; LoHa / LoKr / DoRA train the fused module (fused targets)")
        else:
            groups[slot.path][slot.part] = name
    for bfl_path, parts in groups.items():
        out.update(_fuse(sd, bfl_path, parts))
    return out


def _fuse(sd: dict[str, torch.Tensor], bfl_path: str, parts: dict[int, str]) -> dict[str, torch.Tensor]:
    first = parts[min(parts)]
    down0 = sd[first + ".lora_down.weight"]
    dims = _part_dims(bfl_path, int(down0.shape[1]))
    dtype = down0.dtype
    ranks = {i: int(sd[n + ".lora_down.weight"].shape[0]) for i, n in parts.items()}
    scales = {i: _alpha(sd, n, ranks[i]) / ranks[i] for i, n in parts.items()}
    total = sum(ranks.values())
    scale = scales[min(parts)]
    up = torch.zeros(sum(dims), total, dtype=torch.float64)
    downs = []
    row, col = 0, 0
    for i, size in enumerate(dims):
        if i in parts:
            u = sd[parts[i] + ".lora_up.weight"]
            if u.shape[0] != size:
                raise ValueError(f"{parts[i]}: {u.shape[0]} output rows, expected {size} for {bfl_path}")
            block = u.to(torch.float64)
            if scales[i] != scale:
                block = block * (scales[i] / scale)
            up[row:row + size, col:col + ranks[i]] = block
            downs.append(sd[parts[i] + ".lora_down.weight"])
            col += ranks[i]
        row += size
    name = naming_flux.bfl_kohya_name(bfl_path)
    alpha_t = sd.get(first + ".alpha")
    return {f"{name}.lora_down.weight": torch.cat(downs, 0).to(dtype),
            f"{name}.lora_up.weight": up.to(dtype),
            f"{name}.alpha": torch.tensor(scale * total, dtype=alpha_t.dtype if alpha_t is not None else dtype)}


def bfl_path_of_key_name(name: str) -> str | None:
    """`lora_unet_double_blocks_0_img_attn_qkv` -> `double_blocks.0.img_attn.qkv` (block modules only)."""
    m = _K_BLOCK.match(name)
    if not m or m[3] not in _BFL_CHILD:
        return None
    return f"{m[1]}_blocks.{m[2]}.{_BFL_CHILD[m[3]]}"


def split_flux_state_dict(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """File keys -> run-time names (inverse of `fuse_flux_state_dict`), so a run can continue from a
    file. Keys outside the blocks (other trainers write e.g. `lora_unet_img_in`) are kept as they are
    and show up as unexpected when loaded."""
    out: dict[str, torch.Tensor] = {}
    keys_of: dict[str, list[str]] = defaultdict(list)
    for k in sd:
        keys_of[split_kohya_key(k)[0] or k].append(k)
    for name, keys in keys_of.items():
        bfl = bfl_path_of_key_name(name)
        if bfl is None:
            out.update({k: sd[k] for k in keys})
            continue
        paths = naming_flux.slot_paths(bfl)
        if len(paths) > 1 and any(split_kohya_key(k)[1] not in _LORA_SUFFIXES for k in keys):
            out.update({k: sd[k] for k in keys})  # LoHa / LoKr / DoRA: the run trains the fused module itself
            continue
        if len(paths) == 1:
            new = naming_flux.internal_name(paths[0])
            out.update({new + k[len(name):]: sd[k] for k in keys})
            continue
        out.update(_split(sd, name, bfl, paths))
    return out


def _split(sd: dict[str, torch.Tensor], name: str, bfl: str, paths: list[str]) -> dict[str, torch.Tensor]:
    down, up = sd[name + ".lora_down.weight"], sd[name + ".lora_up.weight"]
    total = int(down.shape[0])
    alpha = _alpha(sd, name, total)
    alpha_dtype = sd[name + ".alpha"].dtype if name + ".alpha" in sd else down.dtype
    dims = _part_dims(bfl, int(down.shape[1]))
    if sum(dims) != up.shape[0]:
        raise ValueError(f"{name}: {up.shape[0]} output rows, expected {sum(dims)}")
    n = len(paths)
    diagonal = total % n == 0
    r = total // n
    row = 0
    if diagonal:
        for i, size in enumerate(dims):
            off = torch.cat([up[row:row + size, :i * r], up[row:row + size, (i + 1) * r:]], 1)
            diagonal = diagonal and not bool(off.any())
            row += size
    out: dict[str, torch.Tensor] = {}
    row = 0
    for i, (path, size) in enumerate(zip(paths, dims, strict=True)):
        new = naming_flux.internal_name(path)
        if diagonal:
            out[new + ".lora_down.weight"] = down[i * r:(i + 1) * r].clone()
            out[new + ".lora_up.weight"] = up[row:row + size, i * r:(i + 1) * r].clone()
            out[new + ".alpha"] = torch.tensor(alpha / n, dtype=alpha_dtype)
        else:
            out[new + ".lora_down.weight"] = down.clone()
            out[new + ".lora_up.weight"] = up[row:row + size].clone()
            out[new + ".alpha"] = torch.tensor(alpha, dtype=alpha_dtype)
        row += size
    return out


_SD_UNET = re.compile(r"^lora_unet_(down_blocks|up_blocks|mid_block|input_blocks|output_blocks|middle_block)_")
_FLUX_UNET = re.compile(r"^lora_(unet_(double|single)_blocks_|transformer_)")


def lora_family(keys: list[str] | set[str]) -> str | None:
    """"flux" (FLUX.1 / Chroma), "sd" (SD1/SD2/SDXL UNet) or None (text encoder only / unknown), by key names."""
    names = [split_kohya_key(k)[0] or k for k in keys]
    if any(_FLUX_UNET.match(n) or n.startswith("transformer.") for n in names):
        return "flux"
    if any(_SD_UNET.match(n) for n in names):
        return "sd"
    return None


def check_lora_family(keys: list[str] | set[str], model_family: str, where: str) -> None:
    """One-line LoRAWeightsError when a LoRA made for the other family is given ("flux" | "sd")."""
    from lora_trainer.lora.network import LoRAWeightsError

    found = lora_family(keys)
    if found is not None and found != model_family:
        made, have = (("FLUX.1/Chroma", "Stable Diffusion") if found == "flux" else
                      ("Stable Diffusion", "FLUX.1/Chroma"))
        raise LoRAWeightsError(f"{where} is a {made} LoRA but the base model is {have}; use a LoRA made for "
                               f"{have} or change base_model")


def peft_flux_state_dict(sd: dict[str, torch.Tensor], *, chroma: bool) -> dict[str, torch.Tensor]:
    """Run-time state dict -> the diffusers/PEFT layout (`transformer.<module>.lora_A.weight` / `lora_B`,
    `text_encoder.text_model.<module>...` for CLIP-L): one pair per diffusers module, nothing fused,
    alpha / rank folded into `lora_A` (what diffusers does when it converts kohya files), so readers
    that take no alpha (diffusers) and readers that default to scale 1 without one (Forge) agree.
    Forge maps this layout only for FLUX.1, not for Chroma: Chroma files use the kohya layout."""
    if chroma:
        raise ValueError("the diffusers/PEFT layout is not read by Forge for Chroma; save Chroma LoRAs in the "
                         "kohya layout")
    out: dict[str, torch.Tensor] = {}
    names = dict.fromkeys(split_kohya_key(k)[0] for k in sd)
    for name in names:
        down, up = sd[name + ".lora_down.weight"], sd[name + ".lora_up.weight"]
        scale = _alpha(sd, name, int(down.shape[0])) / down.shape[0]
        if name.startswith(naming_flux.CLIP_PREFIX + "_"):
            rest = name[len(naming_flux.CLIP_PREFIX) + 1:]
            m = re.match(r"^text_model_encoder_layers_(\d+)_(self_attn_(?:q|k|v|out)_proj|mlp_fc[12])$", rest)
            if not m:
                raise ValueError(f"not a CLIP-L LoRA name: {name!r}")
            child = m[2].replace("self_attn_", "self_attn.").replace("mlp_", "mlp.")
            prefix = f"text_encoder.text_model.encoder.layers.{m[1]}.{child}"
        else:
            prefix = "transformer." + naming_flux.internal_to_path(name)
        out[prefix + ".lora_A.weight"] = (down.double() * scale).to(down.dtype)
        out[prefix + ".lora_B.weight"] = up
    return out


def from_peft_flux_state_dict(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The PEFT layout (`peft_flux_state_dict`) back to run-time names, exactly: `lora_A` -> `.lora_down`,
    `lora_B` -> `.lora_up`, `.alpha` = rank (the scale was folded into `lora_A`)."""
    out: dict[str, torch.Tensor] = {}
    for key, t in sd.items():
        m = re.match(r"^(transformer|text_encoder)\.(.+)\.lora_([AB])\.weight$", key)
        if not m:
            raise ValueError(f"not a diffusers/PEFT FLUX.1 LoRA key: {key!r}")
        if m[1] == "transformer":
            name = naming_flux.internal_name(m[2])
        else:
            name = naming_flux.CLIP_PREFIX + "_" + m[2].replace(".", "_")
        if m[3] == "A":
            out[name + ".lora_down.weight"] = t
            out[name + ".alpha"] = torch.tensor(float(t.shape[0]))
        else:
            out[name + ".lora_up.weight"] = t
    return out
