"""Which FLUX.1 / Chroma model a file holds, read from its safetensors header only (no tensor loaded).

Why the header: a FLUX.1 transformer is 12-24 GB; every mistake a user can make with the single files
Forge and ComfyUI users have (an SD checkpoint or a LoRA as base, a transformer without its text
encoders, an NF4 or GGUF file) must be one clear line before any weight is read. Facts: FLUX.1 is
recognised by `double_blocks.0.img_attn.norm.key_norm.scale` (diffusers, Forge's huggingface_guess),
dev by its `guidance_in` embedder (schnell has none; kohya `flux_utils.analyze_checkpoint_state`),
Chroma by `distilled_guidance_layer` (its approximator, diffusers `CHECKPOINT_KEY_NAMES["chroma"]`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from lora_trainer import safetensors_header
from lora_trainer.errors import ModelLoadError

KINDS = ("flux-dev", "flux-schnell", "chroma")
TITLES = {"flux-dev": "FLUX.1-dev", "flux-schnell": "FLUX.1-schnell", "chroma": "Chroma"}
BFL_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "")
DIFFUSERS_MARK = "transformer_blocks.0.attn.norm_added_k.weight"
FP8_DTYPES = ("F8_E4M3", "F8_E5M2")
FLOAT_DTYPES = ("F32", "F16", "BF16", *FP8_DTYPES)
# all-in-one files (Forge / ComfyUI "checkpoint" layout)
AIO_VAE, AIO_CLIP, AIO_T5 = "vae.", "text_encoders.clip_l.transformer.", "text_encoders.t5xxl.transformer."
_SD_MARKS = ("model.diffusion_model.input_blocks.", "cond_stage_model.", "conditioner.embedders.",
             "first_stage_model.")


@dataclass
class FluxFile:
    """What `inspect_flux_file` found."""

    path: str
    kind: str              # one of KINDS
    layout: str            # "bfl" | "diffusers"
    prefix: str            # key prefix of the transformer ("model.diffusion_model." in all-in-one files)
    fp8: bool              # transformer weights stored as float8 (upcast when loaded)
    has_vae: bool = False  # all-in-one parts in the same file
    has_clip_l: bool = False
    has_t5: bool = False


def read_header(path: str) -> dict[str, dict[str, Any]]:
    """Tensor entries {name: {"dtype", "shape", ...}} of a .safetensors file (no tensor data read)."""
    low = path.lower()
    if low.endswith(".gguf"):
        raise ModelLoadError(f"{path} is a GGUF-quantised model: standalone training needs a bf16/fp16/fp8 "
                             ".safetensors file (train GGUF models in Forge, on the loaded checkpoint)")
    if not low.endswith(".safetensors"):
        raise ModelLoadError(f"{path}: FLUX.1/Chroma models are read from .safetensors files only")
    if not os.path.isfile(path):
        raise ModelLoadError(f"file not found: {path}")
    with open(path, "rb") as f:
        try:
            header, _ = safetensors_header.read_header(f, size=os.path.getsize(path))
        except safetensors_header.HeaderError as e:
            if e.reason == "short":
                raise ModelLoadError(f"{path} is too short to be a .safetensors file; re-download it") from e
            raise ModelLoadError(f"{path} has a damaged .safetensors header ({e}); re-download it") from e
    header.pop("__metadata__", None)
    return header


def kind_of_keys(keys: set[str], prefix: str = "") -> str | None:
    """"flux-dev" | "flux-schnell" | "chroma" from transformer key names (BFL or diffusers), else None."""
    bfl = prefix + "double_blocks.0.img_attn.norm.key_norm.scale" in keys
    diffusers = prefix + DIFFUSERS_MARK in keys and prefix + "x_embedder.weight" in keys
    if not (bfl or diffusers):
        return None
    if prefix + "distilled_guidance_layer.in_proj.weight" in keys:
        return "chroma"
    guided = (prefix + "guidance_in.in_layer.weight" in keys
              or prefix + "time_text_embed.guidance_embedder.linear_1.weight" in keys)
    return "flux-dev" if guided else "flux-schnell"


def describe_flux_keys(keys: set[str]) -> str | None:
    """"a FLUX.1-dev transformer" etc. when the keys are a FLUX.1/Chroma model (for the SD loader's
    error message), else None."""
    for p in BFL_PREFIXES:
        kind = kind_of_keys(keys, p)
        if kind:
            return f"a {TITLES[kind]} model"
    return None


def quant_refusal(path: str, header: dict[str, dict[str, Any]], prefix: str = "") -> str | None:
    """The one-line refusal for weights under `prefix` stored in a form we cannot train on, else None."""
    names = [k for k in header if k.startswith(prefix)]
    if any(k.endswith(("absmax", "quant_map", "quant_state.bitsandbytes__nf4", "quant_state.bitsandbytes__fp4"))
           for k in names):
        return (f"{path} is NF4/FP4-quantised (bitsandbytes): standalone training needs the bf16, fp16 or fp8 "
                "file (e.g. flux1-dev.safetensors); NF4 models train in Forge, on the loaded checkpoint")
    if any(k.endswith(("scale_weight", "scaled_fp8")) for k in names):
        return (f"{path} is a 'scaled fp8' file (per-tensor scales, ComfyUI): use the bf16/fp16 file or a plain "
                "fp8 one (e.g. flux1-dev-fp8 / t5xxl_fp8_e4m3fn)")
    odd = sorted({header[k]["dtype"] for k in names if k.endswith(".weight")} - set(FLOAT_DTYPES))
    if odd:
        return (f"{path} stores weights as {', '.join(odd)} (a quantisation this trainer cannot read); use the "
                "bf16, fp16 or fp8 .safetensors file of the model")
    return None


def inspect_flux_file(path: str) -> FluxFile:
    """Kind, layout and contents of a FLUX.1/Chroma transformer file; ModelLoadError (one line) for
    anything else: an SD checkpoint, a LoRA, a VAE or text encoder given as base, a quantisation we
    cannot train on."""
    header = read_header(path)
    keys = set(header)
    for prefix in BFL_PREFIXES:
        kind = kind_of_keys(keys, prefix)
        if kind:
            break
    else:
        raise ModelLoadError(f"{path} is not a FLUX.1/Chroma model: {what_else(keys)}")
    refusal = quant_refusal(path, header, prefix)
    if refusal:
        raise ModelLoadError(refusal)
    layout = "diffusers" if prefix + DIFFUSERS_MARK in keys else "bfl"
    fp8 = any(header[k]["dtype"] in FP8_DTYPES for k in keys if k.startswith(prefix))
    return FluxFile(path, kind, layout, prefix, fp8,
                    has_vae=any(k.startswith(AIO_VAE) for k in keys),
                    has_clip_l=any(k.startswith(AIO_CLIP) for k in keys),
                    has_t5=any(k.startswith(AIO_T5) for k in keys))


def what_else(keys: set[str]) -> str:
    """What a non-Flux file most likely is, said so the user knows which file to give instead."""
    if any(k.startswith("lora_") or ".lora_down." in k or ".lora_A." in k for k in keys):
        return "it is a LoRA; give the base model as base_model and this file as network_weights"
    if any(k.startswith(_SD_MARKS) for k in keys):
        return "it is a Stable Diffusion (SD1/SD2/SDXL) checkpoint; FLUX.1 LoRAs need flux1-dev.safetensors"
    if any(k.startswith(("encoder.down.", "decoder.up.", "encoder.down_blocks.")) for k in keys):
        return "it is a VAE (ae.safetensors); give it as vae_path and the transformer as base_model"
    if any("encoder.block.0.layer.0.SelfAttention" in k for k in keys):
        return "it is a T5 text encoder; give it as t5xxl_path and the transformer as base_model"
    if any("encoder.layers.0.self_attn" in k for k in keys):
        return "it is a CLIP text encoder; give it as clip_l_path and the transformer as base_model"
    return "no FLUX.1 or Chroma transformer keys (double_blocks / transformer_blocks) in it"


def missing_parts(f: FluxFile, *, vae_path: str | None, clip_l_path: str | None,
                  t5xxl_path: str | None) -> str | None:
    """The one-line message naming the files a transformer file still needs, or None."""
    need = []
    if not f.has_vae and not vae_path:
        need.append("vae_path (ae.safetensors, the 16-channel FLUX.1 VAE)")
    if f.kind != "chroma" and not f.has_clip_l and not clip_l_path:
        need.append("clip_l_path (clip_l.safetensors)")
    if not f.has_t5 and not t5xxl_path:
        need.append("t5xxl_path (t5xxl_fp16.safetensors or t5xxl_fp8_e4m3fn.safetensors)")
    if not need:
        return None
    return (f"{os.path.basename(f.path)} holds only the {TITLES[f.kind]} transformer; also set "
            + ", ".join(need))
