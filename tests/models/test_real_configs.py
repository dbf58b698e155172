"""The shipped full-size configs build the real architectures: parameter counts and LoRA target
counts match the published models (built on the meta device: no memory, no weights)."""

from __future__ import annotations

import os

import pytest
import torch

from lora_trainer.models import loading

# published parameter counts (UNet, VAE, text encoders) of SD1.5, SD2.1 and SDXL base
COUNTS = {
    "sd1": {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480},
    "sd2": {"unet": 865_910_724, "vae": 83_653_863, "text_encoder": 340_387_840},
    "sdxl": {"unet": 2_567_463_684, "vae": 83_653_863, "text_encoder": 123_060_480,
             "text_encoder_2": 694_659_840},
}
# kohya's "create LoRA for U-Net / Text Encoder" counts
TARGETS = {"sd1": (192, 72), "sd2": (192, 138), "sdxl": (722, 72 + 192)}


def _build(arch: str) -> dict[str, torch.nn.Module]:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    root = os.path.join(loading.CONFIG_ROOT, arch)
    with torch.device("meta"):
        parts = {"unet": UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(root, subfolder="unet")),
                 "vae": AutoencoderKL.from_config(AutoencoderKL.load_config(root, subfolder="vae"))}
        for sub, cls in (("text_encoder", CLIPTextModel), ("text_encoder_2", CLIPTextModelWithProjection)):
            if os.path.isdir(os.path.join(root, sub)):
                parts[sub] = cls(CLIPTextConfig.from_pretrained(root, subfolder=sub))
    return parts


@pytest.mark.parametrize("arch", ["sd1", "sd2", "sdxl"])
def test_shipped_configs_match_published_models(arch):
    from lora_trainer.lora import discovery

    parts = _build(arch)
    assert {k: sum(p.numel() for p in m.parameters()) for k, m in parts.items()} == COUNTS[arch]
    unet_targets = discovery.unet_targets(parts["unet"], arch)
    tes = [m for k, m in parts.items() if k.startswith("text_encoder")]
    te_targets = [t for te, pre in zip(tes, discovery.text_encoder_prefixes(len(tes)), strict=True)
                  for t in discovery.text_encoder_targets(te, pre)]
    assert (len(unet_targets), len(te_targets)) == TARGETS[arch]
