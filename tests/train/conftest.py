"""Shared fixtures for the training tests: the built-in tiny SD1 model and small synthetic datasets.

One thread: on this shared 2-core box a tiny model runs ~10x faster single-threaded, and the
numbers repeat exactly.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_adapter():
    from lora_trainer.models.tiny import build_tiny_adapter

    return build_tiny_adapter("sd1", pretrained=True)


@pytest.fixture(scope="session")
def concept_dir(tmp_path_factory) -> str:
    """6 images of the synthetic target concept in a kohya `2_zqx/` folder."""
    from lora_trainer import synthetic

    root = tmp_path_factory.mktemp("concept")
    synthetic.write_dataset(str(root), synthetic.concept_set(synthetic.TARGET_CONCEPT, 6, seed=0), repeats=2,
                            name="zqx")
    return str(root)


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
