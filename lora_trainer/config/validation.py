"""Validation: every check that can fail before any data or model loads, naming the field.

Checks read a finished `TrainConfig` and never change it.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING

from lora_trainer.config.schema import BUILTIN_PREFIX, schema_fields
from lora_trainer.errors import ConfigError

if TYPE_CHECKING:
    from lora_trainer.config.schema import TrainConfig


def _err(cfg: TrainConfig, name: str, message: str) -> ConfigError:
    """ConfigError under the key as the user spelled it (alias, dotted section), else the canonical name."""
    return ConfigError(cfg.spelled.get(name, name), message)


def _check_ranges(cfg: TrainConfig) -> None:
    for f in schema_fields():
        value = getattr(cfg, f.name)
        meta = f.metadata
        if value is None:
            continue
        if meta["choices"] is not None and value not in meta["choices"]:
            options = ", ".join(str(c) for c in meta["choices"])
            close = difflib.get_close_matches(str(value), [str(c) for c in meta["choices"]], n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise _err(cfg, f.name, f"{value!r} is not one of: {options}{hint}")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if meta["gt"] is not None and not value > meta["gt"]:
            raise _err(cfg, f.name, f"must be greater than {meta['gt']:g}, got {value:g}")
        if meta["min"] is not None and value < meta["min"]:
            raise _err(cfg, f.name, f"must be at least {meta['min']:g}, got {value:g}")
        if meta["max"] is not None and value > meta["max"]:
            raise _err(cfg, f.name, f"must be at most {meta['max']:g}, got {value:g}")


def _check_resolution(cfg: TrainConfig) -> None:
    # Sides must be multiples of 64: the SD1/SD2 UNet halves the 1/8-size latent three times, so
    # 64 keeps every skip connection exact, and every standard SD/SDXL size satisfies it. Buckets
    # are finer-grained only where the user asks (bucket_reso_steps, multiple of 8 = one latent pixel).
    for side in cfg.resolution_wh:
        if side < 64 or side % 64:
            raise _err(cfg, "resolution", f"{side} is not a multiple of 64 (use e.g. 512, 768, 1024 or '832,1216')")
    if cfg.bucket_reso_steps % 8:
        raise _err(cfg, "bucket_reso_steps", f"{cfg.bucket_reso_steps} is not a multiple of 8 (latents are 1/8 size)")
    if not cfg.enable_bucket:
        return
    step = cfg.bucket_reso_steps
    for name in ("min_bucket_reso", "max_bucket_reso"):
        if getattr(cfg, name) % step:
            raise _err(cfg, name, f"{getattr(cfg, name)} is not a multiple of bucket_reso_steps ({step})")
    if cfg.min_bucket_reso > cfg.max_bucket_reso:
        raise _err(cfg, "min_bucket_reso", f"{cfg.min_bucket_reso} is larger than max_bucket_reso "
                          f"({cfg.max_bucket_reso})")
    w, h = cfg.resolution_wh
    if min(w, h) < cfg.min_bucket_reso:
        raise _err(cfg, "min_bucket_reso", f"{cfg.min_bucket_reso} is larger than the resolution side {min(w, h)}")
    if max(w, h) > cfg.max_bucket_reso:
        raise _err(cfg, "max_bucket_reso", f"{cfg.max_bucket_reso} is smaller than the resolution side {max(w, h)}")


BLOCK_SELECTION = re.compile(r"all|none|\d+(\s*-\s*\d+)?(\s*,\s*\d+(\s*-\s*\d+)?)*")


def _check_combinations(cfg: TrainConfig) -> None:
    if cfg.task_type == "text-to-image" and not (cfg.train_unet or cfg.train_text_encoder):
        raise _err(cfg, "train_unet", "both train_unet and train_text_encoder are false: nothing to train")
    if cfg.cache_text_encoder_outputs and cfg.train_text_encoder:
        raise _err(cfg, "cache_text_encoder_outputs", "cannot cache text-encoder outputs while training the text "
                          "encoder; set train_text_encoder: false")
    if cfg.cache_text_encoder_outputs and (cfg.shuffle_caption or cfg.caption_dropout_rate > 0):
        raise _err(cfg, "cache_text_encoder_outputs", "cached outputs would freeze shuffled/dropped captions; set "
                          "shuffle_caption: false and caption_dropout_rate: 0, or cache_text_encoder_outputs: false")
    if cfg.random_crop and cfg.cache_latents:
        raise _err(cfg, "random_crop", "a random crop changes each epoch and cannot be cached; set cache_latents: "
                          "false or random_crop: false")
    if cfg.cache_text_encoder_outputs_to_disk and not cfg.cache_text_encoder_outputs:
        raise _err(cfg, "cache_text_encoder_outputs_to_disk", "needs cache_text_encoder_outputs: true")
    if cfg.cache_latents_to_disk and not cfg.cache_latents:
        raise _err(cfg, "cache_latents_to_disk", "needs cache_latents: true")
    if cfg.load_in_4bit and cfg.load_in_8bit:
        raise _err(cfg, "load_in_4bit", "choose one of load_in_4bit and load_in_8bit")
    if cfg.max_train_steps is not None and cfg.lr_warmup_steps > cfg.max_train_steps:
        raise _err(cfg, "lr_warmup_steps", f"{cfg.lr_warmup_steps} warm-up steps exceed max_train_steps "
                          f"({cfg.max_train_steps})")
    if cfg.output_name and re.search(r'[\\/:*?"<>|]', cfg.output_name):
        raise _err(cfg, "output_name", f"{cfg.output_name!r} contains characters not allowed in file names")
    if cfg.validation_split > 0 and cfg.validation_data_dir:
        raise _err(cfg, "validation_split", "choose one held-out set: validation_split or validation_data_dir")
    if cfg.save_ema and cfg.ema_decay is None:
        raise _err(cfg, "save_ema", "needs ema_decay (e.g. 0.999): there are no EMA weights to save")
    if cfg.ema_on_cpu and cfg.ema_decay is None:
        raise _err(cfg, "ema_on_cpu", "needs ema_decay (e.g. 0.999)")
    _check_image_only(cfg)
    bad = sorted(set(cfg.flux_layers) - {"attn", "mlp", "mod"})
    if bad:
        raise _err(cfg, "flux_layers", f"unknown layer kind(s) {', '.join(map(str, bad))}; choose from attn, mlp, mod")
    for name in ("flux_double_blocks", "flux_single_blocks"):
        text = str(getattr(cfg, name) or "all").strip().lower()
        if text and not BLOCK_SELECTION.fullmatch(text):
            raise _err(cfg, name, f"{getattr(cfg, name)!r}: use all, none, or block indices like 0-9,12")
    if cfg.model_type in ("sd1", "sd2", "sdxl"):
        for name in ("fp8_base", "blocks_to_swap", "guidance_scale_train", "clip_l_path", "t5xxl_path"):
            if getattr(cfg, name):
                raise _err(cfg, name, f"is for FLUX.1 / Chroma models, but model_type is {cfg.model_type}; "
                                      "remove it or set model_type: auto")
    if cfg.guidance_scale_train is not None and cfg.model_type == "chroma":
        raise _err(cfg, "guidance_scale_train", "Chroma has no guidance input (only FLUX.1-dev has); leave it empty")
    if not cfg.caption_extension or cfg.caption_extension in (".", ".png", ".jpg", ".jpeg", ".webp", ".bmp"):
        raise _err(cfg, "caption_extension", f"{cfg.caption_extension!r} cannot be a caption file extension")


def _check_image_only(cfg: TrainConfig) -> None:
    """Options of image datasets that an LLM run would silently ignore."""
    if cfg.task_type != "text-to-image":
        for name in ("reg_data_dir", "validation_data_dir"):
            if getattr(cfg, name):
                raise _err(cfg, name, f"is for image LoRAs (task_type text-to-image); remove it for {cfg.task_type}")
        if cfg.validation_split > 0 or cfg.alpha_mask:
            name = "validation_split" if cfg.validation_split > 0 else "alpha_mask"
            raise _err(cfg, name, f"is for image LoRAs (task_type text-to-image); remove it for {cfg.task_type}")


def _check_paths(cfg: TrainConfig, require: Iterable[str]) -> None:
    for name in require:
        if not getattr(cfg, name):
            raise _err(cfg, name, "is required; set it in the config or with --set "
                              f"{name}=...")
    for f in schema_fields():
        kind = f.metadata["path"]
        value = getattr(cfg, f.name)
        if not kind or not value or kind == "new":
            continue
        if kind == "model" and (value.startswith(BUILTIN_PREFIX) or not os.path.isabs(value)):
            continue  # builtin:… or a hub id (left relative by _resolve_path)
        if kind == "resume" and value == "latest":
            continue
        if kind == "dir" and not os.path.isdir(value):
            raise _err(cfg, f.name, f"folder not found: {value}")
        if kind == "file" and not os.path.isfile(value):
            raise _err(cfg, f.name, f"file not found: {value}")
        if kind in ("any", "model", "resume") and not os.path.exists(value):
            raise _err(cfg, f.name, f"path not found: {value}")
    if cfg.task_type == "text-to-image" and cfg.train_data_dir and not os.path.isdir(cfg.train_data_dir):
        raise _err(cfg, "train_data_dir", f"must be a folder of images: {cfg.train_data_dir}")
    if cfg.output_dir and os.path.isfile(cfg.output_dir):
        raise _err(cfg, "output_dir", f"is a file, not a folder: {cfg.output_dir}")


BLOCK_LISTS = ("block_dims", "block_alphas", "conv_block_dims", "conv_block_alphas", "block_lr_weight")


def _check_network(cfg: TrainConfig) -> None:
    """What the adapter settings say on their own (a LoKr factor against the model's widths is
    checked when the architecture is known: the dry run / before the model loads)."""
    if cfg.task_type != "text-to-image" and cfg.network_type != "lora":
        raise _err(cfg, "network_type", f"{cfg.network_type} is for image models; {cfg.task_type} trains a PEFT "
                                        "LoRA (network_type: lora)")
    if cfg.lora_layout == "peft" and (cfg.network_type in ("loha", "lokr", "dora") or cfg.dora_wd):
        raise _err(cfg, "lora_layout", f"the diffusers/PEFT layout holds plain LoRA only, not {cfg.network_type}"
                                       f"{' with dora_wd' if cfg.dora_wd else ''}; set lora_layout: kohya")
    if cfg.lokr_factor == 0:
        raise _err(cfg, "lokr_factor", "0 is not a factor; use -1 (the most square split) or a number > 0")
    for name in BLOCK_LISTS:
        values = getattr(cfg, name)
        if values and len(values) not in (23, 25):
            raise _err(cfg, name, f"has {len(values)} values; kohya's layout needs 25 (SD1/SD2: IN00-IN11, MID, "
                                  "OUT00-OUT11) or 23 (SDXL)")
        if any(v < 0 for v in values):
            raise _err(cfg, name, "values must be >= 0")
    lengths = {len(getattr(cfg, n)) for n in BLOCK_LISTS if getattr(cfg, n)}
    if len(lengths) > 1:
        raise _err(cfg, "block_dims", "the block lists have different lengths "
                                      f"({', '.join(f'{n} {len(getattr(cfg, n))}' for n in BLOCK_LISTS if getattr(cfg, n))})")


DEVICE_PATTERN = re.compile(r"auto|cpu|mps|(cuda|xpu)(:\d+)?")


def _check_device(cfg: TrainConfig) -> None:
    """A device torch understands; whether it exists here is checked before training (not at load:
    a config may be written on one machine and run on another)."""
    if not DEVICE_PATTERN.fullmatch(cfg.device.strip().lower()):
        raise _err(cfg, "device", f"{cfg.device!r} is not a device; use auto, cpu, cuda, cuda:N (a GPU index) or mps")


def validate_config(cfg: TrainConfig, *, check_paths: bool = True,
                    require: Iterable[str] = ("train_data_dir", "base_model")) -> None:
    """Fail fast, before any data or model loads, with the field that is wrong."""
    _check_ranges(cfg)
    _check_device(cfg)
    _check_resolution(cfg)
    _check_combinations(cfg)
    _check_network(cfg)
    if check_paths:
        _check_paths(cfg, require)
