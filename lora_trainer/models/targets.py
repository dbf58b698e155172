"""LoRA targets of a diffusers adapter, found and named by `lora_trainer.lora.discovery`.

Why a separate module: the adapter only says which parts it has and which prefix each text encoder
gets (`lora_te` for SD1/SD2, `lora_te1`/`lora_te2` for SDXL); discovery owns the selection rules.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lora_trainer.lora import discovery
from lora_trainer.lora.target import LoraTarget

if TYPE_CHECKING:
    from lora_trainer.models.diffusers_sd import DiffusersAdapter


def text_encoder_prefixes(n: int) -> list[str]:
    """Kohya prefixes for `n` text encoders."""
    return ["lora_te"] if n == 1 else [f"lora_te{i + 1}" for i in range(n)]


def diffusers_lora_targets(adapter: DiffusersAdapter, *, unet: bool, text_encoder: bool,
                           conv: bool) -> list[LoraTarget]:
    """UNet targets (LoCon convs when `conv`) then text-encoder targets, in module order."""
    targets: list[LoraTarget] = []
    if unet:
        targets += discovery.unet_targets(adapter.unet, adapter.arch, conv=conv)
    if text_encoder:
        tes = adapter.text_encoders
        for te, prefix in zip(tes, text_encoder_prefixes(len(tes)), strict=True):
            targets += discovery.text_encoder_targets(te, prefix)
    return targets
