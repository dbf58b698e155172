"""The adapter a run trains, from its config: the `NetworkSpec`, its checks, its dry-run lines, the network.

Why here: the config cannot import `lora` (layer order) and the data area's plan must not either,
so the one translation config → `NetworkSpec` sits in the training layer, used by the dry run
(before any model: unknown type, bad block lists and — when the architecture is known — a LoKr
factor that does not divide a width fail in one line) and by the run that builds the network.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from lora_trainer.errors import ConfigError

if TYPE_CHECKING:
    from lora_trainer.config import TrainConfig
    from lora_trainer.data import Plan
    from lora_trainer.lora.network import LoRANetwork
    from lora_trainer.lora.spec import NetworkSpec
    from lora_trainer.lora.target import LoraTarget
    from lora_trainer.models.base import ModelAdapter


def network_spec(cfg: TrainConfig) -> NetworkSpec:
    """The run's `NetworkSpec` (type, ranks, LoKr/DoRA options, block-wise rules) as the config says."""
    from lora_trainer.lora.spec import NetworkSpec, rules_from_raw

    return NetworkSpec(
        network_type=cfg.network_type, rank=cfg.lora_rank, alpha=cfg.lora_alpha, conv_rank=cfg.conv_dim,
        conv_alpha=cfg.conv_alpha, dropout=cfg.lora_dropout, lokr_factor=cfg.lokr_factor,
        lokr_full_rank=cfg.lokr_full_rank, dora_wd=cfg.dora_wd, include=tuple(cfg.network_include),
        exclude=tuple(cfg.network_exclude), rules=rules_from_raw(cfg.network_blocks),
        block_dims=tuple(cfg.block_dims), block_alphas=tuple(cfg.block_alphas),
        conv_block_dims=tuple(cfg.conv_block_dims), conv_block_alphas=tuple(cfg.conv_block_alphas),
        block_lr_weight=tuple(cfg.block_lr_weight))


def _block_count(arch: str | None) -> int | None:
    return {"sd1": 25, "sd2": 25, "sdxl": 23}.get(arch or "")


def _flux_layers(cfg: TrainConfig, arch: str | None, spec: NetworkSpec) -> dict[str, list[Any]] | None:
    """{part: layers} a FLUX.1 / Chroma run wraps, at its model's widths read without loading it
    (`models.flux_widths`), or None for another architecture."""
    if arch not in ("flux-dev", "flux-schnell", "chroma"):
        return None
    from lora_trainer.models.flux_widths import run_layers

    return run_layers(cfg, arch, spec.network_type, spec.dora_wd)


def check_network(cfg: TrainConfig, arch: str | None) -> NetworkSpec:
    """The spec, validated against `arch`'s widths and block layout when the architecture is known."""
    from lora_trainer.lora.estimate import arch_dims

    spec = network_spec(cfg)
    _check_weights_file(cfg.network_weights)
    flux = _flux_layers(cfg, arch, spec) if spec.network_type == "lokr" and spec.lokr_factor > 0 else None
    if flux is not None:  # FLUX.1 / Chroma: refused here, not after a 24 GB load
        spec.validate({d for layers in flux.values() for fan_in, fan_out, _, _ in layers for d in (fan_in, fan_out)})
    else:
        spec.validate(arch_dims(arch) if _block_count(arch) else ())
    count = _block_count(arch)
    for name in ("block_dims", "block_alphas", "conv_block_dims", "conv_block_alphas", "block_lr_weight"):
        values = getattr(spec, name)
        if count and values and len(values) != count:
            raise ConfigError(name, f"has {len(values)} values but {arch} has {count} kohya blocks")
    return spec


def _check_weights_file(path: str | None) -> None:
    """`network_weights` must be a readable .safetensors file: its header is read now (a few bytes), so
    a wrong or damaged file is named before the model loads, not after."""
    if not path or os.path.isdir(path):
        return
    from lora_trainer.lora.file import LoRAFileError, read_lora_metadata

    try:
        read_lora_metadata(path)
    except LoRAFileError as exc:
        raise ConfigError("network_weights", str(exc)) from exc


def _spec_of_weights_file(cfg: TrainConfig, spec: NetworkSpec, arch: str | None) -> NetworkSpec:
    """The spec the run will train when it continues from `network_weights`: the file's type, ranks and
    DoRA flag (as `build_network` takes them, a FLUX.1 file read through its own reader: kohya or PEFT
    layout), so the plan's type and estimate are the file's. A file the plan cannot read this way keeps
    the config's spec here; the run's loader names what is wrong with it."""
    path = cfg.network_weights
    if not path or not os.path.isfile(path):
        return spec
    from lora_trainer.lora.file import LoRAFileError, load_lora_file
    from lora_trainer.lora.infer import spec_from_weights
    from lora_trainer.lora.metadata_flux import FLUX_KINDS, load_flux_lora
    from lora_trainer.lora.network import LoRAWeightsError

    try:
        sd = load_flux_lora(path)[0] if arch in FLUX_KINDS else load_lora_file(path)[0]
        return spec_from_weights(sd, spec)
    except (LoRAFileError, LoRAWeightsError):
        return spec


def describe(spec: NetworkSpec) -> str:
    """One line: the type and its ranks, as the plan and the log show it."""
    parts = [f"network: {spec.network_type}, rank {spec.rank}, alpha {spec.effective_alpha:g}"]
    if spec.effective_conv_rank:
        parts.append(f"conv rank {spec.effective_conv_rank}, conv alpha {spec.effective_conv_alpha:g}")
    if spec.network_type == "lokr":
        parts.append(f"factor {spec.lokr_factor}" + (", full rank" if spec.lokr_full_rank else ""))
    if spec.weight_decompose and spec.network_type != "dora":
        parts.append("DoRA magnitude")
    return ", ".join(parts)


def add_to_plan(plan: Plan, cfg: TrainConfig) -> NetworkSpec:
    """Check the network before any model loads and put its lines (and, for LoHa/LoKr/DoRA, its own
    parameter estimate) into the dry-run plan."""
    from lora_trainer.data.arch_tables import TEXT_ENCODERS, UNET_ATTN, UNET_CONV
    from lora_trainer.data.plan import memory_gib
    from lora_trainer.lora.blocks import spec_plan_lines
    from lora_trainer.lora.estimate import adapter_params

    spec = check_network(cfg, plan.arch)
    spec = _spec_of_weights_file(cfg, spec, plan.arch)
    plan.network = [describe(spec), *spec_plan_lines(spec)]
    if plan.arch in UNET_ATTN and plan.trainable_params is not None and spec.network_type != "lora":
        total, modules = 0, {}
        conv = spec.effective_conv_rank > 0 or bool(spec.conv_block_dims)
        if cfg.train_unet:
            params, modules["unet"] = adapter_params(spec, UNET_ATTN[plan.arch] + (UNET_CONV[plan.arch] if conv else []))
            total += params
        if cfg.train_text_encoder:
            modules["text_encoder"] = 0
            for layers in TEXT_ENCODERS[plan.arch]:
                params, count = adapter_params(spec, layers)
                total += params
                modules["text_encoder"] += count
        plan.trainable_params, plan.lora_modules = total, modules
        plan.lora_file_mb = round(total * (4 if cfg.save_precision == "fp32" else 2) / 1e6, 1)
        plan.memory_gib = round(memory_gib(cfg, plan.arch, total) + _delta_gib(cfg, spec, plan.arch, conv), 1)
    flux = _flux_layers(cfg, plan.arch, spec)
    if flux is not None:  # the transformer's modules (and CLIP-L's, FLUX.1) at this type's widths
        counts = {part: adapter_params(spec, layers) for part, layers in flux.items()}
        plan.trainable_params = sum(n for n, _ in counts.values())
        plan.lora_modules = {part: m for part, (_, m) in counts.items()}
        plan.lora_file_mb = round(plan.trainable_params * (4 if cfg.save_precision == "fp32" else 2) / 1e6, 1)
    if _block_wise(spec):
        plan.notes.append("the parameter estimate counts every module at lora_rank / conv_dim (block-wise "
                          "settings are resolved when the model loads; the log lists them)")
    return spec


def _delta_gib(cfg: TrainConfig, spec: NetworkSpec, arch: str, conv: bool) -> float:
    """GiB of the full-size deltas a LoHa / LoKr / DoRA keeps during an SD step (`estimate.delta_copies`):
    every wrapped weight's; with gradient checkpointing about one of the kohya blocks' share of the UNet's."""
    from lora_trainer.data.arch_tables import TEXT_ENCODERS, UNET_ATTN, UNET_CONV
    from lora_trainer.lora.estimate import delta_copies, layer_weights

    copies = delta_copies(spec)
    if not copies:
        return 0.0
    unet = layer_weights(UNET_ATTN[arch] + (UNET_CONV[arch] if conv else [])) if cfg.train_unet else 0
    if cfg.gradient_checkpointing:
        unet //= _block_count(arch) or 1
    te = sum(layer_weights(layers) for layers in TEXT_ENCODERS[arch]) if cfg.train_text_encoder else 0
    return round(copies * (unet + te) * 4 / 2**30, 1)


def _block_wise(spec: NetworkSpec) -> bool:
    return bool(spec.block_dims or spec.block_alphas or spec.conv_block_dims or spec.conv_block_alphas
                or spec.block_lr_weight or spec.rules or spec.include or spec.exclude)


def _widths(plans: list[Any]) -> set[int]:
    """In/out widths of the targets a run trains (quantised Forge Linears keep theirs in quant_state)."""
    from torch import nn

    out: set[int] = set()
    for p in plans:
        mod = p.target.module
        if p.target.kind == "rows":  # Linears stacked into one fused weight: its in and out widths
            out.update({int(mod[0].weight.shape[1]), sum(int(m.weight.shape[0]) for m in mod)})
            continue
        if isinstance(mod, nn.MultiheadAttention):
            out.add(int(mod.embed_dim))
            continue
        w = getattr(mod, "weight", None)
        shape = getattr(getattr(w, "quant_state", None), "shape", None) or getattr(w, "shape", ())
        out.update(int(d) for d in tuple(shape)[:2])
    return out


def check_weights_family(cfg: TrainConfig, family: str) -> None:
    """Dry run: refuse a `network_weights` LoRA made for the other family ("flux" | "sd") from its header's key
    names, before any model loads. A run on the WebUI's loaded model (no base_model) is checked at load."""
    path = cfg.network_weights
    if not path or not (cfg.base_model or "").strip() or not path.lower().endswith(".safetensors"):
        return
    from lora_trainer.errors import ModelLoadError
    from lora_trainer.lora.flux_format import check_lora_family
    from lora_trainer.models.flux_detect import read_header

    try:
        keys = set(read_header(os.path.expanduser(path)))
    except (OSError, ValueError, ModelLoadError):
        return  # unreadable: the loader names it
    check_lora_family(keys, family, f"network_weights {path}")


def _read_weights(ad: ModelAdapter, path: str) -> dict[str, Any]:
    """A LoRA file in the network's own key layout: a FLUX.1 / Chroma file's fused modules split back per
    trained module (diffusers modules; on Forge's fused modules they stay as they are); an SD model refuses
    a Flux file (and the Flux loader an SD one) in one line."""
    from lora_trainer.lora.file import load_lora_file
    from lora_trainer.lora.flux_format import check_lora_family
    from lora_trainer.lora.metadata_flux import FLUX_KINDS, load_flux_lora

    if ad.info.arch in FLUX_KINDS and ad.info.extra.get("host") != "forge":
        return load_flux_lora(path)[0]
    sd, _ = load_lora_file(path)
    if ad.info.arch in FLUX_KINDS:  # Forge's own BFL-layout modules: the file's kohya keys are their names
        check_lora_family(sd.keys(), "flux", f"network_weights {path}")
        return sd
    check_lora_family(sd.keys(), "sd", f"network_weights {path}")
    return sd


def build_network(ad: ModelAdapter, cfg: TrainConfig, train_te: bool,
                  log: Callable[..., None]) -> tuple[LoRANetwork, dict[str, Any] | None]:
    """The run's network on `ad`'s targets (not attached), and the `network_weights` file it continues
    from (None without one). A file sets the type, ranks and DoRA flag (read from its tensors)."""
    from lora_trainer.lora.blocks import plan_lines, resolve_targets
    from lora_trainer.lora.infer import spec_from_weights
    from lora_trainer.lora.network import LoRANetwork

    spec = network_spec(cfg).validate()  # widths: the model's own, below
    weights = None
    if cfg.network_weights:
        weights = _read_weights(ad, cfg.network_weights)
        from_file = spec_from_weights(weights, spec)
        if from_file.network_type != spec.network_type and "network_type" in cfg.spelled:
            log(f"network_weights is a {from_file.network_type} file; training it as {from_file.network_type} "
                f"(network_type: {spec.network_type} ignored)", "warning")
        spec = from_file
    from lora_trainer.models.flux_adapter import lora_targets_for

    targets: list[LoraTarget] = lora_targets_for(ad, spec.network_type, spec.dora_wd, unet=cfg.train_unet,
                                                 text_encoder=train_te,
                                                 conv=spec.effective_conv_rank > 0 or bool(spec.conv_block_dims))
    if not targets:
        raise ConfigError("train_unet", "nothing to train: no LoRA target modules (train_unet and "
                                        "train_text_encoder are both off?)")
    plans = resolve_targets(targets, spec)
    if not plans:
        raise ConfigError("network_include", "no module of this model is left to train (check network_include, "
                                             "network_exclude, network_blocks and the block lists)")
    spec.validate(_widths(plans))
    network = LoRANetwork.from_spec(targets, spec)
    if weights is not None:  # the file set the type and ranks: say what is trained (the plan said the config's)
        log(describe(spec))
    if _block_wise(spec):
        for line in plan_lines(network.plans.values(), cfg.effective_unet_lr, cfg.effective_text_encoder_lr):
            log(line)
    return network, weights
