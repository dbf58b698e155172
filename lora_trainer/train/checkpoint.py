"""Checkpoints: LoRA files (intermediate, final, keep-last-K) and the full resumable training state.

A state is a folder `<name>-<step:06d>-state/` written to a temp folder and renamed into place, so a
crash mid-write never leaves a half state that `resume_from_checkpoint: latest` would pick up:
  lora.safetensors    the LoRA in fp32 (kohya keys), exactly what training continues from
  optimizer.pt        optimizer / scheduler / GradScaler state dicts (tensors + plain types only,
                      read back with torch.load(weights_only=True))
  rng.pt              torch (CPU and CUDA) RNG states
  trainer_state.json  step, epoch, data position, python/numpy RNG, config and its hash
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import tempfile
from typing import Any

import numpy as np
import torch

from lora_trainer.errors import ConfigError

STATE_SUFFIX = "-state"
STATE_FORMAT = 1
# config keys that do not change what training computes (a resume may change them freely)
_VOLATILE_KEYS = {
    "output_dir", "output_name", "resume_from_checkpoint", "logging_dir", "save_steps", "save_every_n_epochs",
    "save_last_n", "save_state", "save_precision", "epochs", "max_train_steps", "sample_prompts",
    "sample_every_n_steps", "sample_every_n_epochs", "sample_steps", "sample_seed", "sample_width",
    "sample_height", "sample_guidance", "description", "preferred_weight", "num_workers", "device",
    "cache_latents", "cache_latents_to_disk", "cache_text_encoder_outputs", "model_cache_dir",
}


def lora_path(output_dir: str, name: str, step: int | None = None) -> str:
    """`name.safetensors` (final) or `name-000100.safetensors` (intermediate: Forge caches by file name)."""
    stem = name if step is None else f"{name}-{step:06d}"
    return os.path.join(output_dir, stem + ".safetensors")


def state_path(output_dir: str, name: str, step: int) -> str:
    return os.path.join(output_dir, f"{name}-{step:06d}{STATE_SUFFIX}")


def config_hash(config: dict[str, Any]) -> str:
    """Hash of the settings that change the computation (not output paths, save or sample settings)."""
    kept = {k: v for k, v in sorted(config.items()) if k not in _VOLATILE_KEYS}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:16]


def config_diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    keys = (set(old) | set(new)) - _VOLATILE_KEYS
    return sorted(k for k in keys if json.dumps(old.get(k), default=str) != json.dumps(new.get(k), default=str))


def rng_snapshot() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """RNG states: tensors (for rng.pt) and JSON-able python/numpy states."""
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda{i}"] = s
    py = random.getstate()
    npst = np.random.get_state()
    plain = {"python": [py[0], list(py[1]), py[2]],
             "numpy": [npst[0], npst[1].tolist(), int(npst[2]), int(npst[3]), float(npst[4])]}
    return tensors, plain


def rng_restore(tensors: dict[str, torch.Tensor], plain: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["torch"])
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            if f"cuda{i}" in tensors:
                torch.cuda.set_rng_state(tensors[f"cuda{i}"], i)
    if "python" in plain:
        v, st, g = plain["python"]
        random.setstate((v, tuple(st), g))
    if "numpy" in plain:
        name, keys, pos, has_g, cached = plain["numpy"]
        np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_g, cached))


def atomic_dir_write(final: str, write: Any) -> None:
    """Build a folder with `write(tmp_dir)` and rename it into place (replacing an old one)."""
    parent = os.path.dirname(os.path.abspath(final))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-" + os.path.basename(final) + "-", dir=parent)
    try:
        write(tmp)
        if os.path.exists(final):
            old = final + ".old"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def save_state(path: str, *, lora_state: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer,
               scheduler: Any, scaler: Any, step: int, epoch: int, position: int,
               config: dict[str, Any], extra: dict[str, Any] | None = None) -> str:
    """Write the full resumable state folder atomically; returns its path."""
    from safetensors.torch import save_file

    tensors, plain = rng_snapshot()
    meta = {"format": STATE_FORMAT, "step": step, "epoch": epoch, "position": position,
            "config_hash": config_hash(config), "config": config, "rng": plain, **(extra or {})}

    def write(tmp: str) -> None:
        save_file({k: v.detach().float().cpu().contiguous() for k, v in lora_state.items()},
                  os.path.join(tmp, "lora.safetensors"))
        torch.save({"optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict() if scheduler is not None else None,
                    "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None},
                   os.path.join(tmp, "optimizer.pt"))
        torch.save(tensors, os.path.join(tmp, "rng.pt"))
        with open(os.path.join(tmp, "trainer_state.json"), "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=1, default=str)

    atomic_dir_write(path, write)
    return path


def _state_step(path: str) -> int:
    try:
        with open(os.path.join(path, "trainer_state.json"), encoding="utf-8") as f:
            return int(json.load(f)["step"])
    except (OSError, ValueError, KeyError):
        return -1


def list_states(output_dir: str, name: str | None = None) -> list[str]:
    """Complete state folders in `output_dir`, oldest step first."""
    if not os.path.isdir(output_dir):
        return []
    pat = re.compile(rf"^{re.escape(name) if name else '.+'}-\d{{6,}}{STATE_SUFFIX}$")
    found = [os.path.join(output_dir, d) for d in os.listdir(output_dir) if pat.match(d)]
    found = [p for p in found if _state_step(p) >= 0]
    return sorted(found, key=_state_step)


def resolve_resume(value: str, output_dir: str, name: str) -> str:
    """`resume_from_checkpoint` → a state folder; "latest" picks the highest step in output_dir."""
    if str(value).strip().lower() == "latest":
        states = list_states(output_dir, name) or list_states(output_dir)
        if not states:
            raise ConfigError("resume_from_checkpoint",
                              f"'latest' found no saved state (*{STATE_SUFFIX}/) in {output_dir}; "
                              "train with save_state: true first, or give a state folder path")
        return states[-1]
    path = os.path.abspath(os.path.expanduser(str(value)))
    if os.path.isfile(path) and os.path.basename(path) == "trainer_state.json":
        path = os.path.dirname(path)
    if not os.path.isfile(os.path.join(path, "trainer_state.json")):
        raise ConfigError("resume_from_checkpoint",
                          f"{path} is not a training state folder (no trainer_state.json); "
                          f"give a '<name>-<step>{STATE_SUFFIX}' folder or 'latest'")
    return path


def load_state(path: str) -> dict[str, Any]:
    """Read a state folder (safely: safetensors + weights_only torch.load)."""
    from safetensors.torch import load_file

    with open(os.path.join(path, "trainer_state.json"), encoding="utf-8") as f:
        meta = json.load(f)
    if meta.get("format") != STATE_FORMAT:
        raise ConfigError("resume_from_checkpoint", f"{path}: unsupported state format {meta.get('format')}")
    meta["lora"] = load_file(os.path.join(path, "lora.safetensors"))
    meta["optim"] = torch.load(os.path.join(path, "optimizer.pt"), map_location="cpu", weights_only=True)
    meta["rng_tensors"] = torch.load(os.path.join(path, "rng.pt"), map_location="cpu", weights_only=True)
    return meta


def prune(output_dir: str, name: str, keep: int | None, keep_states: int | None = None) -> list[str]:
    """Keep only the newest `keep` intermediate LoRA files (all when None) and the newest `keep_states`
    state folders (default: `keep`); returns what was removed."""
    if not os.path.isdir(output_dir):
        return []
    removed: list[str] = []
    if keep and keep > 0:
        pat = re.compile(rf"^{re.escape(name)}-(\d{{6,}})\.safetensors$")
        files = sorted((int(m.group(1)), f) for f in os.listdir(output_dir) if (m := pat.match(f)))
        for _, f in files[:-keep]:
            full = os.path.join(output_dir, f)
            stem = full[: -len(".safetensors")]
            for side in (full, stem + ".json", stem + ".preview.png"):
                if os.path.exists(side):
                    os.remove(side)
            removed.append(full)
    keep_states = keep_states if keep_states is not None else keep
    if keep_states and keep_states > 0:
        for st in list_states(output_dir, name)[:-keep_states]:
            shutil.rmtree(st, ignore_errors=True)
            removed.append(st)
    return removed


_atomic_dir_write = atomic_dir_write  # old name, used by lora_trainer.llm
