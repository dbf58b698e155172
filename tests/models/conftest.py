"""Fixtures for the models tests: tiny adapters built once per session, one thread (fast and repeatable
on the shared 2-core box)."""

from __future__ import annotations

import os
import sys

import pytest
import torch

torch.set_num_threads(1)
sys.path.insert(0, os.path.dirname(__file__))  # ldm_layout and models_helpers


@pytest.fixture(scope="session")
def sd1():
    from lora_trainer.models.tiny import build_tiny_adapter

    return build_tiny_adapter("sd1", pretrained=True)


@pytest.fixture(scope="session")
def sdxl():
    from lora_trainer.models.tiny import build_tiny_adapter

    return build_tiny_adapter("sdxl")
