"""How AUTOMATIC1111 1.10's builtin Lora extension finds the module a kohya key belongs to.

Re-implemented independently for the tests (from the rules in DESIGN.md §3), so a naming mistake in
`lora_trainer.lora.naming` cannot hide behind the same mistake here: every module of the model gets
a name (its dotted path with `_`), the key's diffusers-style name is converted to that form, and a
key that finds no module is silently dropped by the WebUI — the tests fail on it instead.
"""

from __future__ import annotations

import re

RESNET = {"conv1": "in_layers_2", "conv2": "out_layers_3", "norm1": "in_layers_0", "norm2": "out_layers_0",
          "time_emb_proj": "emb_layers_1", "conv_shortcut": "skip_connection"}


def layer_mapping(sd_model) -> dict:
    """module name (dots → underscores) → module, for the text encoder and `sd_model.model`."""
    out = {}
    te = getattr(sd_model.cond_stage_model, "wrapped", sd_model.cond_stage_model)
    for name, mod in te.named_modules():
        out[name.replace(".", "_")] = mod
    for name, mod in sd_model.model.named_modules():
        out[name.replace(".", "_")] = mod
    return out


def to_compvis(key: str, is_sd2: bool) -> str:
    def suffix(kind: str, s: str) -> str:
        return RESNET.get(s, s) if kind == "resnets" else s

    if m := re.match(r"lora_unet_down_blocks_(\d+)_(attentions|resnets)_(\d+)_(.+)", key):
        i, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        return f"diffusion_model_input_blocks_{1 + 3 * i + j}_{1 if kind == 'attentions' else 0}_{suffix(kind, rest)}"
    if m := re.match(r"lora_unet_mid_block_(attentions|resnets)_(\d+)_(.+)", key):
        kind, j, rest = m[1], int(m[2]), m[3]
        return f"diffusion_model_middle_block_{1 if kind == 'attentions' else 2 * j}_{suffix(kind, rest)}"
    if m := re.match(r"lora_unet_up_blocks_(\d+)_(attentions|resnets)_(\d+)_(.+)", key):
        i, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        return f"diffusion_model_output_blocks_{3 * i + j}_{1 if kind == 'attentions' else 0}_{suffix(kind, rest)}"
    if m := re.match(r"lora_unet_down_blocks_(\d+)_downsamplers_0_conv", key):
        return f"diffusion_model_input_blocks_{3 + 3 * int(m[1])}_0_op"
    if m := re.match(r"lora_unet_up_blocks_(\d+)_upsamplers_0_conv", key):
        i = int(m[1])
        return f"diffusion_model_output_blocks_{2 + 3 * i}_{2 if i > 0 else 1}_conv"
    if m := re.match(r"lora_te_text_model_encoder_layers_(\d+)_(.+)", key):
        n, rest = m[1], m[2]
        if is_sd2:
            rest = rest.replace("mlp_fc1", "mlp_c_fc").replace("mlp_fc2", "mlp_c_proj").replace("self_attn", "attn")
            return f"model_transformer_resblocks_{n}_{rest}"
        return f"transformer_text_model_encoder_layers_{n}_{rest}"
    return key


def find_module(mapping: dict, key_base: str):
    """The module A1111 would attach `key_base` (a key without `.lora_down.weight` etc.) to, or None."""
    is_sd2 = any(k.startswith("model_transformer_resblocks") for k in mapping)
    name = to_compvis(key_base, is_sd2)
    mod = mapping.get(name)
    if mod is None and (m := re.match(r"(.*)_([qkv]_proj)$", name)):
        mod = mapping.get(m[1])  # q/k/v of a fused nn.MultiheadAttention
    if mod is None and "lora_unet" in key_base:
        mod = mapping.get(key_base.replace("lora_unet", "diffusion_model"))
    return mod
