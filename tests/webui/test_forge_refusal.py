"""Forge: a quantised base gets a clear refusal before anything is touched; --lowvram too."""

from __future__ import annotations

import types

import pytest
import torch

from lora_trainer.hosts.loaded_model import adapter_for
from lora_trainer.hosts.webui import HostRefused, WebUIServices


def forge_model(dtype: torch.dtype) -> types.SimpleNamespace:
    unet = torch.nn.Sequential(torch.nn.Linear(4, 4)).to(dtype)
    inner = types.SimpleNamespace(diffusion_model=unet, model_sampling=None)
    clip = types.SimpleNamespace(cond_stage_model=torch.nn.Linear(2, 2))
    return types.SimpleNamespace(forge_objects=types.SimpleNamespace(unet=types.SimpleNamespace(model=inner), clip=clip),
                                 is_sdxl=False, is_sd2=False)


@pytest.mark.skipif(not hasattr(torch, "float8_e4m3fn"), reason="torch without float8")
def test_fp8_forge_model_is_refused_with_a_reason():
    model = forge_model(torch.float8_e4m3fn)
    with pytest.raises(HostRefused, match="float8_e4m3fn weights.*load a non-quantised checkpoint"):
        adapter_for(WebUIServices(sd_model_getter=lambda: model, cmd_opts=types.SimpleNamespace()))


def test_float_forge_model_gets_the_forge_adapter_without_text_encoder_training():
    model = forge_model(torch.float16)
    adapter = adapter_for(WebUIServices(sd_model_getter=lambda: model, cmd_opts=types.SimpleNamespace()))
    assert type(adapter).__name__ == "ForgeAdapter" and not adapter.trainable_text_encoder()
    assert adapter.dtype == torch.float16


def test_lowvram_and_no_model_are_refused():
    model = forge_model(torch.float16)
    with pytest.raises(HostRefused, match="--lowvram"):
        adapter_for(WebUIServices(sd_model_getter=lambda: model, cmd_opts=types.SimpleNamespace(lowvram=True)))
    from lora_trainer.errors import ModelLoadError
    with pytest.raises(ModelLoadError, match="no checkpoint is loaded"):
        adapter_for(WebUIServices(sd_model_getter=lambda: None, cmd_opts=types.SimpleNamespace()))
