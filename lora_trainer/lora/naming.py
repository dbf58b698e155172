"""Kohya key names per architecture, as pure string maps.

Why this exists: consumers (A1111, Forge, ComfyUI, diffusers) find the module a LoRA key belongs to
only by its name, and A1111 drops unmatched keys silently. Every adapter names its targets through
these functions so a file trained on diffusers modules and one trained on the WebUI's LDM modules
look the same:

- SD1/SD2 UNet keys use diffusers paths (`lora_unet_down_blocks_0_attentions_0_...`).
- SDXL UNet keys use LDM paths (`lora_unet_input_blocks_4_1_...`).
- Text encoder keys use the HF CLIP layout (`lora_te_text_model_encoder_layers_0_self_attn_q_proj`),
  whatever produced the module (transformers 4 or 5, open_clip inside A1111).

Paths are dotted module paths as `named_modules()` yields them; kohya names replace `.` by `_`.
"""

from __future__ import annotations

import re
from collections.abc import Collection

UNET_PREFIX = "lora_unet"
TE_PREFIXES = ("lora_te", "lora_te1", "lora_te2")

# diffusers up_blocks that carry attentions (their upsampler sits at LDM index 2, else 1).
SD_UP_BLOCKS_WITH_ATTENTION = (1, 2, 3)
SDXL_UP_BLOCKS_WITH_ATTENTION = (0, 1)
LAYERS_PER_BLOCK = 2  # SD1, SD2 and SDXL all use 2 resnets per down block (3 per up block)

# diffusers ResnetBlock2D child -> LDM ResBlock child
_RESNET_TO_LDM = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}
_RESNET_FROM_LDM = {v: k for k, v in _RESNET_TO_LDM.items()}

# top-level UNet modules outside the down/mid/up blocks
_TOP_TO_LDM = {
    "conv_in": "input_blocks.0.0",
    "conv_out": "out.2",
    "conv_norm_out": "out.0",
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
}
_TOP_FROM_LDM = {v: k for k, v in _TOP_TO_LDM.items()}


def kohya_name(prefix: str, path: str) -> str:
    """`prefix` + `_` + module path with dots replaced by underscores."""
    path = path.strip(".")
    return f"{prefix}_{path.replace('.', '_')}" if path else prefix


def _split_top(path: str, table: dict[str, str]) -> str | None:
    """Map a path that starts with one of `table`'s keys (whole components), else None."""
    for src, dst in table.items():
        if path == src or path.startswith(src + "."):
            return dst + path[len(src):]
    return None


def _resnet_child_to_ldm(rest: str) -> str:
    head, _, tail = rest.partition(".")
    mapped = _RESNET_TO_LDM.get(head, head)
    return mapped + ("." + tail if tail else "")


def _resnet_child_from_ldm(rest: str) -> str:
    parts = rest.split(".")
    if len(parts) >= 2 and f"{parts[0]}.{parts[1]}" in _RESNET_FROM_LDM:
        return ".".join([_RESNET_FROM_LDM[f"{parts[0]}.{parts[1]}"], *parts[2:]])
    if parts and parts[0] in _RESNET_FROM_LDM:
        return ".".join([_RESNET_FROM_LDM[parts[0]], *parts[1:]])
    return rest


def _join(*parts: object) -> str:
    return ".".join(str(p) for p in parts if p != "")


_DOWN = re.compile(r"^down_blocks\.(\d+)\.(attentions|resnets)\.(\d+)(?:\.(.*))?$")
_DOWNSAMPLE = re.compile(r"^down_blocks\.(\d+)\.downsamplers\.0\.conv(?:\.(.*))?$")
_MID = re.compile(r"^mid_block\.(attentions|resnets)\.(\d+)(?:\.(.*))?$")
_UP = re.compile(r"^up_blocks\.(\d+)\.(attentions|resnets)\.(\d+)(?:\.(.*))?$")
_UPSAMPLE = re.compile(r"^up_blocks\.(\d+)\.upsamplers\.0\.conv(?:\.(.*))?$")


def diffusers_to_ldm_unet_path(path: str,
                               up_blocks_with_attention: Collection[int] = SDXL_UP_BLOCKS_WITH_ATTENTION) -> str:
    """diffusers UNet2DConditionModel path -> LDM/SGM UNetModel path (layers_per_block = 2).

    `up_blocks_with_attention` says where the upsampler sits (`output_blocks.{3i+2}.2` after an
    attention, `.1` without one): SDXL (0, 1), SD1/SD2 (1, 2, 3).
    Raises ValueError for a path outside the known layout.
    """
    top = _split_top(path, _TOP_TO_LDM)
    if top is not None:
        return top
    if m := _DOWN.match(path):
        i, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4] or ""
        if kind == "resnets":
            return _join("input_blocks", 1 + 3 * i + j, 0, _resnet_child_to_ldm(rest) if rest else "")
        return _join("input_blocks", 1 + 3 * i + j, 1, rest)
    if m := _DOWNSAMPLE.match(path):
        return _join("input_blocks", 3 + 3 * int(m[1]), 0, "op", m[2] or "")
    if m := _MID.match(path):
        kind, j, rest = m[1], int(m[2]), m[3] or ""
        if kind == "attentions":
            return _join("middle_block", 1, rest)
        return _join("middle_block", 2 * j, _resnet_child_to_ldm(rest) if rest else "")
    if m := _UP.match(path):
        i, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4] or ""
        if kind == "resnets":
            return _join("output_blocks", 3 * i + j, 0, _resnet_child_to_ldm(rest) if rest else "")
        return _join("output_blocks", 3 * i + j, 1, rest)
    if m := _UPSAMPLE.match(path):
        i = int(m[1])
        slot = 2 if i in up_blocks_with_attention else 1
        return _join("output_blocks", 3 * i + 2, slot, "conv", m[2] or "")
    raise ValueError(f"unknown diffusers UNet module path: {path!r}")


_IN = re.compile(r"^input_blocks\.(\d+)\.(\d+)(?:\.(.*))?$")
_MIDDLE = re.compile(r"^middle_block\.(\d+)(?:\.(.*))?$")
_OUT = re.compile(r"^output_blocks\.(\d+)\.(\d+)(?:\.(.*))?$")


def _strip_ldm_root(path: str) -> str:
    for root in ("model.diffusion_model.", "diffusion_model."):
        if path.startswith(root):
            return path[len(root):]
    return path


def ldm_to_diffusers_unet_path(path: str) -> str:
    """LDM/SGM UNetModel path -> diffusers path (inverse of `diffusers_to_ldm_unet_path`).

    Accepts a leading `model.diffusion_model.` / `diffusion_model.`. Upsamplers are recognised by
    their `conv` child, so no layout table is needed. Raises ValueError for unknown paths.
    """
    path = _strip_ldm_root(path)
    top = _split_top(path, _TOP_FROM_LDM)
    if top is not None:
        return top
    if m := _IN.match(path):
        n, slot, rest = int(m[1]), int(m[2]), m[3] or ""
        if n >= 1:
            i, j = divmod(n - 1, 3)
            if j == 2 and slot == 0 and (rest == "op" or rest.startswith("op.")):
                return _join("down_blocks", i, "downsamplers.0.conv", rest[3:])
            if j < 2 and slot == 0:
                return _join("down_blocks", i, "resnets", j, _resnet_child_from_ldm(rest) if rest else "")
            if j < 2 and slot == 1:
                return _join("down_blocks", i, "attentions", j, rest)
    elif m := _MIDDLE.match(path):
        slot, rest = int(m[1]), m[2] or ""
        if slot == 1:
            return _join("mid_block.attentions.0", rest)
        if slot in (0, 2):
            return _join("mid_block.resnets", slot // 2, _resnet_child_from_ldm(rest) if rest else "")
    elif m := _OUT.match(path):
        n, slot, rest = int(m[1]), int(m[2]), m[3] or ""
        i, j = divmod(n, 3)
        if slot == 0:
            return _join("up_blocks", i, "resnets", j, _resnet_child_from_ldm(rest) if rest else "")
        if rest == "conv" or rest.startswith("conv."):
            return _join("up_blocks", i, "upsamplers.0.conv", rest[4:])
        if slot == 1:
            return _join("up_blocks", i, "attentions", j, rest)
    raise ValueError(f"unknown LDM UNet module path: {path!r}")


def sd_unet_kohya_name(diffusers_path: str) -> str:
    """SD1/SD2: kohya name of a diffusers UNet module (diffusers paths are the file's names)."""
    return kohya_name(UNET_PREFIX, diffusers_path)


def sdxl_unet_kohya_name(diffusers_path: str) -> str:
    """SDXL: kohya name (LDM style) of a diffusers UNet module."""
    return kohya_name(UNET_PREFIX, diffusers_to_ldm_unet_path(diffusers_path, SDXL_UP_BLOCKS_WITH_ATTENTION))


def unet_kohya_name(diffusers_path: str, arch: str) -> str:
    """Kohya name of a diffusers UNet module for `arch` ("sd1" | "sd2" | "sdxl")."""
    return sdxl_unet_kohya_name(diffusers_path) if arch == "sdxl" else sd_unet_kohya_name(diffusers_path)


def ldm_unet_kohya_name(ldm_path: str, arch: str) -> str:
    """Kohya name of a module of the WebUI's LDM/SGM UNet (`diffusion_model...` or relative).

    SD1/SD2 files use diffusers names (the inverse of A1111's `convert_diffusers_name_to_compvis`);
    SDXL files keep the LDM path.
    """
    path = _strip_ldm_root(ldm_path)
    if arch == "sdxl":
        ldm_to_diffusers_unet_path(path)  # validates the path
        return kohya_name(UNET_PREFIX, path)
    return kohya_name(UNET_PREFIX, ldm_to_diffusers_unet_path(path))


_HF_LAYER = re.compile(r"(?:^|\.)encoder\.layers\.(\d+)\.(.+)$")


def hf_clip_kohya_name(path: str, prefix: str = "lora_te") -> str:
    """HF CLIP text-encoder module path -> `<prefix>_text_model_encoder_layers_N_...`.

    Works for transformers 4 (`text_model.encoder.layers...`), transformers 5 `CLIPTextModel`
    (`encoder.layers...`) and host wrappers around them (`transformer.text_model.encoder...`).
    """
    m = _HF_LAYER.search(path)
    if not m:
        raise ValueError(f"not a CLIP text-encoder layer path: {path!r}")
    return kohya_name(prefix, f"text_model.encoder.layers.{m[1]}.{m[2]}")


_OC_BLOCK = re.compile(r"(?:^|\.)resblocks\.(\d+)\.(.+)$")
_OC_TO_HF = {"attn.out_proj": "self_attn.out_proj", "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}


def open_clip_kohya_name(path: str, prefix: str = "lora_te2") -> str:
    """open_clip `transformer.resblocks.N.{attn.out_proj,mlp.c_fc,mlp.c_proj}` -> HF-style kohya name.

    For the fused `attn` (q/k/v stacked in `in_proj_weight`) use `open_clip_qkv_names`.
    """
    m = _OC_BLOCK.search(path)
    if not m or m[2] not in _OC_TO_HF:
        raise ValueError(f"not an open_clip resblock linear path: {path!r}")
    return kohya_name(prefix, f"text_model.encoder.layers.{m[1]}.{_OC_TO_HF[m[2]]}")


def open_clip_qkv_names(path: str, prefix: str = "lora_te2") -> tuple[str, str, str]:
    """open_clip `transformer.resblocks.N.attn` -> the (q, k, v) kohya names kohya writes."""
    m = _OC_BLOCK.search(path)
    if not m or m[2] != "attn":
        raise ValueError(f"not an open_clip resblock attention path: {path!r}")
    base = f"text_model.encoder.layers.{m[1]}.self_attn"
    q, k, v = (kohya_name(prefix, f"{base}.{x}_proj") for x in "qkv")
    return q, k, v


def ldm_unet_to_diffusers(path: str) -> str | None:
    """A1111 LDM SD1/SD2 UNet module path -> diffusers-style kohya name, None when it has no twin."""
    try:
        return ldm_unet_kohya_name(path, "sd1")
    except ValueError:
        return None


def open_clip_te_name(path: str, prefix: str = "lora_te2") -> str | tuple[str, str, str]:
    """open_clip module path -> kohya name; the fused `attn` gives its (q, k, v) names."""
    m = _OC_BLOCK.search(path)
    if m and m[2] == "attn":
        return open_clip_qkv_names(path, prefix)
    return open_clip_kohya_name(path, prefix)


_K_DIFF = re.compile(r"^lora_unet_((?:down|up)_blocks)_(\d+)_(attentions|resnets)_(\d+)_(.+)$")
_K_DIFF_MID = re.compile(r"^lora_unet_mid_block_(attentions|resnets)_(\d+)_(.+)$")
_K_DIFF_SAMPLER = re.compile(r"^lora_unet_(down|up)_blocks_(\d+)_(downsamplers|upsamplers)_0_conv$")
_K_LDM = re.compile(r"^lora_unet_(input_blocks|output_blocks|middle_block)_(\d+)_(?:(\d+)_)?(.+)$")
_RESNET_TO_LDM_U = {k: v.replace(".", "_") for k, v in _RESNET_TO_LDM.items()}
_RESNET_FROM_LDM_U = {v: k for k, v in _RESNET_TO_LDM_U.items()}


def kohya_name_alternatives(name: str) -> list[str]:
    """The same UNet module under the other naming style (diffusers <-> LDM), best guess first.

    Why: SD1 files normally use diffusers names and SDXL files LDM names, but both styles exist in
    the wild; continuing a run from such a file should still find every module. Upsamplers can sit
    at LDM slot 1 or 2 depending on the layout, so both are offered.
    """
    if m := _K_DIFF.match(name):
        blocks, i, kind, j, rest = m[1], int(m[2]), m[3], int(m[4]), m[5]
        if kind == "resnets":
            rest = _RESNET_TO_LDM_U.get(rest, rest)
        n = 1 + 3 * i + j if blocks == "down_blocks" else 3 * i + j
        ldm = "input_blocks" if blocks == "down_blocks" else "output_blocks"
        return [f"lora_unet_{ldm}_{n}_{int(kind == 'attentions')}_{rest}"]
    if m := _K_DIFF_MID.match(name):
        kind, j, rest = m[1], int(m[2]), m[3]
        if kind == "resnets":
            return [f"lora_unet_middle_block_{2 * j}_{_RESNET_TO_LDM_U.get(rest, rest)}"]
        return [f"lora_unet_middle_block_1_{rest}"]
    if m := _K_DIFF_SAMPLER.match(name):
        i = int(m[2])
        if m[1] == "down":
            return [f"lora_unet_input_blocks_{3 + 3 * i}_0_op"]
        return [f"lora_unet_output_blocks_{3 * i + 2}_{slot}_conv" for slot in (2, 1)]
    if m := _K_LDM.match(name):
        blocks, n, slot, rest = m[1], int(m[2]), m[3], m[4]
        if blocks == "middle_block":
            if n == 1:
                return [f"lora_unet_mid_block_attentions_0_{rest}"]
            return [f"lora_unet_mid_block_resnets_{n // 2}_{_RESNET_FROM_LDM_U.get(rest, rest)}"]
        if slot is None:
            return []
        s = int(slot)
        if blocks == "input_blocks":
            i, j = divmod(n - 1, 3)
            if rest == "op":
                return [f"lora_unet_down_blocks_{i}_downsamplers_0_conv"]
            kind = "attentions" if s == 1 else "resnets"
        else:
            i, j = divmod(n, 3)
            if rest == "conv":
                return [f"lora_unet_up_blocks_{i}_upsamplers_0_conv"]
            kind = "attentions" if s == 1 else "resnets"
        if kind == "resnets":
            rest = _RESNET_FROM_LDM_U.get(rest, rest)
        up = "down_blocks" if blocks == "input_blocks" else "up_blocks"
        return [f"lora_unet_{up}_{i}_{kind}_{j}_{rest}"]
    return []
