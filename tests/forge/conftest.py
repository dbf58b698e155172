"""Fixtures running Forge's real backend on tiny checkpoints (skipped, with the reason, without Forge)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from forge_env import import_backend  # noqa: E402

ROOT, WHY = import_backend()


@pytest.fixture(scope="session")
def forge_root() -> str:
    if ROOT is None:
        pytest.skip(WHY)
    return ROOT


@pytest.fixture(scope="session")
def forge_model(forge_root: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Any]]:
    """forge_model(arch, storage_dtype=None, v_prediction=False) -> a freshly loaded Forge engine."""
    import tiny_forge
    from huggingface_guess import model_list

    folder = tmp_path_factory.mktemp("forge-tiny")
    added = []
    checkpoints: dict[str, str] = {}

    def checkpoint(arch: str, v_prediction: bool) -> str:
        key = f"{arch}-v" if v_prediction else arch
        if key not in checkpoints:
            repo = tiny_forge.write_repo(forge_root, arch, str(folder / f"repo-{arch}"))
            if arch not in [getattr(c, "_tiny_arch", None) for c in added]:
                cls = tiny_forge.guess_class(arch, repo)
                cls._tiny_arch = arch
                model_list.models.insert(0, cls)
                added.append(cls)
            path = tiny_forge.write_checkpoint(arch, repo, str(folder / f"tiny-{key}.safetensors"))
            if v_prediction:  # Forge reads the parameterization from a .yaml beside the checkpoint
                with open(path[: -len(".safetensors")] + ".yaml", "w") as f:
                    f.write("model:\n  params:\n    parameterization: v\n")
            checkpoints[key] = path
        return checkpoints[key]

    def make(arch: str, storage_dtype: Any = None, v_prediction: bool = False) -> Any:
        return tiny_forge.load(checkpoint(arch, v_prediction), storage_dtype=storage_dtype)

    yield make
    for cls in added:
        model_list.models.remove(cls)


@pytest.fixture(scope="session")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Four 64 px images of one synthetic concept with captions."""
    from lora_trainer.synthetic import concept_set, write_dataset

    folder = tmp_path_factory.mktemp("forge-data")
    return write_dataset(str(folder), concept_set("zqx", 4))
