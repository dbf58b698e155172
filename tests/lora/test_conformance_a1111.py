"""Conformance (b): every key of our files finds its module in the WebUI's real `ldm` UNetModel the
way AUTOMATIC1111 1.10's builtin Lora extension looks it up — which drops unmatched keys silently.

The lookup is re-implemented here from the facts in DESIGN.md §3 (not imported from our naming code),
so a naming mistake cannot hide behind the same mistake. The UNet is the real
`ldm.modules.diffusionmodules.openaimodel.UNetModel` (stable-diffusion-sdkit, the WebUI's LDM code),
tiny, with the same channels as the tiny diffusers UNet the keys come from, so shapes are checked too.
SDXL's `sgm` package is not on PyPI: its UNetModel keeps ldm's module names, so the SDXL layout is
built with ldm's class (attention on levels 1-2, no upsampler after the last level). The text
encoders are transformers CLIP under A1111's attribute names; open_clip's resblocks (not
installable here: it imports torchvision) are imitated with the real nn.MultiheadAttention.
"""

from __future__ import annotations

import re

import pytest
import torch
from lora_test_models import OpenClipText, tiny_te, tiny_unet
from torch import nn

from lora_trainer.lora.discovery import (
    ldm_unet_targets,
    open_clip_targets,
    text_encoder_targets,
    unet_targets,
)
from lora_trainer.lora.network import LoRANetwork

openaimodel = pytest.importorskip("ldm.modules.diffusionmodules.openaimodel")

# ---- A1111's lookup, re-implemented -----------------------------------------------------------
_RESNET = {"conv1": "in_layers_2", "conv2": "out_layers_3", "norm1": "in_layers_0", "norm2": "out_layers_0",
           "time_emb_proj": "emb_layers_1", "conv_shortcut": "skip_connection"}


def _oc(rest: str) -> str:
    return rest.replace("mlp_fc1", "mlp_c_fc").replace("mlp_fc2", "mlp_c_proj").replace("self_attn", "attn")


def diffusers_to_compvis(key: str, is_sd2: bool) -> str:
    def sfx(kind: str, s: str) -> str:
        return _RESNET.get(s, s) if kind == "resnets" else s

    if m := re.match(r"lora_unet_down_blocks_(\d+)_(attentions|resnets)_(\d+)_(.+)", key):
        i, kind, j = int(m[1]), m[2], int(m[3])
        return f"diffusion_model_input_blocks_{1 + 3 * i + j}_{int(kind == 'attentions')}_{sfx(kind, m[4])}"
    if m := re.match(r"lora_unet_mid_block_(attentions|resnets)_(\d+)_(.+)", key):
        slot = 1 if m[1] == "attentions" else 2 * int(m[2])
        return f"diffusion_model_middle_block_{slot}_{sfx(m[1], m[3])}"
    if m := re.match(r"lora_unet_up_blocks_(\d+)_(attentions|resnets)_(\d+)_(.+)", key):
        i, kind, j = int(m[1]), m[2], int(m[3])
        return f"diffusion_model_output_blocks_{3 * i + j}_{int(kind == 'attentions')}_{sfx(kind, m[4])}"
    if m := re.match(r"lora_unet_down_blocks_(\d+)_downsamplers_0_conv", key):
        return f"diffusion_model_input_blocks_{3 + 3 * int(m[1])}_0_op"
    if m := re.match(r"lora_unet_up_blocks_(\d+)_upsamplers_0_conv", key):
        i = int(m[1])
        return f"diffusion_model_output_blocks_{2 + 3 * i}_{2 if i > 0 else 1}_conv"
    if m := re.match(r"lora_te_text_model_encoder_layers_(\d+)_(.+)", key):
        if is_sd2:
            return f"model_transformer_resblocks_{m[1]}_{_oc(m[2])}"
        return f"transformer_text_model_encoder_layers_{m[1]}_{m[2]}"
    if m := re.match(r"lora_te2_text_model_encoder_layers_(\d+)_(.+)", key):
        return f"1_model_transformer_resblocks_{m[1]}_{_oc(m[2])}"
    return key


def a1111_lookup(key_module: str, mapping: dict[str, nn.Module], is_sd2: bool) -> nn.Module | None:
    key = diffusers_to_compvis(key_module, is_sd2)
    mod = mapping.get(key)
    if mod is None and (m := re.match(r"(.*)_([qkv]_proj)$", key)):
        mod = mapping.get(m[1])
    if mod is None and "lora_unet" in key_module:
        mod = mapping.get(key_module.replace("lora_unet", "diffusion_model"))
    elif mod is None and "lora_te1_text_model" in key_module:
        mod = mapping.get(key_module.replace("lora_te1_text_model", "0_transformer_text_model"))
        if mod is None:
            mod = mapping.get(key_module.replace("lora_te1_text_model", "transformer_text_model"))
    return mod


def layer_mapping(unet: nn.Module, text_parts: list[tuple[str, nn.Module]]) -> dict[str, nn.Module]:
    """A1111's network_layer_mapping: module path with `.`->`_`, text encoder(s) then `sd_model.model`."""
    out: dict[str, nn.Module] = {}
    for prefix, wrapped in text_parts:
        for name, mod in wrapped.named_modules():
            out[prefix + name.replace(".", "_")] = mod
    holder = nn.Module()
    holder.diffusion_model = unet  # sd_model.model is the DiffusionWrapper around diffusion_model
    for name, mod in holder.named_modules():
        out[name.replace(".", "_")] = mod
    return out


# ---- the WebUI's modules ----------------------------------------------------------------------
def ldm_unet(arch: str) -> nn.Module:
    torch.manual_seed(0)
    common = dict(image_size=8, in_channels=4, out_channels=4, model_channels=32, num_res_blocks=2,
                  num_head_channels=8, use_spatial_transformer=True, legacy=False)
    if arch == "sdxl":
        return openaimodel.UNetModel(**common, attention_resolutions=[2, 4], channel_mult=[1, 2, 2],
                                     transformer_depth=2, context_dim=[64, 64], use_linear_in_transformer=True)
    return openaimodel.UNetModel(**common, attention_resolutions=[1, 2, 4], channel_mult=[1, 2, 2, 2],
                                 transformer_depth=1, context_dim=32, use_linear_in_transformer=arch == "sd2")


def hf_wrapped() -> nn.Module:
    """FrozenCLIPEmbedder: `.transformer` is CLIPTextModel with the transformers-4 `text_model` level."""
    w = nn.Module()
    w.transformer = tiny_te(projection=True)  # keeps `text_model.` under transformers 5 too
    return w


def open_clip_wrapped() -> nn.Module:
    """FrozenOpenCLIPEmbedder: `.model.transformer.resblocks`."""
    w = nn.Module()
    w.model = OpenClipText(d=32, layers=2)
    return w


def _io_shape(mod: nn.Module) -> tuple:
    if isinstance(mod, nn.MultiheadAttention):
        return mod.embed_dim, mod.embed_dim, (1, 1)
    if isinstance(mod, nn.Conv2d):
        return mod.in_channels, mod.out_channels, tuple(mod.kernel_size)
    return mod.in_features, mod.out_features, (1, 1)


def check_all_keys(sd: dict[str, torch.Tensor], mapping: dict[str, nn.Module], is_sd2: bool) -> set[int]:
    found: set[int] = set()
    names = {k.split(".", 1)[0] for k in sd}
    assert names and all(k.split(".", 1)[1] in ("lora_down.weight", "lora_up.weight", "alpha") for k in sd)
    for name in sorted(names):
        mod = a1111_lookup(name, mapping, is_sd2)
        assert mod is not None, f"A1111 would silently drop {name}"
        fin, fout, k = _io_shape(mod)
        down, up = sd[f"{name}.lora_down.weight"], sd[f"{name}.lora_up.weight"]
        assert down.shape[1] == fin and up.shape[0] == fout, name
        assert tuple(down.shape[2:]) in ((), k), name
        found.add(id(mod))
    return found


@pytest.mark.parametrize("arch", ["sd1", "sd2"])
def test_sd1_sd2_keys_find_ldm_modules(arch):
    is_sd2 = arch == "sd2"
    unet = tiny_unet(arch)
    te = tiny_te()  # transformers 5 CLIPTextModel: module paths without `text_model.`
    targets = unet_targets(unet, arch, conv=True) + text_encoder_targets(te, "lora_te")
    net = LoRANetwork(targets, rank=4, conv_rank=2)
    sd = net.kohya_state_dict()

    ldm = ldm_unet(arch)
    wrapped = open_clip_wrapped() if is_sd2 else hf_wrapped()
    found = check_all_keys(sd, layer_mapping(ldm, [("", wrapped)]), is_sd2)
    # and the WebUI-side discovery names the same modules: a run on the WebUI's UNet writes the same keys
    ldm_names = {t.name for t in ldm_unet_targets(ldm, arch, conv=True)}
    assert ldm_names == {t.name for t in targets if t.group == "unet"}
    if is_sd2:
        oc = open_clip_targets(wrapped.model.transformer, "lora_te")
        oc_names = {n for t in oc for n in (t.names or (t.name,))}
        assert oc_names == {t.name for t in targets if t.group == "text_encoder"}
        assert sum(t.kind == "fused_qkv" for t in oc) == 2
    else:
        assert {t.name for t in text_encoder_targets(wrapped.transformer, "lora_te")} == \
            {t.name for t in targets if t.group == "text_encoder"}
    assert len(found) == len({n.rsplit("_", 2)[0] if n.endswith(("q_proj", "k_proj", "v_proj")) and is_sd2
                              else n for n in net.loras})


def test_sdxl_keys_find_sgm_modules():
    unet, te1, te2 = tiny_unet("sdxl"), tiny_te(), tiny_te(projection=True)
    targets = (unet_targets(unet, "sdxl", conv=True) + text_encoder_targets(te1, "lora_te1")
               + text_encoder_targets(te2, "lora_te2"))
    sd = LoRANetwork(targets, rank=4, conv_rank=2).kohya_state_dict()
    ldm = ldm_unet("sdxl")
    te2_wrapped = open_clip_wrapped()
    mapping = layer_mapping(ldm, [("0_", hf_wrapped()), ("1_", te2_wrapped)])
    check_all_keys(sd, mapping, is_sd2=False)
    assert {t.name for t in ldm_unet_targets(ldm, "sdxl", conv=True)} == {t.name for t in targets if t.group == "unet"}
    # q/k/v of the fused open_clip attention all land on the one nn.MultiheadAttention
    attn = te2_wrapped.model.transformer.resblocks[1].attn
    for x in "qkv":
        assert a1111_lookup(f"lora_te2_text_model_encoder_layers_1_self_attn_{x}_proj", mapping, False) is attn
