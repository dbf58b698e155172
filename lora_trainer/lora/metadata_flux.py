"""Metadata, sidecars and save/load for FLUX.1 / Chroma LoRA files.

Why: the WebUIs decide whether a LoRA card fits the loaded model from its metadata. Forge shows a LoRA
as a Flux one when `modelspec.implementation` is BFL's repository or `modelspec.architecture` is
`flux-1-dev/lora` (extensions-builtin/sd_forge_lora/network.py); kohya's sai_model_spec names the
architectures `flux-1-dev`, `flux-1-schnell`, `chroma` (+ `/lora`), writes `ss_base_model_version`
`flux1` / `chroma`, the implementation `https://github.com/black-forest-labs/flux` (Chroma:
`https://huggingface.co/lodestones/Chroma`), `ss_network_module` `networks.lora_flux`, and no
`modelspec.prediction_type` (rectified flow has none of SD's ε/v).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from lora_trainer.lora.file import load_lora_file, save_lora_file
from lora_trainer.lora.flux_format import (
    check_lora_family,
    from_peft_flux_state_dict,
    fuse_flux_state_dict,
    peft_flux_state_dict,
    split_flux_state_dict,
)
from lora_trainer.lora.metadata import build_metadata, write_sidecars

FLUX_KINDS = ("flux-dev", "flux-schnell", "chroma")
BASE_MODEL_VERSION = {"flux-dev": "flux1", "flux-schnell": "flux1", "chroma": "chroma"}
MODELSPEC_ARCH = {"flux-dev": "flux-1-dev/lora", "flux-schnell": "flux-1-schnell/lora", "chroma": "chroma/lora"}
IMPLEMENTATION = {"flux-dev": "https://github.com/black-forest-labs/flux",
                  "flux-schnell": "https://github.com/black-forest-labs/flux",
                  "chroma": "https://huggingface.co/lodestones/Chroma"}
NETWORK_MODULE = "networks.lora_flux"
SIDECAR_VERSION = {"flux-dev": "Flux", "flux-schnell": "Flux", "chroma": "Unknown"}  # Forge's SdVersion names


def build_flux_metadata(*, kind: str, output_name: str, rank: int, alpha: float,
                        **kw: Any) -> dict[str, str]:
    """kohya-compatible `ss_*` / `modelspec.*` metadata for a FLUX.1 / Chroma LoRA. Takes the keyword
    arguments of `metadata.build_metadata` (less arch and prediction type); training settings of the
    flow-matching family (e.g. `ss_guidance_scale`, `ss_timestep_sampling`) go in `extra`."""
    if kind not in FLUX_KINDS:
        raise ValueError(f"unknown FLUX.1/Chroma kind {kind!r} (one of {', '.join(FLUX_KINDS)})")
    kw.setdefault("clip_skip", 1)
    if kind == "chroma":
        kw["train_text_encoder"] = False  # Chroma has no CLIP; its T5 is never trained
    meta = build_metadata(output_name=output_name, arch="sd1", rank=rank, alpha=alpha, **kw)
    meta.update({
        "ss_base_model_version": BASE_MODEL_VERSION[kind],
        "ss_v2": "False",
        "ss_v_parameterization": "False",
        "ss_network_module": (NETWORK_MODULE if kw.get("network_module", "networks.lora") == "networks.lora"
                              else kw["network_module"]),  # LoHa / LoKr / DoRA: lycoris.kohya
        "modelspec.architecture": MODELSPEC_ARCH[kind],
        "modelspec.implementation": IMPLEMENTATION[kind],
    })
    meta.pop("modelspec.prediction_type", None)
    return meta


LAYOUTS = ("kohya", "peft")


def save_flux_lora(path: str | os.PathLike[str], run_state_dict: dict[str, torch.Tensor], *, kind: str,
                   metadata: dict[str, Any], layout: str = "kohya") -> dict[str, str]:
    """Write a run's LoRA (`LoRANetwork.kohya_state_dict()` over targets from `discovery_flux`).
    layout "kohya" (default; what Forge, ComfyUI, kohya and diffusers all read): fused BFL keys, `.alpha`
    on every module, with the `sshs_*` hashes. layout "peft": diffusers' own `transformer.*.lora_A/B`
    keys (FLUX.1 only). Returns the metadata written."""
    if layout == "kohya":
        return save_lora_file(path, fuse_flux_state_dict(run_state_dict, chroma=kind == "chroma"), metadata)
    if layout != "peft":
        raise ValueError(f"unknown LoRA layout {layout!r} (one of {', '.join(LAYOUTS)})")
    from safetensors.torch import save as st_save

    from lora_trainer.atomic import atomic_write_bytes

    tensors = {k: v.detach().to("cpu").contiguous()
               for k, v in peft_flux_state_dict(run_state_dict, chroma=kind == "chroma").items()}
    meta = {str(k): v if isinstance(v, str) else str(v) for k, v in metadata.items()}
    atomic_write_bytes(path, st_save(tensors, meta))
    return meta


def load_flux_lora(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(run-time state dict, metadata) of a Flux LoRA file, fused modules split per diffusers module,
    ready for `LoRANetwork.load_kohya_state_dict`. An SD LoRA is refused in one line."""
    sd, meta = load_lora_file(path)
    check_lora_family(sd.keys(), "flux", f"network_weights {os.fspath(path)}")
    if any(k.startswith(("transformer.", "text_encoder.")) for k in sd):  # the diffusers/PEFT layout
        return from_peft_flux_state_dict(sd), meta
    return split_flux_state_dict(sd), meta


def write_flux_sidecars(lora_path: str | Path, *, kind: str, **kw: Any) -> dict[str, Path]:
    """`<stem>.json` (+ preview) as `metadata.write_sidecars`, with Forge's "sd version" for Flux."""
    import json

    from lora_trainer.atomic import atomic_write_bytes

    out = write_sidecars(lora_path, arch=None, **kw)
    data = json.loads(out["json"].read_text(encoding="utf-8"))
    data["sd version"] = SIDECAR_VERSION[kind]
    atomic_write_bytes(out["json"], json.dumps(data, indent=4, ensure_ascii=False).encode("utf-8"))
    return out
