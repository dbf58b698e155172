"""Which architecture and prediction type an original-layout (LDM/SGM) checkpoint has.

Why from keys: a checkpoint file carries no config. The text encoder's layout tells the families
apart (the same rule A1111 and diffusers use): SD1 has HF CLIP at `cond_stage_model.transformer`,
SD2 has open_clip at `cond_stage_model.model`, SDXL has two embedders under `conditioner.embedders`
(the SDXL refiner, with only the open_clip one, is not supported). SD2 v-prediction is not visible
in the keys: it comes from the file's metadata, a `<name>.yaml` beside it (A1111's convention), or
a one-step UNet test like A1111's (a v model's output at t=999 is far below its input).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

from lora_trainer.errors import ModelLoadError
from lora_trainer.models.flux_detect import describe_flux_keys

SD1_KEY = "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight"
SD1_OLD_KEY = "cond_stage_model.transformer.embeddings.position_embedding.weight"
SD2_KEY = "cond_stage_model.model.token_embedding.weight"
SDXL_TE1_KEY = "conditioner.embedders.0.transformer.text_model.embeddings.position_embedding.weight"
SDXL_TE2_KEY = "conditioner.embedders.1.model.token_embedding.weight"
REFINER_KEY = "conditioner.embedders.0.model.token_embedding.weight"
UNET_PREFIX = "model.diffusion_model."


@dataclass
class Detected:
    arch: str                     # sd1 | sd2 | sdxl
    prediction_type: str          # epsilon | v_prediction
    prediction_evidence: str      # where the prediction type came from ("" = default, not evidence)
    source: str                   # file path, for messages


def detect_arch(sd: dict[str, Any], source: str = "checkpoint") -> str:
    """"sd1" | "sd2" | "sdxl" from the state dict's keys; ModelLoadError for anything else."""
    if SDXL_TE1_KEY in sd and SDXL_TE2_KEY in sd:
        return "sdxl"
    if REFINER_KEY in sd:
        raise ModelLoadError(f"{source} is an SDXL refiner; train LoRAs on the SDXL base model instead")
    if SD2_KEY in sd:
        return "sd2"
    if SD1_KEY in sd or SD1_OLD_KEY in sd:
        return "sd1"
    if (flux := describe_flux_keys(set(sd))) is not None:
        raise ModelLoadError(f"{source} is {flux}, not a Stable Diffusion checkpoint; load it as a FLUX.1/Chroma "
                             "base (with vae_path, clip_l_path, t5xxl_path)")
    has_unet = any(k.startswith(UNET_PREFIX) for k in sd)
    if any(k.startswith("lora_") for k in sd):
        raise ModelLoadError(f"{source} is a LoRA file, not a base model; set base_model to a checkpoint "
                             "and network_weights to this file to continue training it")
    if has_unet:
        raise ModelLoadError(f"{source} has a UNet but no text encoder (a pruned or UNet-only file); use the "
                             "full checkpoint")
    raise ModelLoadError(f"{source} is not a Stable Diffusion checkpoint (no UNet/text-encoder keys); a VAE "
                         "or embedding file cannot be a base model")


_YAML_V = re.compile(r"^\s*parameterization\s*:\s*[\"']?v[\"']?\s*$", re.MULTILINE)


def _sidecar_yaml(path: str) -> str | None:
    stem = os.path.splitext(path)[0]
    for ext in (".yaml", ".yml"):
        if os.path.isfile(stem + ext):
            with open(stem + ext, encoding="utf-8", errors="replace") as f:
                return f.read()
    return None


def detect_prediction(metadata: dict[str, str], path: str | None) -> tuple[str, str]:
    """(prediction_type, evidence) from safetensors metadata or a sidecar yaml; ("epsilon", "") if none."""
    pt = (metadata.get("modelspec.prediction_type") or metadata.get("prediction_type") or "").lower()
    if pt in ("v", "v_prediction", "v-prediction"):
        return "v_prediction", "metadata"
    if pt in ("epsilon", "eps"):
        return "epsilon", "metadata"
    if str(metadata.get("ss_v_parameterization", "")).lower() == "true":
        return "v_prediction", "metadata"
    text = _sidecar_yaml(path) if path else None
    if text is not None:
        return ("v_prediction", "yaml") if _YAML_V.search(text) else ("epsilon", "yaml")
    return "epsilon", ""


def detect_checkpoint(sd: dict[str, Any], metadata: dict[str, str], path: str) -> Detected:
    arch = detect_arch(sd, path)
    pred, evidence = detect_prediction(metadata, path)
    return Detected(arch, pred, evidence, path)


def sd2_unet_predicts_v(unet: Any) -> bool:
    """A1111's test: feed a constant latent at t=999; an epsilon model returns about its input,
    a v model about minus the clean image, far below the input. Only meaningful on real weights."""
    import torch

    p = next(unet.parameters())
    ctx_dim = unet.config.cross_attention_dim
    with torch.no_grad():
        x = torch.full((1, unet.config.in_channels, 8, 8), 0.5, device=p.device, dtype=p.dtype)
        ctx = torch.full((1, 2, ctx_dim), 0.5, device=p.device, dtype=p.dtype)
        out = unet(x, torch.tensor([999], device=p.device), encoder_hidden_states=ctx).sample
        return bool((out.float() - x.float()).mean().item() < -1)
