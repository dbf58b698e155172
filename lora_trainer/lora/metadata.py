"""The metadata and sidecar files that make a LoRA show up properly in A1111, Forge and Civitai.

Why: A1111 hides a card whose `ss_base_model_version`/`ss_v2` does not match the loaded model,
uses `ss_output_name` as the alias, shows `ss_tag_frequency` in its metadata view, and reads the
trigger words and preferred weight from `<stem>.json`. All values are strings (safetensors rule).
"""

from __future__ import annotations

import io
import json
import random
import time
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from lora_trainer.atomic import atomic_write_bytes
from lora_trainer.lora.archs import BASE_MODEL_VERSION, MODELSPEC_ARCH, SIDECAR_SD_VERSION

NETWORK_MODULE = "networks.lora"
SAI_MODEL_SPEC = "1.0.0"


def base_model_version(arch: str, prediction_type: str = "epsilon") -> str:
    """`ss_base_model_version`: sd_v1, sd_v2 (eps), sd_v2_v (v-prediction), sdxl_base_v1-0."""
    if arch == "sd2" and prediction_type.startswith("v"):
        return "sd_v2_v"
    return BASE_MODEL_VERSION[arch]


def modelspec_architecture(arch: str, prediction_type: str = "epsilon") -> str:
    """`modelspec.architecture` (SD2 512 eps vs 768 v differ, like kohya's sai_model_spec)."""
    if arch == "sd2" and not prediction_type.startswith("v"):
        return "stable-diffusion-v2-512/lora"
    return MODELSPEC_ARCH[arch]


def format_resolution(resolution: int | str | Iterable[int]) -> tuple[int, int]:
    """512 | "512" | "768,512" | (768, 512) -> (width, height)."""
    if isinstance(resolution, int):
        return resolution, resolution
    if isinstance(resolution, str):
        parts = [int(p) for p in resolution.replace("x", ",").split(",") if p.strip()]
    else:
        parts = [int(p) for p in resolution]
    if len(parts) == 1:
        return parts[0], parts[0]
    return parts[0], parts[1]


def _trigger_text(trigger_words: str | Iterable[str] | None) -> str:
    if not trigger_words:
        return ""
    if isinstance(trigger_words, str):
        return trigger_words.strip()
    return ", ".join(w.strip() for w in trigger_words if w and w.strip())


def _num(v: float | int | None) -> str:
    return "None" if v is None else str(v)


def build_metadata(*, output_name: str, arch: str, rank: int, alpha: float,
                   prediction_type: str = "epsilon", sd_model_name: str = "", sd_model_hash: str = "",
                   resolution: int | str | Iterable[int] = 512, num_train_images: int = 0,
                   tag_frequency: Mapping[str, Mapping[str, int]] | None = None,
                   dataset_dirs: Mapping[str, Mapping[str, int]] | None = None,
                   training_started_at: float | None = None, training_finished_at: float | None = None,
                   steps: int = 0, epoch: int = 0, max_train_steps: int | None = None,
                   num_epochs: int | None = None, num_batches_per_epoch: int | None = None,
                   learning_rate: float = 1e-4, unet_lr: float | None = None,
                   text_encoder_lr: float | None = None, clip_skip: int = 1, seed: int = 42,
                   conv_rank: int = 0, conv_alpha: float | None = None, dropout: float = 0.0,
                   batch_size: int = 1, gradient_accumulation_steps: int = 1, optimizer: str = "",
                   lr_scheduler: str = "", lr_warmup_steps: int = 0, mixed_precision: str = "no",
                   noise_offset: float = 0.0, min_snr_gamma: float | None = None,
                   max_grad_norm: float | None = None, gradient_checkpointing: bool = False,
                   enable_bucket: bool = True, min_bucket_reso: int | None = None,
                   max_bucket_reso: int | None = None, keep_tokens: int = 0, max_token_length: int = 75,
                   caption_dropout_rate: float = 0.0, cache_latents: bool = True,
                   train_unet: bool = True, train_text_encoder: bool = True,
                   trigger_words: str | Iterable[str] | None = None, description: str = "",
                   extra: Mapping[str, Any] | None = None, network_module: str = NETWORK_MODULE,
                   network_args: Mapping[str, str] | None = None) -> dict[str, str]:
    """kohya-compatible `ss_*` and `modelspec.*` metadata, every value a string.

    LoHa/LoKr/DoRA pass `network_module="lycoris.kohya"` and LyCORIS's `network_args` (algo, factor,
    dora_wd: `NetworkSpec.kohya_network_module()/kohya_network_args()`)."""
    if arch not in BASE_MODEL_VERSION:
        raise ValueError(f"unknown arch {arch!r}")
    now = time.time()
    started = training_started_at if training_started_at is not None else now
    finished = training_finished_at if training_finished_at is not None else now
    w, h = format_resolution(resolution)
    net_args: dict[str, str] = {}
    if conv_rank:
        net_args = {"conv_dim": str(conv_rank), "conv_alpha": str(conv_alpha if conv_alpha is not None
                                                                     else conv_rank)}
    net_args.update({str(k): str(v) for k, v in (network_args or {}).items()})
    v_pred = prediction_type.startswith("v")
    meta: dict[str, Any] = {
        "ss_session_id": str(random.randint(0, 2**32 - 1)),
        "ss_output_name": output_name,
        "ss_base_model_version": base_model_version(arch, prediction_type),
        "ss_v2": str(arch == "sd2"),
        "ss_sd_model_name": sd_model_name,
        "ss_network_module": network_module,
        "ss_network_dim": str(int(rank)),
        "ss_network_alpha": str(float(alpha)),
        "ss_network_dropout": str(float(dropout)),
        "ss_resolution": f"({w}, {h})",
        "ss_num_train_images": str(int(num_train_images)),
        "ss_tag_frequency": json.dumps(dict(tag_frequency or {}), ensure_ascii=False),
        "ss_dataset_dirs": json.dumps(dict(dataset_dirs or {}), ensure_ascii=False),
        "ss_training_started_at": str(started),
        "ss_training_finished_at": str(finished),
        "ss_steps": str(int(steps)),
        "ss_epoch": str(int(epoch)),
        "ss_max_train_steps": _num(max_train_steps),
        "ss_num_epochs": _num(num_epochs),
        "ss_num_batches_per_epoch": _num(num_batches_per_epoch),
        "ss_learning_rate": str(learning_rate),
        "ss_unet_lr": _num(unet_lr if unet_lr is not None else learning_rate) if train_unet else "0",
        "ss_text_encoder_lr": (_num(text_encoder_lr if text_encoder_lr is not None else learning_rate)
                               if train_text_encoder else "0"),
        "ss_network_train_unet_only": str(not train_text_encoder),
        "ss_network_train_text_encoder_only": str(not train_unet),
        "ss_clip_skip": str(int(clip_skip)),
        "ss_seed": str(int(seed)),
        "ss_batch_size_per_device": str(int(batch_size)),
        "ss_total_batch_size": str(int(batch_size) * int(gradient_accumulation_steps)),
        "ss_gradient_accumulation_steps": str(int(gradient_accumulation_steps)),
        "ss_gradient_checkpointing": str(bool(gradient_checkpointing)),
        "ss_optimizer": optimizer,
        "ss_lr_scheduler": lr_scheduler,
        "ss_lr_warmup_steps": str(int(lr_warmup_steps)),
        "ss_mixed_precision": mixed_precision,
        "ss_noise_offset": str(noise_offset),
        "ss_min_snr_gamma": _num(min_snr_gamma),
        "ss_max_grad_norm": _num(max_grad_norm),
        "ss_enable_bucket": str(bool(enable_bucket)),
        "ss_min_bucket_reso": _num(min_bucket_reso),
        "ss_max_bucket_reso": _num(max_bucket_reso),
        "ss_keep_tokens": str(int(keep_tokens)),
        "ss_max_token_length": str(int(max_token_length)),
        "ss_caption_dropout_rate": str(caption_dropout_rate),
        "ss_cache_latents": str(bool(cache_latents)),
        "ss_v_parameterization": str(v_pred),
        "ss_training_comment": description,
        "modelspec.sai_model_spec": SAI_MODEL_SPEC,
        "modelspec.architecture": modelspec_architecture(arch, prediction_type),
        "modelspec.implementation": ("https://github.com/Stability-AI/generative-models" if arch == "sdxl"
                                     else "diffusers"),
        "modelspec.title": output_name,
        "modelspec.resolution": f"{w}x{h}",
        "modelspec.date": datetime.fromtimestamp(finished, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S"),
        "modelspec.prediction_type": "v" if v_pred else "epsilon",
        "modelspec.trigger_phrase": _trigger_text(trigger_words),
        "modelspec.description": description,
    }
    if net_args:
        meta["ss_network_args"] = json.dumps(net_args)
    if sd_model_hash:
        meta["ss_sd_model_hash"] = sd_model_hash
    for k, v in (extra or {}).items():
        meta[str(k)] = v
    return {k: v if isinstance(v, str) else (json.dumps(v) if isinstance(v, (dict, list)) else str(v))
            for k, v in meta.items()}


def sidecar_paths(lora_path: str | Path) -> tuple[Path, Path]:
    """(`<stem>.json`, `<stem>.preview.png`) beside the LoRA file, where A1111 looks for them."""
    p = Path(lora_path)
    return p.with_name(p.stem + ".json"), p.with_name(p.stem + ".preview.png")


def _png_bytes(preview: Any) -> bytes:
    from PIL import Image

    img = preview if isinstance(preview, Image.Image) else None
    if img is None:
        with Image.open(preview) as src:
            img = src.convert("RGBA" if src.mode in ("RGBA", "LA", "P") else "RGB")
            img.load()
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def write_sidecars(lora_path: str | Path, *, trigger_words: str | Iterable[str] | None = None,
                   preferred_weight: float | None = None, arch: str | None = None, description: str = "",
                   notes: str = "", preview: Any = None) -> dict[str, Path]:
    """Write `<stem>.json` (A1111 user metadata) and, given a preview, `<stem>.preview.png`; atomic.

    Keys a user already set in an existing json that we do not write are kept.
    """
    json_path, png_path = sidecar_paths(lora_path)
    data: dict[str, Any] = {}
    if json_path.is_file():
        try:
            old = json.loads(json_path.read_text(encoding="utf-8"))
            if isinstance(old, dict):
                data.update(old)
        except (OSError, ValueError):
            pass
    data["activation text"] = _trigger_text(trigger_words)
    if preferred_weight is not None:
        data["preferred weight"] = float(preferred_weight)
    if arch is not None:
        data["sd version"] = SIDECAR_SD_VERSION[arch]
    if description:
        data["description"] = description
    data.setdefault("description", "")
    if notes:
        data["notes"] = notes
    data.setdefault("notes", "")
    atomic_write_bytes(json_path, json.dumps(data, indent=4, ensure_ascii=False).encode("utf-8"))
    out = {"json": json_path}
    if preview is not None:
        atomic_write_bytes(png_path, _png_bytes(preview))
        out["preview"] = png_path
    return out
