"""Shared fixtures for the training tests: the built-in tiny SD1 model and small synthetic datasets.

One thread: on this shared 2-core box a tiny model runs ~10x faster single-threaded, and the
numbers repeat exactly.
"""

from __future__ import annotations

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
