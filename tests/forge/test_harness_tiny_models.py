"""The huggingface_guess classes `harness_tiny_models.py` adds to a Forge build pick the tiny files, and the
tiny Chroma takes the route this Forge keeps for real Chroma files (its hard-coded "Chroma" name)."""

from __future__ import annotations

import os

import torch
from safetensors.torch import load_file


def _classes(monkeypatch, with_nf4: bool = False) -> dict:
    """The block's classes, first in huggingface_guess's list for this test."""
    import harness_tiny_models
    from huggingface_guess import model_list

    ns = dict(vars(model_list))
    exec(compile(harness_tiny_models.guess_block(with_nf4), "model_list.py", "exec"), ns)  # noqa: S102 - our own source
    monkeypatch.setattr(model_list, "models", ns["models"])
    return ns


def test_the_tiny_chroma_is_guessed_and_routed_to_forges_chroma_engine(forge_root, tmp_path, monkeypatch):
    import huggingface_guess
    import tiny_forge_flux
    from backend import loader

    ns = _classes(monkeypatch)
    repo = tiny_forge_flux.write_repo(forge_root, "chroma", str(tmp_path / "repo"))
    sd = load_file(tiny_forge_flux.write_checkpoint("chroma", repo, str(tmp_path / "chroma.safetensors")))
    guess = huggingface_guess.guess(sd)
    assert type(guess) is ns["LoraTrainerTinyChroma"]
    name = guess.huggingface_repo
    assert not loader.chroma_is_in_huggingface_guess, "this Forge picks its Chroma engine by the name"
    assert name == "Chroma" and (name != "Chroma") is False and name != "black-forest-labs/FLUX.1-schnell"
    assert os.path.join("huggingface", name) == os.path.join("huggingface", "lora-trainer-tiny", "Chroma")
    assert "guidance_embed" not in guess.unet_config and guess.unet_config["guidance_out_dim"] == 64
    assert guess.clip_target(sd) == {"t5xxl": "text_encoder"}


def test_the_gguf_flux_class_claims_only_its_own_width(forge_root, monkeypatch):
    import harness_tiny_models
    import huggingface_guess
    from backend.nn.flux import IntegratedFluxTransformer2DModel
    from tiny_forge_flux import DIMS

    ns = _classes(monkeypatch)

    def guessed(dims: dict) -> type:
        model = IntegratedFluxTransformer2DModel(**dims, guidance_embed=True)
        sd = {"model.diffusion_model." + k: torch.zeros(v.shape) for k, v in model.state_dict().items()}
        return type(huggingface_guess.guess(sd))

    assert guessed(harness_tiny_models.gguf_dims()) is ns["LoraTrainerTinyFluxGGUF"]
    assert guessed(DIMS) is not ns["LoraTrainerTinyFluxGGUF"]


def test_the_nf4_flux_class_claims_the_nf4_file_only(forge_root, tmp_path, monkeypatch):
    import huggingface_guess
    import pytest
    import tiny_forge_flux
    from huggingface_guess import model_list

    if not hasattr(model_list, "HarnessTinyFlux"):
        pytest.skip("this Forge build is not the harness's (no HarnessTinyFlux to build on)")
    pytest.importorskip("bitsandbytes")
    ns = _classes(monkeypatch, with_nf4=True)
    repo = tiny_forge_flux.write_repo(forge_root, "flux", str(tmp_path / "repo"))
    dims = dict(tiny_forge_flux.DIMS)
    flt = tiny_forge_flux.write_checkpoint("flux", repo, str(tmp_path / "flux.safetensors"))
    nf4 = tiny_forge_flux.write_nf4_checkpoint(flt, str(tmp_path / "flux-nf4.safetensors"))
    assert dims["hidden_size"] == 64
    assert type(huggingface_guess.guess(load_file(nf4))) is ns["LoraTrainerTinyFluxNF4"]
    assert type(huggingface_guess.guess(load_file(flt))) is not ns["LoraTrainerTinyFluxNF4"]
