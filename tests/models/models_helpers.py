"""Helpers shared by the models tests (a plain module: `conftest` names collide across areas)."""

from __future__ import annotations

import os

import torch


def tiny_raw_adapter(arch: str, seed: int = 0):
    """A random-weight tiny adapter for any arch (sd2 included, which has no builtin)."""
    from lora_trainer.models.base import AdapterInfo
    from lora_trainer.models.diffusers_sd import DiffusersAdapter
    from lora_trainer.models.tiny import build_tiny_parts

    p = build_tiny_parts(arch, seed)
    return DiffusersAdapter(p["unet"], p["vae"], p["text_encoders"], p["tokenizers"], AdapterInfo(arch))


def write_tiny_configs(root: str, adapter) -> str:
    """The test hook for single-file loading: configs of the tiny parts laid out like the shipped
    `models/configs/<arch>/` (point `loading.CONFIG_ROOT` at `root`)."""
    d = os.path.join(root, adapter.arch)
    adapter.unet.save_config(os.path.join(d, "unet"))
    adapter.vae.save_config(os.path.join(d, "vae"))
    for i, te in enumerate(adapter.text_encoders):
        te.config.save_pretrained(os.path.join(d, "text_encoder" if i == 0 else "text_encoder_2"))
    return root


def state_hash(module: torch.nn.Module) -> str:
    import hashlib

    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes() if v.numel() else b"")
    return h.hexdigest()
