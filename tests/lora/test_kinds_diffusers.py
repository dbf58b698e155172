"""diffusers and the LyCORIS types, as of the pinned diffusers: plain LoRA/LoCon load with equal deltas
(test_conformance_diffusers); LoHa and LoKr are refused loudly, naming the keys (diffusers has no
LoHa/LoKr loader for SD files); a DoRA file loads with its `dora_scale` dropped after a warning
(diffusers' SD/SDXL kohya path filters it). If diffusers gains support, these tests fail and an
equal-delta check belongs here instead."""

from __future__ import annotations

import pytest
import torch
from lora_test_models import tiny_te, tiny_unet
from test_conformance_diffusers import _peft_layers, _tiny_vae
from test_kinds_network import randomize

from lora_trainer.lora.discovery import text_encoder_targets, unet_targets
from lora_trainer.lora.file import save_lora_file
from lora_trainer.lora.network import LoRANetwork
from lora_trainer.lora.spec import NetworkSpec


def _pipe_and_file(ntype, tmp_path):
    from diffusers import DDPMScheduler, StableDiffusionPipeline

    unet, te = tiny_unet("sd1"), tiny_te()
    net = LoRANetwork(unet_targets(unet, "sd1") + text_encoder_targets(te, "lora_te"), rank=1,
                      spec=NetworkSpec(ntype, rank=4, alpha=2.0))
    randomize(net)
    save_lora_file(tmp_path / "l.safetensors", net.kohya_state_dict(torch.float32), {})
    pipe = StableDiffusionPipeline(vae=_tiny_vae(), text_encoder=te, tokenizer=None, unet=unet,
                                   scheduler=DDPMScheduler(), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    return pipe, net, (unet, te)


@pytest.mark.parametrize("ntype,key", [("loha", "hada_w1_a"), ("lokr", "lokr_w1")])
def test_diffusers_refuses_loha_lokr_loudly(ntype, key, tmp_path):
    pipe, _, _ = _pipe_and_file(ntype, tmp_path)
    with pytest.raises(ValueError, match=key):
        pipe.load_lora_weights(str(tmp_path), weight_name="l.safetensors")


def test_diffusers_drops_dora_scale_but_places_every_module(tmp_path):
    pipe, net, models = _pipe_and_file("dora", tmp_path)
    pipe.load_lora_weights(str(tmp_path), weight_name="l.safetensors")
    assert _peft_layers(*models) == len(net.loras)
