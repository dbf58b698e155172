"""Forge without a Forge checkout: the one-line refusals and the pre-first-generation placeholder.

(Training on Forge's real backend is tested in tests/forge/, which needs a Forge checkout.)
"""

from __future__ import annotations

import types

import pytest

from lora_trainer.errors import ModelLoadError
from lora_trainer.hosts.loaded_model import adapter_for
from lora_trainer.hosts.webui import HostRefused, WebUIHost, WebUIServices
from lora_trainer.models.forge_host import forge_refusal


class StableDiffusion3:  # Forge's engine classes are told apart by name, as `forge_refusal` does
    forge_objects = None


class Flux:  # FLUX.1 and Chroma train (models/forge_flux.py; tested on Forge's backend in tests/forge)
    forge_objects = None


class FakeInitialModel:  # what Forge holds before its first generation
    cond_stage_model = None


def test_a_family_we_cannot_train_is_refused_in_one_line():
    why = forge_refusal(StableDiffusion3())
    assert why and "SD3" in why and "SD1.5, SD2.x, SDXL, FLUX.1 or Chroma" in why and "\n" not in why
    with pytest.raises(HostRefused, match="SD3"):
        adapter_for(WebUIServices(sd_model_getter=StableDiffusion3, forge=True))
    host = WebUIHost(WebUIServices(sd_model_getter=StableDiffusion3, forge=True, cmd_opts=types.SimpleNamespace()),
                     root=".")
    with pytest.raises(HostRefused, match="SD3"):
        host.check_can_train()  # at once, before a job starts
    assert forge_refusal(Flux()) is None


def test_the_placeholder_is_replaced_by_loading_the_selected_checkpoint():
    held = {"model": FakeInitialModel()}

    def load():
        held["model"] = StableDiffusion3()
        return held["model"]

    svc = WebUIServices(sd_model_getter=lambda: held["model"], forge=True, load_model=load,
                        selected_model_name=lambda: "tinysd.safetensors [0123abcd]")
    assert WebUIHost(svc, root=".").loaded_model_name() == "tinysd.safetensors [0123abcd]"
    with pytest.raises(HostRefused, match="SD3"):  # it was loaded, then judged
        adapter_for(svc)
    assert isinstance(held["model"], StableDiffusion3)


def test_the_placeholder_without_a_loader_or_with_a_failing_one_says_so():
    svc = WebUIServices(sd_model_getter=FakeInitialModel, forge=True)
    with pytest.raises(ModelLoadError, match="Forge has not loaded a checkpoint yet"):
        adapter_for(svc)

    def broken():
        raise ValueError("You do not have any model!")

    svc = WebUIServices(sd_model_getter=FakeInitialModel, forge=True, load_model=broken)
    with pytest.raises(ModelLoadError, match="could not load the selected checkpoint: You do not have any model"):
        adapter_for(svc)


def test_lowvram_and_no_model_are_refused():
    with pytest.raises(HostRefused, match="--lowvram"):
        adapter_for(WebUIServices(sd_model_getter=StableDiffusion3, forge=True,
                                  cmd_opts=types.SimpleNamespace(lowvram=True)))
    with pytest.raises(ModelLoadError, match="no checkpoint is loaded"):
        adapter_for(WebUIServices(sd_model_getter=lambda: None, cmd_opts=types.SimpleNamespace()))
