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


def _has_chroma() -> bool:
    import diffusers

    return hasattr(diffusers, "ChromaTransformer2DModel")


def pytest_collection_modifyitems(config, items):
    """Chroma arrived in diffusers 0.35; in the Forge environment (0.31) its tests are skipped."""
    if any("chroma" in item.name for item in items) and not _has_chroma():
        skip = pytest.mark.skip(reason="this diffusers has no ChromaTransformer2DModel (needs 0.35+)")
        for item in items:
            if "chroma" in item.name:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_flux():
    from lora_trainer.models.flux_tiny import build_tiny_flux_parts

    return build_tiny_flux_parts("flux")


@pytest.fixture(scope="session")
def tiny_chroma():
    from lora_trainer.models.flux_tiny import build_tiny_flux_parts

    if not _has_chroma():
        pytest.skip("this diffusers has no ChromaTransformer2DModel (needs 0.35+)")

    return build_tiny_flux_parts("chroma")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    """Four images of the target concept, shared by a module's runs (they only read it)."""
    from flux_helpers import write_zqx_dataset

    return write_zqx_dataset(str(tmp_path_factory.mktemp("fluxdata")))
