"""Fixtures for the FLUX.1 / Chroma tests: tiny parts built once per session, one thread (fast and
repeatable on a shared 2-core machine)."""

from __future__ import annotations

import os
import sys

import pytest
import torch

torch.set_num_threads(1)
sys.path.insert(0, os.path.dirname(__file__))  # flux_helpers
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "models"))  # ldm_layout (VAE in the LDM layout)


@pytest.fixture(scope="session")
def tiny_flux():
    from lora_trainer.models.flux_tiny import build_tiny_flux_parts

    return build_tiny_flux_parts("flux")


@pytest.fixture(scope="session")
def tiny_chroma():
    from lora_trainer.models.flux_tiny import build_tiny_flux_parts

    return build_tiny_flux_parts("chroma")
