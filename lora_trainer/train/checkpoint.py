"""Checkpoints: LoRA files (intermediate, final, keep-last-K) and the full resumable training state.

A state is a folder `<name>-<step:06d>-state/` written to a temp folder and renamed into place, so a
crash mid-write never leaves a half state that `resume_from_checkpoint: latest` would pick up. It
holds no pickle (a pickle can run code when read; the WebUI's safe unpickler refuses torch.save files):
  lora.safetensors     the LoRA in fp32 (kohya keys), exactly what training continues from
  optimizer.safetensors + optimizer.json   optimizer / scheduler / GradScaler state dicts
                       (tensors, and the rest as JSON: see train/state_io.py)
  rng.safetensors      torch (CPU and CUDA) RNG states
  trainer_state.json   step, epoch, data position, python/numpy RNG, config and its hash
States of format 1 (optimizer.pt, rng.pt from torch.save) still resume: they are read with
torch's weights-only loader, never a full unpickle.
A state that cannot be read is reported in one line naming the file; resuming then falls back to the
newest older good state of the same run, with a warning.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from lora_trainer.atomic import atomic_dir
from lora_trainer.errors import ConfigError
from lora_trainer.train import state_io

STATE_SUFFIX = "-state"
STATE_FORMAT = 2
_READABLE_FORMATS = (1, 2)  # 1: optimizer.pt + rng.pt (torch.save), read with weights_only=True
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
    """RNG states: tensors (for rng.safetensors) and JSON-able python/numpy states."""
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


class StateError(ConfigError):
    """A saved state cannot be read; the message names the file and what is wrong with it."""

    def __init__(self, message: str):
        super().__init__("resume_from_checkpoint", message)


def save_state(path: str, *, lora_state: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer,
               scheduler: Any, scaler: Any, step: int, epoch: int, position: int,
               config: dict[str, Any], extra: dict[str, Any] | None = None,
               ema: dict[str, torch.Tensor] | None = None) -> str:
    """Write the full resumable state folder atomically; returns its path. `ema`: the EMA weights
    (`ema.safetensors`, only when the run keeps an EMA)."""
    from safetensors.torch import save_file

    tensors, plain = rng_snapshot()
    meta = {"format": STATE_FORMAT, "step": step, "epoch": epoch, "position": position,
            "config_hash": config_hash(config), "config": config, "rng": plain, **(extra or {})}

    def write(tmp: str) -> None:
        save_file({k: v.detach().float().cpu().contiguous() for k, v in lora_state.items()},
                  os.path.join(tmp, "lora.safetensors"))
        state_io.write_tree(tmp, "optimizer", {
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None})
        save_file(tensors, os.path.join(tmp, "rng.safetensors"))
        if ema is not None:
            save_file({k: v.detach().float().cpu().contiguous() for k, v in ema.items()},
                      os.path.join(tmp, "ema.safetensors"))
        with open(os.path.join(tmp, "trainer_state.json"), "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=1, default=str)

    atomic_dir(path, write)
    return path


_STATE_RE = re.compile(rf"^(?P<name>.+)-(?P<step>\d{{6,}}){STATE_SUFFIX}$")


def _folder_step(path: str) -> int:
    m = _STATE_RE.match(os.path.basename(path.rstrip(os.sep)))
    return int(m.group("step")) if m else -1


def list_states(output_dir: str, name: str | None = None) -> list[str]:
    """State folders in `output_dir` (complete ones: a state is renamed into place whole), oldest
    step first. Readable or not: `resolve_resume` reports a bad one and falls back."""
    if not os.path.isdir(output_dir):
        return []
    found = []
    for d in os.listdir(output_dir):
        m = _STATE_RE.match(d)
        if m and (name is None or m.group("name") == name) and os.path.isdir(os.path.join(output_dir, d)):
            found.append(os.path.join(output_dir, d))
    return sorted(found, key=_folder_step)


def resolve_resume(value: str, output_dir: str, name: str,
                   warn: Callable[[str], None] | None = None) -> str:
    """`resume_from_checkpoint` → a readable state folder; "latest" picks the highest step in output_dir.

    A state that cannot be read (missing or corrupt file) is skipped for the newest older good state
    of the same run, and `warn` gets one line naming the bad file; with no good state left, the
    error names the bad file. Checked here, before any model loads."""
    if str(value).strip().lower() == "latest":
        states = list_states(output_dir, name) or list_states(output_dir)
        if not states:
            raise ConfigError("resume_from_checkpoint",
                              f"'latest' found no saved state (*{STATE_SUFFIX}/) in {output_dir}; "
                              "train with save_state: true first, or give a state folder path")
    else:
        path = os.path.abspath(os.path.expanduser(str(value)))
        if os.path.basename(path) == "trainer_state.json":
            path = os.path.dirname(path)
        if not os.path.isdir(path):
            raise ConfigError("resume_from_checkpoint",
                              f"{path} is not a training state folder; "
                              f"give a '<name>-<step>{STATE_SUFFIX}' folder or 'latest'")
        m = _STATE_RE.match(os.path.basename(path))
        older = [p for p in list_states(os.path.dirname(path), m.group("name"))
                 if _folder_step(p) < _folder_step(path)] if m else []
        states = [*older, path]
    first_error: StateError | None = None
    for candidate in reversed(states):
        try:
            load_state(candidate)
        except StateError as exc:
            first_error = first_error or exc
            continue
        if first_error is not None and warn is not None:
            warn(f"{_bare(first_error)}; resuming from the previous good state {os.path.basename(candidate)}")
        return candidate
    assert first_error is not None
    if len(states) > 1:
        raise StateError(f"{_bare(first_error)} (and no older state of this run could be read either)")
    raise first_error


def _bare(exc: ConfigError) -> str:
    return str(exc).removeprefix(f"config '{exc.field}': ")


def _read_json(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise StateError(f"{path} is missing; this state cannot be resumed") from None
    except (OSError, ValueError) as exc:
        raise StateError(f"{path} is corrupt ({state_io.short_error(exc)}); this state cannot be resumed") from None
    if not isinstance(data, dict):
        raise StateError(f"{path} is not a JSON object; this state cannot be resumed")
    return data


def _read_file(path: str, read: Callable[[], Any]) -> Any:
    """`read()`, with any failure reported as one line naming `path`."""
    if not os.path.isfile(path):
        raise StateError(f"{path} is missing; this state cannot be resumed")
    try:
        return read()
    except Exception as exc:  # safetensors, JSON, zip and weights-only errors all mean "corrupt"
        raise StateError(f"{path} is corrupt ({state_io.short_error(exc)}); this state cannot be resumed") from None


def _weights_only_load(path: str) -> Any:
    """A format-1 `.pt`: torch's weights-only loader (tensors and plain types; never runs code).
    `torch.serialization.load` is the loader itself: the WebUI replaces `torch.load` with its own
    checker, which refuses files written by recent torch versions."""
    return torch.serialization.load(path, map_location="cpu", weights_only=True)


def load_state(path: str) -> dict[str, Any]:
    """Read a state folder: trainer_state.json plus `lora`, `optim` (optimizer / scheduler / scaler
    state dicts), `rng_tensors` and `ema` (None when the run kept no EMA). Raises StateError naming the
    file that cannot be read."""
    from safetensors.torch import load_file

    meta = _read_json(os.path.join(path, "trainer_state.json"))
    fmt = meta.get("format")
    if fmt not in _READABLE_FORMATS:
        raise StateError(f"{os.path.join(path, 'trainer_state.json')}: unsupported state format {fmt!r} "
                         f"(this version reads {', '.join(map(str, _READABLE_FORMATS))})")
    for key in ("step", "epoch", "position"):
        if not isinstance(meta.get(key), int):
            raise StateError(f"{os.path.join(path, 'trainer_state.json')}: '{key}' is missing or not a number")
    lora = os.path.join(path, "lora.safetensors")
    meta["lora"] = _read_file(lora, lambda: load_file(lora))
    if fmt == 1:
        optim, rng = os.path.join(path, "optimizer.pt"), os.path.join(path, "rng.pt")
        meta["optim"] = _read_file(optim, lambda: _weights_only_load(optim))
        meta["rng_tensors"] = _read_file(rng, lambda: _weights_only_load(rng))
    else:
        optim, rng = os.path.join(path, "optimizer.json"), os.path.join(path, "rng.safetensors")
        try:
            meta["optim"] = state_io.read_tree(path, "optimizer")
        except state_io.StateFormatError as exc:
            raise StateError(f"{exc}; this state cannot be resumed") from None
        meta["rng_tensors"] = _read_file(rng, lambda: load_file(rng))
    ema = os.path.join(path, "ema.safetensors")
    meta["ema"] = _read_file(ema, lambda: load_file(ema)) if os.path.isfile(ema) else None
    if not isinstance(meta["optim"], dict) or "optimizer" not in meta["optim"]:
        raise StateError(f"{optim} holds no optimizer state; this state cannot be resumed")
    if not isinstance(meta["rng_tensors"], dict) or "torch" not in meta["rng_tensors"]:
        raise StateError(f"{rng} holds no torch RNG state; this state cannot be resumed")
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

