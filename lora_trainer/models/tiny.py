"""The built-in tiny SD1- and SDXL-style models (`base_model: builtin:tiny-sd1` / `builtin:tiny-sdxl`).

Why: tests, the demo and a first run need a real diffusers/transformers model without downloading
weights. The tiny models use the real classes and the real block layout (SD1: four levels with
cross-attention in the first three and layers_per_block 2, so LoRA names match real SD1 files; SDXL:
three levels, two text encoders, `text_time` add-embedding) with small channels. `tiny-sd1` ships
briefly pretrained weights (`tiny_weights/tiny-sd1.safetensors`, written by
`tools/pretrain_tiny.py` on the synthetic varied set) so a LoRA has something specific to learn.
"""

from __future__ import annotations

import json
import os
from typing import Any

from lora_trainer.errors import ModelLoadError
from lora_trainer.models.base import AdapterInfo

WEIGHTS_DIR = os.path.join(os.path.dirname(__file__), "tiny_weights")
TINY_ARCHS = ("sd1", "sdxl")
TINY_RESOLUTION = 64


def weights_path(arch: str) -> str:
    return os.path.join(WEIGHTS_DIR, f"tiny-{arch}.safetensors")


def unet_config(arch: str) -> dict[str, Any]:
    """diffusers UNet2DConditionModel config of the tiny model."""
    common = {"sample_size": TINY_RESOLUTION // 8, "in_channels": 4, "out_channels": 4,
              "layers_per_block": 2, "norm_num_groups": 8}
    if arch == "sd1":
        return {**common, "block_out_channels": [32, 32, 64, 64],
                "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
                "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
                "cross_attention_dim": 32, "attention_head_dim": 4}
    if arch == "sd2":  # only for single-file round-trip tests (linear proj_in/out like real SD2)
        return {**unet_config("sd1"), "use_linear_projection": True, "attention_head_dim": [2, 4, 4, 4]}
    if arch == "sdxl":
        return {**common, "block_out_channels": [32, 64, 64],
                "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
                "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
                "transformer_layers_per_block": [1, 1, 2], "attention_head_dim": [2, 4, 4],
                "cross_attention_dim": 32 + 48, "use_linear_projection": True,
                "addition_embed_type": "text_time", "addition_time_embed_dim": 8,
                "projection_class_embeddings_input_dim": 6 * 8 + 32}
    raise ValueError(f"no tiny model for arch {arch!r}")


def vae_config(arch: str) -> dict[str, Any]:
    """diffusers AutoencoderKL config: four levels (downscale 8, as real SD), small channels."""
    return {"in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 1,
            "block_out_channels": [16, 32, 32, 32], "norm_num_groups": 8, "sample_size": TINY_RESOLUTION,
            "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
            "scaling_factor": 0.18215 if arch != "sdxl" else 0.13025}


def text_encoder_config(arch: str, index: int, vocab_size: int, bos: int, eos: int) -> dict[str, Any]:
    """transformers CLIPTextConfig of text encoder `index` (SD2 / SDXL-G use gelu, SD1 / CLIP-L quick_gelu).
    SDXL's second encoder is wider than the first, as in the real model (converters tell them apart so)."""
    gelu = arch == "sd2" or (arch == "sdxl" and index == 1)
    width = 48 if (arch == "sdxl" and index == 1) else 32
    return {"vocab_size": vocab_size, "hidden_size": width, "intermediate_size": 2 * width, "num_hidden_layers": 4,
            "num_attention_heads": 4, "max_position_embeddings": 77, "projection_dim": 32,
            "hidden_act": "gelu" if gelu else "quick_gelu", "bos_token_id": bos, "eos_token_id": eos,
            "pad_token_id": eos}


def build_tiny_parts(arch: str, seed: int = 0) -> dict[str, Any]:
    """Random-weight parts {unet, vae, text_encoders, tokenizers} (deterministic per seed)."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from lora_trainer.models.tiny_tokenizer import make_tokenizer
    from lora_trainer.synthetic import VOCABULARY

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**unet_config(arch))
    vae = AutoencoderKL(**vae_config(arch))
    n_te = 2 if arch == "sdxl" else 1
    tokenizers = [make_tokenizer(VOCABULARY) for _ in range(n_te)]
    tes = []
    for i, tok in enumerate(tokenizers):
        cfg = CLIPTextConfig(**text_encoder_config(arch, i, len(tok), tok.bos_token_id, tok.eos_token_id))
        tes.append((CLIPTextModelWithProjection if i == 1 else CLIPTextModel)(cfg))
    for m in (unet, vae, *tes):
        m.eval()
    return {"unet": unet, "vae": vae, "text_encoders": tes, "tokenizers": tokenizers}


def _part_modules(parts: dict[str, Any]) -> dict[str, Any]:
    mods = {"unet": parts["unet"], "vae": parts["vae"]}
    for i, te in enumerate(parts["text_encoders"]):
        mods[f"te{i}"] = te
    return mods


def flat_state_dict(parts: dict[str, Any]) -> dict[str, Any]:
    """One state dict `<part>.<key>` for all parts (the tiny weights file's layout)."""
    return {f"{name}.{k}": v for name, mod in _part_modules(parts).items() for k, v in mod.state_dict().items()}


def own_key(key: str, own: dict[str, Any]) -> str:
    """transformers 5 dropped the `text_model.` level of CLIPTextModel; one weights file fits both."""
    if key in own:
        return key
    if "text_model." + key in own:
        return "text_model." + key
    if key.startswith("text_model.") and key[len("text_model."):] in own:
        return key[len("text_model."):]
    return key


def load_flat_state_dict(parts: dict[str, Any], sd: dict[str, Any], *, strict: bool = True) -> None:
    """Inverse of `flat_state_dict`; the VAE scaling factor travels as `vae.__scaling_factor__`."""
    import torch

    for name, mod in _part_modules(parts).items():
        sub = {k[len(name) + 1:]: v for k, v in sd.items() if k.startswith(name + ".") and "__" not in k}
        own = mod.state_dict()
        sub = {own_key(k, own): v for k, v in sub.items()}
        sub = {k: v.to(own[k].dtype) if k in own else v for k, v in sub.items()}
        missing, unexpected = mod.load_state_dict(sub, strict=False)
        missing = [k for k in missing if not k.endswith("position_ids")]
        if strict and (missing or unexpected):
            raise ModelLoadError(f"tiny weights do not fit the tiny {name}: missing {missing[:3]}, "
                                 f"unexpected {unexpected[:3]}; rebuild them with tools/pretrain_tiny.py")
    sf = sd.get("vae.__scaling_factor__")
    if isinstance(sf, torch.Tensor):
        parts["vae"].register_to_config(scaling_factor=float(sf))


def build_tiny_adapter(arch: str = "sd1", pretrained: bool = True, *, seed: int = 0,
                       clip_skip: int = 1, max_token_length: int = 75):  # -> DiffusersAdapter
    """The tiny model as a `DiffusersAdapter` (float32, CPU). `pretrained` loads the shipped weights
    when they exist for `arch` (SD1 only; SDXL stays random-weight, it is for conformance tests)."""
    from safetensors.torch import load_file

    from lora_trainer.models.diffusers_sd import DiffusersAdapter

    if arch not in TINY_ARCHS:
        raise ModelLoadError(f"base_model 'builtin:tiny-{arch}' does not exist; use builtin:tiny-sd1 "
                             "or builtin:tiny-sdxl")
    parts = build_tiny_parts(arch, seed)
    name = f"tiny-{arch}"
    if pretrained and os.path.exists(weights_path(arch)):
        load_flat_state_dict(parts, load_file(weights_path(arch)))
    info = AdapterInfo(arch=arch, prediction_type="epsilon", model_name=name,
                       extra={"builtin": True, "pretrained": pretrained and os.path.exists(weights_path(arch)),
                              "resolution": TINY_RESOLUTION})
    return DiffusersAdapter(parts["unet"], parts["vae"], parts["text_encoders"], parts["tokenizers"], info,
                            clip_skip=clip_skip, max_token_length=max_token_length)


def save_tiny_model(folder: str, arch: str = "sd1", pretrained: bool = True) -> str:
    """Write the tiny model as a diffusers folder (model_index.json, unet/, vae/, text_encoder/,
    tokenizer/ ...) so the folder-loading path can be tested and used like a real model."""
    from lora_trainer.models.tiny_tokenizer import write_tokenizer
    from lora_trainer.synthetic import VOCABULARY

    adapter = build_tiny_adapter(arch, pretrained)
    os.makedirs(folder, exist_ok=True)
    adapter.unet.save_pretrained(os.path.join(folder, "unet"))
    adapter.vae.save_pretrained(os.path.join(folder, "vae"))
    index: dict[str, Any] = {
        "_class_name": "StableDiffusionXLPipeline" if arch == "sdxl" else "StableDiffusionPipeline",
        "_diffusers_version": "0.42.0", "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"], "scheduler": ["diffusers", "DDIMScheduler"]}
    for i, te in enumerate(adapter.text_encoders):
        suffix = "" if i == 0 else f"_{i + 1}"
        te.save_pretrained(os.path.join(folder, f"text_encoder{suffix}"))
        write_tokenizer(os.path.join(folder, f"tokenizer{suffix}"), VOCABULARY)
        index[f"text_encoder{suffix}"] = ["transformers", type(te).__name__]
        index[f"tokenizer{suffix}"] = ["transformers", "CLIPTokenizer"]
    os.makedirs(os.path.join(folder, "scheduler"), exist_ok=True)
    with open(os.path.join(folder, "scheduler", "scheduler_config.json"), "w", encoding="utf-8") as f:
        json.dump({"_class_name": "DDIMScheduler", "beta_start": 0.00085, "beta_end": 0.012,
                   "beta_schedule": "scaled_linear", "num_train_timesteps": 1000,
                   "prediction_type": "epsilon"}, f, indent=1)
    with open(os.path.join(folder, "model_index.json"), "w", encoding="utf-8") as f:
        json.dump(index, f, indent=1)
    return folder
