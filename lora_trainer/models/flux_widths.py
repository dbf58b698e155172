"""The modules a FLUX.1 / Chroma network wraps, and their widths, without loading the model.

Why: the dry run counts the trainable parameters and checks a LoKr factor before 24 GB of weights load.
The transformer config comes from the built-in model, a diffusers folder's `transformer/config.json` or a
BFL-layout file's header shapes (else the shipped real config of its kind); the model is built on the
meta device and the run's own target discovery (`flux_transformer_targets`, `flux_clip_targets`) picks
the modules, so the count is the one a run gets.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lora_trainer.config import TrainConfig

Layer = tuple[int, int, int, int]  # (in, out, kernel, count): `lora.estimate`'s layer format


@dataclass(frozen=True)
class Widths:
    """What decides the transformer modules a network wraps (the run's `flux_*` settings and type)."""

    layers: tuple[str, ...] = ("attn", "mlp", "mod")
    double_blocks: str = "all"
    single_blocks: str = "all"
    fused: bool = False          # LoHa / LoKr / DoRA train BFL's fused qkv / linear1 whole


def shipped_transformer(kind: str) -> str:
    """The real `kind` model's transformer config (JSON, a cache key)."""
    from lora_trainer.models.flux_configs import constructor_config

    return json.dumps(constructor_config(f"transformer-{kind}"), sort_keys=True)


def run_transformer(cfg: TrainConfig, kind: str) -> str:
    """The run's transformer config (JSON): the built-in tiny one, a folder's config.json over the shipped one,
    a BFL-layout file's from its header shapes; the shipped real one when none of these can be read."""
    from lora_trainer.errors import ModelLoadError
    from lora_trainer.models import flux_detect, flux_tiny
    from lora_trainer.models.flux_configs import constructor_config
    from lora_trainer.models.flux_loading import BUILTIN, transformer_config_from_bfl

    base = (cfg.base_model or "").strip()
    if base in BUILTIN:
        return json.dumps(flux_tiny.transformer_config(BUILTIN[base]), sort_keys=True)
    path = os.path.expanduser(base)
    try:
        if os.path.isdir(path):
            with open(os.path.join(path, "transformer", "config.json"), encoding="utf-8") as fh:
                own = {k: v for k, v in json.load(fh).items() if not k.startswith("_") and k != "architectures"}
                return json.dumps({**constructor_config(f"transformer-{kind}"), **own},
                                  sort_keys=True)
        f = flux_detect.inspect_flux_file(path)
        if f.layout == "bfl":
            shapes = {k[len(f.prefix):]: v["shape"] for k, v in flux_detect.read_header(path).items()
                      if k.startswith(f.prefix)}
            return json.dumps(transformer_config_from_bfl(shapes, kind), sort_keys=True)
    except (OSError, ValueError, KeyError, ModelLoadError):
        pass
    return shipped_transformer(kind)


@lru_cache(maxsize=16)
def target_layers(kind: str, widths: Widths, config: str) -> list[Layer]:
    """Every transformer module the network wraps on the model of `config` (JSON), grouped by width."""
    from accelerate import init_empty_weights

    from lora_trainer.lora.discovery_flux import flux_transformer_targets
    from lora_trainer.models.flux_tiny import transformer_class

    chroma = kind == "chroma"
    with init_empty_weights():
        tr = transformer_class("chroma" if chroma else "flux")(**json.loads(config))
        return _layers(flux_transformer_targets(tr, chroma=chroma, layers=widths.layers, fused=widths.fused,
                                                double_blocks=widths.double_blocks, single_blocks=widths.single_blocks))


@lru_cache(maxsize=4)
def clip_layers(kind: str, tiny: bool = False) -> list[Layer]:
    """The CLIP-L LoRA's modules of FLUX.1 (real or the built-in tiny CLIP); none for Chroma."""
    if kind == "chroma":
        return []
    from accelerate import init_empty_weights
    from transformers import CLIPTextConfig, CLIPTextModel

    from lora_trainer.lora.discovery_flux import flux_clip_targets
    from lora_trainer.models import flux_tiny
    from lora_trainer.models.flux_configs import constructor_config

    cfg = flux_tiny.clip_config(100, 98, 99) if tiny else constructor_config("clip_l")
    with init_empty_weights():
        return _layers(flux_clip_targets(CLIPTextModel(CLIPTextConfig(**cfg))))


def _layers(targets: list[Any]) -> list[Layer]:
    """Targets grouped by (in, out) width; a "rows" target (a fused BFL module) is its stacked parts."""
    shapes: Counter[tuple[int, int]] = Counter()
    for t in targets:
        mods = t.module if t.kind == "rows" else (t.module,)
        shapes[(mods[0].in_features, sum(m.out_features for m in mods))] += 1
    return [(i, o, 1, n) for (i, o), n in sorted(shapes.items())]


def run_widths(cfg: TrainConfig, network_type: str | None = None, dora_wd: bool | None = None) -> Widths:
    """The run's `Widths` (its network type, unless a file's is given)."""
    from lora_trainer.models.flux_adapter import needs_fused_targets

    fused = needs_fused_targets(network_type or cfg.network_type, cfg.dora_wd if dora_wd is None else dora_wd)
    return Widths(tuple(cfg.flux_layers), str(cfg.flux_double_blocks), str(cfg.flux_single_blocks), fused)


def run_layers(cfg: TrainConfig, kind: str, network_type: str, dora_wd: bool, *, real: bool = False) -> dict[str, list[Layer]]:
    """{"transformer": layers, "text_encoder": layers} the run trains (each only when the run trains it; the
    text encoder only on FLUX.1): on the run's own model, or on the real `kind` model (`real`, for memory)."""
    from lora_trainer.models.flux_tiny import TEXT_WIDTH

    config = shipped_transformer(kind) if real else run_transformer(cfg, kind)
    out = {}
    if cfg.train_unet:
        out["transformer"] = target_layers(kind, run_widths(cfg, network_type, dora_wd), config)
    if cfg.train_text_encoder and kind != "chroma":  # the tiny CLIP goes with the tiny transformer's text width
        out["text_encoder"] = clip_layers(kind, json.loads(config).get("joint_attention_dim") == TEXT_WIDTH)
    return out
