"""`--dry-run`: what a run will do, computed from the config and the scan without loading a model."""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from lora_trainer.data.arch_tables import BASE_PARAMS, TEXT_ENCODERS, UNET_ATTN, UNET_CONV, lora_params
from lora_trainer.data.dataset import TrainDataset
from lora_trainer.safetensors_header import HeaderError, read_header

if TYPE_CHECKING:
    from lora_trainer.config import TrainConfig
    from lora_trainer.data.scan import DatasetIndex

# bytes per trainable parameter: fp32 weight + fp32 grad + optimizer state
_OPTIMIZER_STATE_BYTES = {"adamw": 8, "adamw8bit": 2, "lion": 4, "prodigy": 16, "sgd": 0}
# rough activation memory (GiB) of one 512x512 sample in fp16/bf16 without gradient checkpointing,
# from commonly reported kohya runs (SD1.5 batch 1 at 512 ≈ 5-6 GB total; SDXL batch 1 at 1024 ≈ 20+ GB)
_ACTIVATION_GIB_512 = {"sd1": 2.5, "sd2": 2.5, "sdxl": 4.0}


@dataclass
class Plan:
    images: int
    samples_per_epoch: int                 # images x repeats
    subsets: dict[str, dict[str, int]]     # {dir: {n_repeats, img_count}}
    buckets: dict[str, int]                # {"WxH": samples per epoch}
    batch_size: int
    gradient_accumulation_steps: int
    world_size: int
    batches_per_epoch: int                 # per process
    steps_per_epoch: int                   # optimizer steps
    epochs: int
    total_steps: int
    arch: str | None = None
    arch_source: str = ""
    trainable_params: int | None = None
    lora_modules: dict[str, int] = field(default_factory=dict)
    lora_file_mb: float | None = None
    memory_gib: float | None = None
    memory_parts_gb: dict[str, float] = field(default_factory=dict)  # FLUX.1 / Chroma: per component
    suggestions: dict[str, dict[str, Any]] = field(default_factory=dict)  # "12 GB" -> settings to try
    skipped: int = 0
    notes: list[str] = field(default_factory=list)
    network: list[str] = field(default_factory=list)  # the adapter's type and block-wise settings (train layer)

    @property
    def repeats(self) -> int:
        return self.samples_per_epoch

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _safetensors_keys(path: str) -> list[str]:
    """Tensor names from a safetensors header (8-byte length + JSON) without reading weights."""
    with open(path, "rb") as fh:
        try:
            header, _ = read_header(fh, max_len=100 * 1024 * 1024)
        except HeaderError as e:
            if e.reason == "length":
                return []
            raise
    return [k for k in header if k != "__metadata__"]


def guess_arch(cfg: TrainConfig) -> tuple[str | None, str]:
    """(arch, how it was decided) from model_type, the builtin name, the file header or a diffusers
    folder's unet/config.json; None when the model is not readable here."""
    if cfg.model_type != "auto":
        return cfg.model_type, "model_type"
    model = cfg.base_model or ""
    if model.startswith("builtin:"):
        return None, f"{model} is a tiny test model; its size is known after loading"
    try:
        if os.path.isfile(model) and model.lower().endswith(".safetensors"):
            keys = _safetensors_keys(model)
            if any(k.startswith("conditioner.embedders.1") for k in keys):
                return "sdxl", "checkpoint keys"
            if any(k.startswith("cond_stage_model.model.") for k in keys):
                return "sd2", "checkpoint keys"
            if any(k.startswith("cond_stage_model.transformer") for k in keys):
                return "sd1", "checkpoint keys"
        config_json = os.path.join(model, "unet", "config.json")
        if os.path.isfile(config_json):
            with open(config_json, encoding="utf-8") as fh:
                dim = json.load(fh).get("cross_attention_dim")
            return {768: "sd1", 1024: "sd2", 2048: "sdxl"}.get(dim), "diffusers unet/config.json"
    except (OSError, ValueError):
        pass
    name = os.path.basename(model).lower()
    if "xl" in name:
        return "sdxl", "guessed from the model name"
    if any(t in name for t in ("v2", "sd2", "2-1", "2.1", "768-v")):
        return "sd2", "guessed from the model name"
    if model:
        return "sd1", "guessed (model not readable here)"
    return None, "no base_model"


def _lora_estimate(cfg: TrainConfig, arch: str) -> tuple[int, dict[str, int]]:
    total = 0
    modules: dict[str, int] = {}
    if cfg.train_unet:
        layers = UNET_ATTN[arch] + (UNET_CONV[arch] if cfg.conv_dim > 0 else [])
        params, count = lora_params(layers, cfg.lora_rank, cfg.conv_dim)
        total += params
        modules["unet"] = count
    if cfg.train_text_encoder:
        count_te = 0
        for layers in TEXT_ENCODERS[arch]:
            params, count = lora_params(layers, cfg.lora_rank)
            total += params
            count_te += count
        modules["text_encoder"] = count_te
    return total, modules


def memory_gib(cfg: TrainConfig, arch: str, trainable: int) -> float:
    """A rough training-memory guess (GiB) for `trainable` adapter parameters on `arch`."""
    half = cfg.mixed_precision in ("fp16", "bf16")
    base = BASE_PARAMS[arch]
    weights = sum(base.values()) * (2 if half else 4)
    optimizer = trainable * (8 + _OPTIMIZER_STATE_BYTES.get(cfg.optimizer, 8))
    w, h = cfg.resolution_wh
    activations = _ACTIVATION_GIB_512[arch] * 2**30 * cfg.batch_size * (w * h) / (512 * 512)
    activations *= (1.0 if half else 2.0) * (0.35 if cfg.gradient_checkpointing else 1.0)
    overhead = 0.8 * 2**30  # CUDA context, allocator slack
    return round((weights + optimizer + activations + overhead) / 2**30, 1)


def make_plan(cfg: TrainConfig, index: DatasetIndex, arch: str | None = None, world_size: int = 1,
              dataset: TrainDataset | None = None) -> Plan:
    """Numbers for the dry run: images, repeats, buckets, steps, LoRA size and a memory guess.
    Pass `arch` when the model is already known (it then wins over the config/header guess)."""
    dataset = dataset or TrainDataset(cfg, index)
    batches = dataset.num_batches(world_size)
    steps_per_epoch = max(1, math.ceil(batches / cfg.gradient_accumulation_steps))
    if cfg.max_train_steps:
        total_steps = cfg.max_train_steps
        epochs = math.ceil(total_steps / steps_per_epoch)
    else:
        epochs = cfg.epochs
        total_steps = epochs * steps_per_epoch
    arch_source = "given"
    if arch is None:
        arch, arch_source = guess_arch(cfg)
    plan = Plan(images=index.num_images, samples_per_epoch=index.num_repeats_total, subsets=index.dataset_dirs,
                buckets=dataset.bucket_counts(), batch_size=cfg.batch_size,
                gradient_accumulation_steps=cfg.gradient_accumulation_steps, world_size=world_size,
                batches_per_epoch=batches, steps_per_epoch=steps_per_epoch, epochs=epochs, total_steps=total_steps,
                arch=arch, arch_source=arch_source, skipped=len(index.skipped), notes=list(index.notes))
    if arch in UNET_ATTN:
        trainable, modules = _lora_estimate(cfg, arch)
        plan.trainable_params = trainable
        plan.lora_modules = modules
        bytes_per = 4 if cfg.save_precision == "fp32" else 2
        plan.lora_file_mb = round(trainable * bytes_per / 1e6, 1)
        plan.memory_gib = memory_gib(cfg, arch, trainable)
    if batches * world_size * cfg.batch_size < index.num_repeats_total:
        plan.notes.append("some batches are smaller than batch_size (buckets do not divide evenly)")
    if cfg.max_train_steps and epochs > 1000:
        plan.notes.append(f"max_train_steps means {epochs} passes over this small dataset")
    return plan


def format_plan(plan: Plan) -> str:
    """The dry-run report a person reads."""
    lines = [f"images: {plan.images}  samples/epoch (with repeats): {plan.samples_per_epoch}"
             + (f"  skipped files: {plan.skipped}" if plan.skipped else "")]
    for name, info in plan.subsets.items():
        lines.append(f"  {name}: {info['img_count']} images x {info['n_repeats']} repeats")
    lines.append("buckets (samples/epoch): " + ", ".join(f"{k}: {v}" for k, v in plan.buckets.items()))
    per = f"batch {plan.batch_size} x accumulation {plan.gradient_accumulation_steps}"
    if plan.world_size > 1:
        per += f" x {plan.world_size} processes"
    lines.append(f"steps: {plan.steps_per_epoch}/epoch ({plan.batches_per_epoch} batches/epoch, {per}), "
                 f"{plan.epochs} epochs → {plan.total_steps} total steps")
    if plan.trainable_params is not None:
        modules = " + ".join(f"{v} {k.replace('_', ' ')}" for k, v in plan.lora_modules.items())
        lines.append(f"model: {plan.arch} ({plan.arch_source}); {plan.trainable_params:,} trainable parameters "
                     f"in {modules} modules, file ≈ {plan.lora_file_mb} MB")
        if plan.memory_gib is not None:  # FLUX.1 / Chroma: per component, below
            lines.append(f"memory (rough, ±50%): ≈ {plan.memory_gib} GiB on the training device")
    else:
        lines.append(f"model: {plan.arch or 'unknown'} ({plan.arch_source})")
    lines += plan.network
    if plan.memory_parts_gb:
        parts = ", ".join(f"{k.removesuffix('_gb').replace('_', ' ')} {v:.1f}" for k, v in plan.memory_parts_gb.items())
        lines.append(f"GPU memory of the real {plan.arch} weights at these settings (GB, activations not "
                     f"included; text encoders only while caching): {parts}")
        for card, settings in plan.suggestions.items():
            lines.append(f"  {card}: " + ", ".join(f"{k}: {v}" for k, v in settings.items()))
    lines += [f"note: {n}" for n in plan.notes]
    return "\n".join(lines)
