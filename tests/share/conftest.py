"""Fixtures for the sharing tests: LoRA files trained on the built-in tiny model, fast download options."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
torch.set_num_threads(1)  # a tiny model trains ~10x faster single-threaded on this shared box


def train_tiny(root: Path, name: str, steps: int, seed: int) -> Path:
    """A real training run (tiny SD1, 64 px, a few steps); returns the output folder (LoRA, .json, preview)."""
    from lora_trainer import synthetic
    from lora_trainer.config import load_config
    from lora_trainer.train import train

    data = root / f"data-{seed}"
    synthetic.write_dataset(str(data), synthetic.concept_set(synthetic.TARGET_CONCEPT, 2, seed=seed), repeats=1,
                            name="zqx")
    out = root / f"out-{seed}"
    cfg = load_config({
        "base_model": "builtin:tiny-sd1", "train_data_dir": str(data), "output_dir": str(out), "resolution": 64,
        "enable_bucket": False, "lora_rank": 4, "lora_alpha": 4, "train_text_encoder": False, "batch_size": 1,
        "max_train_steps": steps, "learning_rate": 1e-3, "save_precision": "fp32", "seed": seed,
        "output_name": name, "trigger_word": "zqx", "sample_prompts": ["zqx"], "sample_steps": 2,
        "save_state": False})
    result = train(cfg)
    assert result.output_path and os.path.isfile(result.output_path)
    for p in out.iterdir():  # keep only what a user would publish
        if p.is_dir():
            import shutil

            shutil.rmtree(p)
    return out


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> dict[int, Path]:
    """Two versions of the LoRA `inkstyle`: {1: folder, 2: folder} (different seeds and steps)."""
    root = tmp_path_factory.mktemp("trained")
    return {1: train_tiny(root, "inkstyle", 2, 1), 2: train_tiny(root, "inkstyle", 3, 2)}


@pytest.fixture
def opts(tmp_path):
    from lora_trainer.download.options import DownloadOptions

    return DownloadOptions(root=tmp_path / "models", connections=2, proxy="", backoff=0.02, backoff_max=0.1,
                           read_timeout=2.0, connect_timeout=2.0, retries=1, min_free_bytes=0)
