"""Helpers shared by the training tests (a uniquely named module: every area has its own conftest)."""

from __future__ import annotations

import os
from typing import Any


def make_config(data_dir: str, out_dir: str, **overrides: Any):
    """A fast config on the tiny model (64 px, rank 4, UNet only unless overridden)."""
    from lora_trainer.config import load_config

    raw: dict[str, Any] = {
        "base_model": "builtin:tiny-sd1", "train_data_dir": data_dir, "output_dir": out_dir,
        "resolution": 64, "enable_bucket": False, "min_bucket_reso": 64, "max_bucket_reso": 64,
        "lora_rank": 4, "lora_alpha": 4, "train_text_encoder": False, "batch_size": 2, "epochs": 1,
        "learning_rate": 1e-3, "save_precision": "fp32", "seed": 7,
    }
    raw.update(overrides)
    return load_config(raw)


def events_of(kind: str, events: list) -> list:
    return [e for e in events if e.type == kind]


def list_files(folder: str) -> list[str]:
    return sorted(os.listdir(folder))
