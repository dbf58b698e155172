"""Datasets: discovery (`scan_dataset`), buckets, epoch batches and loading, caches, dry-run plans.

Names are loaded on first use so `import lora_trainer.data` stays cheap (no torch until a batch
is loaded).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "scan_dataset": "scan", "DatasetIndex": "scan", "ImageItem": "scan",
    "BucketManager": "buckets", "make_bucket_resolutions": "buckets", "Fit": "buckets",
    "TrainDataset": "dataset", "RunBatchSampler": "loader", "BatchDataset": "loader", "make_loader": "loader",
    "LatentCache": "cache", "TextEncoderCache": "cache", "file_sha256": "cache",
    "Plan": "plan", "make_plan": "plan", "format_plan": "plan", "guess_arch": "plan",
    "process_caption": "captions", "add_trigger": "captions", "split_tags": "captions",
    "read_caption_file": "captions", "IMAGE_EXTENSIONS": "images", "read_metadata_csv": "metadata_csv",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'lora_trainer.data' has no attribute {name!r}")
    return getattr(importlib.import_module(f"lora_trainer.data.{_EXPORTS[name]}"), name)


def default_latent_cache_dir(train_data_dir: str) -> str:
    """Where `cache_latents_to_disk` keeps latents: a hidden folder the scan ignores."""
    import os

    return os.path.join(train_data_dir, ".lora_trainer_cache", "latents")


def default_text_cache_dir(train_data_dir: str) -> str:
    """Where `cache_text_encoder_outputs_to_disk` keeps text-encoder outputs (beside the latents)."""
    import os

    return os.path.join(train_data_dir, ".lora_trainer_cache", "text")
