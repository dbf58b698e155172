"""Builders for the downloader tests: tiny valid safetensors files (LoRA, VAE), file listings."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path


def st_bytes(tensors: dict[str, tuple[list[int], str]], pad_to: int = 0, meta: dict | None = None) -> bytes:
    """A valid safetensors file with random data; shapes as given, dtype F16/F32."""
    header, offset = {}, 0
    sizes = {"F16": 2, "F32": 4}
    for name, (shape, dtype) in tensors.items():
        n = sizes[dtype]
        for d in shape:
            n *= d
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    if pad_to and offset < pad_to:  # one filler tensor to reach a size
        extra = pad_to - offset
        extra -= extra % 4
        header["filler"] = {"dtype": "F32", "shape": [extra // 4], "data_offsets": [offset, offset + extra]}
        offset += extra
    if meta:
        header["__metadata__"] = meta
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + os.urandom(offset)


def lora_bytes(size: int = 0) -> bytes:
    return st_bytes({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": ([4, 320], "F16"),
                     "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": ([320, 4], "F16"),
                     "lora_unet_down_blocks_0_attentions_0_proj_in.alpha": ([], "F32"),
                     "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": ([4, 768], "F16")},
                    pad_to=size)


def vae_bytes() -> bytes:
    return st_bytes({"encoder.conv_in.weight": ([8, 3, 3, 3], "F32"), "decoder.conv_out.weight": ([3, 8, 3, 3], "F32"),
                     "quant_conv.weight": ([8, 8, 1, 1], "F32")})


def files_under(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file())
