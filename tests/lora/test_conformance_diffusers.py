"""Conformance (a): our SD1/SDXL files load into diffusers with every key matched, and the weights
diffusers fuses equal our `deltas()`.

The files go through the real public path: `pipe.load_lora_weights(folder, weight_name=...)` on a
pipeline built from tiny real parts (diffusers UNet2DConditionModel, transformers CLIP text models),
then `pipe.fuse_lora()`. A key diffusers cannot place would leave a module without its delta.
"""

from __future__ import annotations

import pytest
import torch
from lora_test_models import randomize_lora, tiny_te, tiny_unet

from lora_trainer.lora.discovery import text_encoder_targets, unet_targets
from lora_trainer.lora.file import save_lora_file
from lora_trainer.lora.network import LoRANetwork


def _peft_layers(*models) -> int:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return sum(isinstance(m, BaseTunerLayer) for model in models for m in model.modules())


def _check(pipe, models, targets, net, tmp_path, conv):
    sd = net.kohya_state_dict(torch.float32)
    save_lora_file(tmp_path / "lora.safetensors", sd, {"ss_output_name": "lora"})
    before = {t.name: t.module.weight.detach().clone() for t in targets}
    pipe.load_lora_weights(str(tmp_path), weight_name="lora.safetensors", adapter_name="ours")
    assert _peft_layers(*models) == len(net.loras)  # one diffusers LoRA layer per key group: none dropped
    pipe.fuse_lora()
    want = net.deltas()
    for t in targets:
        got = t.module.weight.detach() - before[t.name]
        assert got.abs().max() > 0, t.name
        torch.testing.assert_close(got, want[t.name], rtol=1e-4, atol=1e-6, msg=t.name)
    if conv:
        assert any(t.kind == "conv" for t in targets)


def _tiny_vae():
    """diffusers 0.31 (Forge) reads vae.config in the pipelines' __init__; 0.42 accepts None."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(block_out_channels=(8,), down_block_types=("DownEncoderBlock2D",),
                         up_block_types=("UpDecoderBlock2D",), latent_channels=4, norm_num_groups=8)


@pytest.mark.parametrize("conv", [False, True])
def test_sd1_file_loads_into_diffusers(tmp_path, conv):
    from diffusers import DDPMScheduler, StableDiffusionPipeline

    unet, te = tiny_unet("sd1"), tiny_te()
    targets = unet_targets(unet, "sd1", conv=conv) + text_encoder_targets(te, "lora_te")
    net = LoRANetwork(targets, rank=4, alpha=2, conv_rank=2 if conv else 0, conv_alpha=1)
    randomize_lora(net)
    pipe = StableDiffusionPipeline(vae=_tiny_vae(), text_encoder=te, tokenizer=None, unet=unet, scheduler=DDPMScheduler(),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    _check(pipe, (unet, te), targets, net, tmp_path, conv)


@pytest.mark.parametrize("conv", [False, True])
def test_sdxl_file_loads_into_diffusers(tmp_path, conv):
    from diffusers import DDPMScheduler, StableDiffusionXLPipeline

    unet, te1, te2 = tiny_unet("sdxl"), tiny_te(), tiny_te(projection=True)
    targets = (unet_targets(unet, "sdxl", conv=conv) + text_encoder_targets(te1, "lora_te1")
               + text_encoder_targets(te2, "lora_te2"))
    names = [t.name for t in targets]
    assert "lora_unet_input_blocks_4_1_transformer_blocks_1_attn1_to_q" in names
    assert "lora_te2_text_model_encoder_layers_1_mlp_fc2" in names
    net = LoRANetwork(targets, rank=4, alpha=8, conv_rank=3 if conv else 0, conv_alpha=3)
    randomize_lora(net, seed=3)
    pipe = StableDiffusionXLPipeline(vae=_tiny_vae(), text_encoder=te1, text_encoder_2=te2, tokenizer=None,
                                     tokenizer_2=None, unet=unet, scheduler=DDPMScheduler())
    _check(pipe, (unet, te1, te2), targets, net, tmp_path, conv)
