"""The LoRA file a run writes: tensors in the save precision, kohya metadata, A1111 sidecars.

The file format and metadata keys belong to `lora_trainer.lora`; this module only gathers what a
training run knows (config, dataset, model, progress) into those functions' arguments.
"""

from __future__ import annotations

import os
import time
from functools import partial
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from lora_trainer.config import TrainConfig
    from lora_trainer.data import DatasetIndex
    from lora_trainer.lora.network import LoRANetwork
    from lora_trainer.models.base import ModelAdapter

SAVE_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def training_metadata(path: str, network: LoRANetwork, adapter: ModelAdapter, cfg: TrainConfig,
                      index: DatasetIndex, plan: dict[str, Any], *, step: int, epoch: int,
                      started_at: float) -> dict[str, str]:
    """kohya `ss_*` / `modelspec.*` metadata for the file at `path` (its stem is the alias)."""
    from lora_trainer.lora.metadata import build_metadata
    from lora_trainer.lora.metadata_flux import FLUX_KINDS, build_flux_metadata

    info = adapter.info
    extra = {k: v for k, v in adapter.metadata().items()
             if k not in ("ss_base_model_version", "ss_v2", "modelspec.prediction_type")}
    if info.arch in FLUX_KINDS:  # the flow family: its own architecture names, no ε/v prediction type
        build: Any = partial(build_flux_metadata, kind=info.arch)
    else:
        build = partial(build_metadata, arch=info.arch, prediction_type=info.prediction_type)
    return build(
        output_name=os.path.splitext(os.path.basename(path))[0], rank=network.rank,
        alpha=network.alpha, sd_model_name=info.model_name,
        sd_model_hash=info.model_hash, resolution=cfg.resolution, num_train_images=index.num_train_samples,  # x repeats, no reg images (kohya)
        tag_frequency=index.tag_frequency, dataset_dirs=index.dataset_dirs, training_started_at=started_at,
        training_finished_at=time.time(), steps=step, epoch=epoch, max_train_steps=plan.get("total_steps"),
        num_epochs=plan.get("epochs"), num_batches_per_epoch=plan.get("batches_per_epoch"),
        learning_rate=cfg.learning_rate, unet_lr=cfg.unet_lr, text_encoder_lr=cfg.text_encoder_lr,
        clip_skip=cfg.clip_skip, seed=cfg.seed, conv_rank=network.conv_rank,
        conv_alpha=network.conv_alpha if network.conv_rank else None, dropout=cfg.lora_dropout,
        batch_size=cfg.batch_size, gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        optimizer=cfg.optimizer, lr_scheduler=cfg.lr_scheduler, lr_warmup_steps=cfg.lr_warmup_steps,
        mixed_precision=cfg.mixed_precision, noise_offset=cfg.noise_offset, min_snr_gamma=cfg.min_snr_gamma,
        max_grad_norm=cfg.max_grad_norm, gradient_checkpointing=cfg.gradient_checkpointing,
        enable_bucket=cfg.enable_bucket, min_bucket_reso=cfg.min_bucket_reso, max_bucket_reso=cfg.max_bucket_reso,
        keep_tokens=cfg.keep_tokens, max_token_length=cfg.max_token_length,
        caption_dropout_rate=cfg.caption_dropout_rate, cache_latents=cfg.cache_latents,
        train_unet=cfg.train_unet, train_text_encoder=cfg.train_text_encoder,
        trigger_words=cfg.trigger_word or None, description=cfg.description, extra=extra,
        network_module=network.spec.kohya_network_module(), network_args=network.spec.kohya_network_args())


def write_lora(path: str, network: LoRANetwork, adapter: ModelAdapter, cfg: TrainConfig, index: DatasetIndex,
               plan: dict[str, Any], *, step: int, epoch: int, started_at: float, final: bool, preview: str | None = None) -> dict[str, str]:
    """Save `network` at `path` (atomic, with hashes); a final file also gets `.json` (+ `.preview.png`)."""
    from lora_trainer.lora.file import save_lora_file
    from lora_trainer.lora.metadata import write_sidecars
    from lora_trainer.lora.metadata_flux import FLUX_KINDS, save_flux_lora, write_flux_sidecars

    dtype = SAVE_DTYPES[cfg.save_precision]
    meta = training_metadata(path, network, adapter, cfg, index, plan, step=step, epoch=epoch,
                             started_at=started_at)
    kind = adapter.info.arch
    flux = kind in FLUX_KINDS
    if flux:  # separate q/k/v LoRAs written as the exactly equivalent fused BFL modules
        written = save_flux_lora(path, network.kohya_state_dict(dtype), kind=kind, metadata=meta,
                                 layout=cfg.lora_layout)
    else:
        written = save_lora_file(path, network.kohya_state_dict(dtype), meta)
    if final:
        side = dict(trigger_words=cfg.trigger_word or None, preferred_weight=cfg.preferred_weight,
                    description=cfg.description, preview=preview,
                    notes=f"trained {step} steps on {adapter.info.model_name or 'base model'}")
        if flux:
            write_flux_sidecars(path, kind=kind, **side)
        else:
            write_sidecars(path, arch=kind, **side)
    return written
