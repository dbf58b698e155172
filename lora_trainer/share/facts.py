"""What a LoRA file says about itself: name, architecture, trigger words, weight, training settings.

Read from the safetensors header (`ss_*`, `modelspec.*`) and the A1111 sidecar `<stem>.json` beside
it (which a user may have edited: it wins for trigger words, weight and description).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from lora_trainer.errors import UserError

# ss_base_model_version -> A1111 sidecar "sd version"
_SD_VERSION = {"sd_v1": "SD1", "sd_v2": "SD2", "sd_v2_v": "SD2", "sdxl_base_v1-0": "SDXL", "flux1": "Flux"}
# training settings `info` prints, in this order (metadata key, label)
TRAINING_KEYS = (("ss_sd_model_name", "base model"), ("ss_network_module", "network"),
                 ("ss_network_dim", "rank"), ("ss_network_alpha", "alpha"), ("ss_resolution", "resolution"),
                 ("ss_num_train_images", "images"), ("ss_steps", "steps"), ("ss_epoch", "epochs"),
                 ("ss_learning_rate", "learning rate"), ("ss_optimizer", "optimizer"),
                 ("ss_lr_scheduler", "scheduler"), ("ss_mixed_precision", "precision"), ("ss_seed", "seed"),
                 ("ss_clip_skip", "clip skip"), ("ss_v_parameterization", "v-prediction"))
# FLUX.1 / Chroma (flow matching): SD's clip skip and v-prediction mean nothing; these do
FLOW_KEYS = (("ss_timestep_sampling", "timestep sampling"), ("ss_discrete_flow_shift", "flow shift"),
             ("ss_guidance_scale", "train guidance"), ("ss_fp8_base", "fp8 base"))
_FLOW_VERSIONS = ("flux1", "chroma")
_SAVE_SUFFIX = re.compile(r"-\d{6}$")  # intermediate saves: name-000500


@dataclass
class LoraFacts:
    path: Path
    name: str
    architecture: str = ""  # modelspec.architecture, e.g. stable-diffusion-v1/lora
    base_model_version: str = ""  # ss_base_model_version
    sd_version: str = ""  # SD1 / SD2 / SDXL (A1111 sidecar wording)
    trigger_words: list[str] = field(default_factory=list)
    preferred_weight: float | None = None
    description: str = ""
    preview: Path | None = None
    training: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)
    shared_version: int | None = None  # set by `pull` in the sidecar: the team manifest's version
    shared_from: str = ""


def split_words(text: str) -> list[str]:
    return [w.strip() for w in (text or "").split(",") if w.strip()]


def _sidecar(path: Path) -> dict:
    side = path.with_suffix(".json")
    if not side.is_file():
        return {}
    try:
        data = json.loads(side.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"{side}: not readable JSON ({exc}); fix or delete it") from exc
    return data if isinstance(data, dict) else {}


def find_preview(path: Path) -> Path | None:
    for ext in (".preview.png", ".preview.jpeg", ".preview.jpg", ".preview.webp", ".png", ".jpg"):
        p = path.with_name(path.stem + ext)
        if p.is_file():
            return p
    return None


def read_facts(path: str | Path) -> LoraFacts:
    """Facts of one `.safetensors` LoRA (header only; the tensors are not read)."""
    from lora_trainer.lora.file import read_lora_metadata

    p = Path(path)
    if p.suffix.lower() != ".safetensors":
        raise UserError(f"{p}: only .safetensors files can be shared (pickles can run code when loaded)")
    meta = read_lora_metadata(p)
    side = _sidecar(p)
    name = meta.get("ss_output_name") or meta.get("modelspec.title") or p.stem
    name = _SAVE_SUFFIX.sub("", name) if name == p.stem else name
    words = split_words(str(side.get("activation text") or "")) or split_words(meta.get("modelspec.trigger_phrase", ""))
    weight = side.get("preferred weight")
    bmv = meta.get("ss_base_model_version", "")
    return LoraFacts(
        path=p, name=name, architecture=meta.get("modelspec.architecture", ""), base_model_version=bmv,
        sd_version=str(side.get("sd version") or _SD_VERSION.get(bmv, "")), trigger_words=words,
        preferred_weight=float(weight) if isinstance(weight, (int, float)) and weight else None,
        description=str(side.get("description") or meta.get("modelspec.description") or ""),
        preview=find_preview(p),
        training=training_settings(meta),
        metadata=meta, shared_version=side.get("version") if isinstance(side.get("version"), int) else None,
        shared_from=str(side.get("manifest") or ""))


def training_settings(meta: dict[str, str]) -> dict[str, str]:
    """{label: value} of the settings `info` prints; the network names its LyCORIS algorithm (`lycoris.kohya
    (loha)`), and a FLUX.1 / Chroma file shows its flow-matching settings instead of SD's clip skip / v-prediction."""
    keys = TRAINING_KEYS
    if meta.get("ss_base_model_version") in _FLOW_VERSIONS:
        keys = tuple(k for k in TRAINING_KEYS if k[0] not in ("ss_clip_skip", "ss_v_parameterization")) + FLOW_KEYS
    out = {label: meta[key] for key, label in keys if meta.get(key) not in (None, "", "None")}
    try:
        algo = json.loads(meta.get("ss_network_args") or "{}").get("algo")
    except (ValueError, AttributeError):
        algo = None
    if algo and "network" in out:
        out["network"] = f"{out['network']} ({algo})"
    return out
