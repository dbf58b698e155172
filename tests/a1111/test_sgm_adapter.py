"""SDXL in the WebUI: a tiny real sgm `DiffusionEngine` (CLIP-L + OpenCLIP-G + size embedders) trained
in place. sgm is not on PyPI: the test runs when LORA_TRAINER_SGM_PATH (or the WebUI harness) points at
a Stability-AI/generative-models checkout, and is skipped otherwise."""

from __future__ import annotations

import os
import sys

import pytest
import torch
from conftest import _randomise, _register_tiny_open_clip, _write_tiny_clip
from safetensors.torch import load_file

from lora_trainer.config import load_config
from lora_trainer.events import StopFlag
from lora_trainer.hosts.guard import state_dict_hash
from lora_trainer.models.webui_sgm import WebUISgmAdapter
from lora_trainer.train import train

CANDIDATES = [os.environ.get("LORA_TRAINER_SGM_PATH", ""),
              "/work/harness/webui/sdwebui/repositories/generative-models"]
SGM = next((p for p in CANDIDATES if p and os.path.isdir(os.path.join(p, "sgm"))), None)
pytestmark = pytest.mark.skipif(SGM is None, reason="no generative-models checkout (set LORA_TRAINER_SGM_PATH)")

YAML = """model:
  target: sgm.models.diffusion.DiffusionEngine
  params:
    scale_factor: 0.13025
    disable_first_stage_autocast: True
    denoiser_config:
      target: sgm.modules.diffusionmodules.denoiser.DiscreteDenoiser
      params:
        num_idx: 1000
        weighting_config: {{target: sgm.modules.diffusionmodules.denoiser_weighting.EpsWeighting}}
        scaling_config: {{target: sgm.modules.diffusionmodules.denoiser_scaling.EpsScaling}}
        discretization_config: {{target: sgm.modules.diffusionmodules.discretizer.LegacyDDPMDiscretization}}
    network_config:
      target: sgm.modules.diffusionmodules.openaimodel.UNetModel
      params:
        adm_in_channels: 80
        num_classes: sequential
        use_checkpoint: False
        in_channels: 4
        out_channels: 4
        model_channels: 32
        attention_resolutions: [4, 2]
        num_res_blocks: 2
        channel_mult: [1, 2, 4]
        num_head_channels: 8
        use_spatial_transformer: True
        use_linear_in_transformer: True
        transformer_depth: [1, 1, 1]
        context_dim: 64
        spatial_transformer_attn_type: softmax
        legacy: False
    conditioner_config:
      target: sgm.modules.GeneralConditioner
      params:
        emb_models:
          - is_trainable: False
            input_key: txt
            target: sgm.modules.encoders.modules.FrozenCLIPEmbedder
            params: {{layer: hidden, layer_idx: 0, version: {clip}, device: cpu}}
          - is_trainable: False
            input_key: txt
            target: sgm.modules.encoders.modules.FrozenOpenCLIPEmbedder2
            params: {{arch: {arch}, version: null, freeze: True, layer: penultimate, always_return_pooled: True, device: cpu,
                     legacy: False}}
          - {{is_trainable: False, input_key: original_size_as_tuple,
              target: sgm.modules.encoders.modules.ConcatTimestepEmbedderND, params: {{outdim: 8}}}}
          - {{is_trainable: False, input_key: crop_coords_top_left,
              target: sgm.modules.encoders.modules.ConcatTimestepEmbedderND, params: {{outdim: 8}}}}
          - {{is_trainable: False, input_key: target_size_as_tuple,
              target: sgm.modules.encoders.modules.ConcatTimestepEmbedderND, params: {{outdim: 8}}}}
    first_stage_config:
      target: sgm.models.autoencoder.AutoencoderKLInferenceWrapper
      params:
        embed_dim: 4
        monitor: val/rec_loss
        ddconfig: {{attn_type: vanilla, double_z: true, z_channels: 4, resolution: 64, in_channels: 3, out_ch: 3,
                   ch: 32, ch_mult: [1, 2, 4, 4], num_res_blocks: 1, attn_resolutions: [], dropout: 0.0}}
        lossconfig: {{target: torch.nn.Identity}}
"""


@pytest.fixture(scope="module")
def tiny_sdxl(tmp_path_factory):
    sys.path.insert(0, SGM)
    from omegaconf import OmegaConf
    from sgm.util import instantiate_from_config

    tmp = str(tmp_path_factory.mktemp("sdxl"))
    clip = _write_tiny_clip(os.path.join(tmp, "clip"))
    arch = _register_tiny_open_clip(os.path.join(tmp, "oc"))
    path = os.path.join(tmp, "tiny-sdxl.yaml")
    with open(path, "w") as fh:
        fh.write(YAML.format(clip=clip, arch=arch))
    torch.manual_seed(99)
    model = instantiate_from_config(OmegaConf.load(path).model)
    _randomise(model, 11)
    return model.eval()


def test_sdxl_trains_in_place_with_te1_te2_names(tiny_sdxl, services_factory, dataset, tmp_path):
    adapter = WebUISgmAdapter(tiny_sdxl, services_factory(tiny_sdxl), verify_hash=True)
    hash0 = state_dict_hash(tiny_sdxl)
    cfg = load_config(dict(train_data_dir=dataset, output_dir=str(tmp_path / "out"), output_name="xl",
                           resolution=64, enable_bucket=False, batch_size=2, max_train_steps=6,
                           learning_rate=1e-3, lora_rank=4, lora_alpha=4, save_state=False),
                      require=("train_data_dir",))
    result = train(cfg, adapter=adapter, emit=lambda e: None, stop=StopFlag())
    assert state_dict_hash(tiny_sdxl) == hash0 and adapter.verify() == []
    keys = {k.split(".")[0] for k in load_file(result.output_path)}
    mapping = {}
    for i, emb in enumerate(tiny_sdxl.conditioner.embedders):  # A1111's SDXL layer names
        for name, mod in emb.named_modules():
            mapping[f"{i}_{name.replace('.', '_')}"] = mod
    for name, mod in tiny_sdxl.model.named_modules():
        mapping[name.replace(".", "_")] = mod
    import re

    def a1111_module(key):
        if key.startswith("lora_unet_"):
            return mapping.get(key.replace("lora_unet", "diffusion_model"))
        if key.startswith("lora_te1_text_model"):
            return mapping.get(key.replace("lora_te1_text_model", "0_transformer_text_model"))
        if m := re.match(r"lora_te2_text_model_encoder_layers_(\d+)_(.+)", key):
            rest = m[2].replace("mlp_fc1", "mlp_c_fc").replace("mlp_fc2", "mlp_c_proj").replace("self_attn", "attn")
            name = f"1_model_transformer_resblocks_{m[1]}_{rest}"
            if name in mapping:
                return mapping[name]
            if mq := re.match(r"(.*)_([qkv]_proj)$", name):
                return mapping.get(mq[1])
        return None

    unmatched = sorted(k for k in keys if a1111_module(k) is None)
    assert not unmatched, unmatched[:5]
    assert any(k.startswith("lora_te1_") for k in keys) and any(k.startswith("lora_te2_") for k in keys)
    assert any(k.startswith("lora_unet_input_blocks_") for k in keys)
