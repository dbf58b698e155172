"""What a model adapter hands to the LoRA network: a module to adapt and its kohya key name."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class LoraTarget:
    """One base module to wrap.

    name:   the kohya key prefix as written to the file, e.g.
            `lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q` (SD1),
            `lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q` (SDXL),
            `lora_te_text_model_encoder_layers_0_self_attn_q_proj`, `lora_te1_...`, `lora_te2_...`.
    module: the torch module (nn.Linear, nn.Conv2d, or nn.MultiheadAttention for kind "fused_qkv").
    kind:   "linear" | "conv1x1" | "conv" (kxk, LoCon; uses conv_dim/conv_alpha) |
            "fused_qkv" (open_clip / nn.MultiheadAttention `in_proj_weight` with q/k/v stacked:
            three LoRAs named by `names`, saved as separate q/k/v keys) |
            "rows" (`module` is a tuple of nn.Linear that read the same input and are one fused
            weight in the file, e.g. FLUX.1's to_q/to_k/to_v = BFL `qkv`: one adapter over the
            stacked weight, each Linear adds its rows of the output).
    group:  "unet" | "text_encoder" (selects the learning rate and UNet-only / TE-only training).
    names:  for "fused_qkv": the (q, k, v) kohya names; empty otherwise.
    """

    name: str
    module: Any
    kind: str = "linear"
    group: str = "unet"
    names: tuple[str, ...] = ()
