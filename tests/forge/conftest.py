"""Fixtures running Forge's real backend on tiny checkpoints (skipped, with the reason, without Forge)."""

from __future__ import annotations

import contextlib
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
    """forge_model(arch, storage_dtype=None, v_prediction=False, generated=True) -> a freshly loaded Forge engine
    (arch: sd1 | sd2 | sdxl | flux (the FLUX.1-dev layout) | chroma); `generated=False`: a flow model as
    loaded, before Forge's first generation ran its transformer."""
    import tiny_forge
    import tiny_forge_flux
    from huggingface_guess import model_list

    folder = tmp_path_factory.mktemp("forge-tiny")
    added = []
    checkpoints: dict[str, str] = {}
    routes = contextlib.ExitStack()

    def checkpoint(arch: str, v_prediction: bool) -> str:
        key = f"{arch}-v" if v_prediction else arch
        builder = tiny_forge_flux if arch in tiny_forge_flux.FLOW_ARCHS else tiny_forge
        if key not in checkpoints:
            repo = builder.write_repo(forge_root, arch, str(folder / f"repo-{arch}"))
            if arch not in [getattr(c, "_tiny_arch", None) for c in added]:
                cls = builder.guess_class(arch, repo)
                cls._tiny_arch = arch
                if builder is tiny_forge_flux:
                    routes.enter_context(tiny_forge_flux.register([cls]))
                else:
                    model_list.models.insert(0, cls)
                    added.append(cls)
            path = builder.write_checkpoint(arch, repo, str(folder / f"tiny-{key}.safetensors"))
            if v_prediction:  # Forge reads the parameterization from a .yaml beside the checkpoint
                with open(path[: -len(".safetensors")] + ".yaml", "w") as f:
                    f.write("model:\n  params:\n    parameterization: v\n")
            checkpoints[key] = path
        return checkpoints[key]

    loaded: dict[tuple, Any] = {}

    def make(arch: str, storage_dtype: Any = None, v_prediction: bool = False, generated: bool = True) -> Any:
        """storage_dtype: None (the file's float), a torch dtype (Forge's 'Diffusion in Low Bits'), or
        "gguf" (the UNet from a Q8_0 GGUF file, as GGUF models ship), or "nf4" (FLUX.1 only: the file's
        transformer in bitsandbytes NF4), or "nf4-float" (those NF4 weights dequantised, in a float file). One engine per kind for the
        session, as in Forge, where every training and generation use the one loaded model (a test
        that changes its state puts it back)."""
        key = (arch, str(storage_dtype), v_prediction, generated)
        if key not in loaded:
            loaded[key] = load(arch, storage_dtype, v_prediction, generated)
        return loaded[key]

    def load(arch: str, storage_dtype: Any, v_prediction: bool, generated: bool) -> Any:
        path = checkpoint(arch, v_prediction)
        if storage_dtype in ("nf4", "nf4-float"):  # a pre-quantised NF4 file, as NF4 FLUX.1 models ship
            nf4 = path[: -len(".safetensors")] + "-nf4.safetensors"
            if not os.path.exists(nf4):
                tiny_forge_flux.write_nf4_checkpoint(path, nf4)
            if storage_dtype == "nf4-float":
                nf4 = tiny_forge_flux.write_dequantized_checkpoint(nf4, nf4.replace("-nf4.", "-nf4-float."))
            sd_model = tiny_forge.load(nf4)
        elif storage_dtype != "gguf":
            sd_model = tiny_forge.load(path, storage_dtype=storage_dtype)
        else:
            gguf = path[: -len(".safetensors")] + ".gguf"
            if not os.path.exists(gguf):
                tiny_forge.write_gguf_unet(path, gguf)
            flow = arch in tiny_forge_flux.FLOW_ARCHS
            component = ("transformer", "ChromaTransformer2DModel" if arch == "chroma" else "FluxTransformer2DModel") \
                if flow else ("unet", "UNet2DConditionModel")
            sd_model = tiny_forge.swap_in_gguf_unet(tiny_forge.load(path), gguf, str(folder / f"repo-{arch}"), *component)
        sd_model = tiny_forge.first_load(sd_model)
        if arch in tiny_forge_flux.FLOW_ARCHS and generated:
            tiny_forge_flux.first_generation(sd_model)
        return sd_model

    with routes:
        yield make
    for cls in added:
        model_list.models.remove(cls)


@pytest.fixture(scope="session")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Four 64 px images of one synthetic concept with captions."""
    from lora_trainer.synthetic import concept_set, write_dataset

    folder = tmp_path_factory.mktemp("forge-data")
    return write_dataset(str(folder), concept_set("zqx", 4))
