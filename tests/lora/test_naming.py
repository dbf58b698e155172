"""Kohya names: diffusers <-> LDM paths, CLIP (transformers 4/5), open_clip."""

from __future__ import annotations

import pytest
from lora_test_models import tiny_unet

from lora_trainer.lora import naming


@pytest.mark.parametrize("diff, ldm", [
    ("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
     "input_blocks.1.1.transformer_blocks.0.attn1.to_q"),
    ("down_blocks.1.attentions.1.proj_in", "input_blocks.5.1.proj_in"),
    ("down_blocks.2.resnets.1.conv1", "input_blocks.8.0.in_layers.2"),
    ("down_blocks.1.resnets.0.conv_shortcut", "input_blocks.4.0.skip_connection"),
    ("down_blocks.0.resnets.0.time_emb_proj", "input_blocks.1.0.emb_layers.1"),
    ("down_blocks.0.resnets.1.conv2", "input_blocks.2.0.out_layers.3"),
    ("down_blocks.1.downsamplers.0.conv", "input_blocks.6.0.op"),
    ("mid_block.attentions.0.transformer_blocks.3.ff.net.0.proj",
     "middle_block.1.transformer_blocks.3.ff.net.0.proj"),
    ("mid_block.resnets.0.conv1", "middle_block.0.in_layers.2"),
    ("mid_block.resnets.1.time_emb_proj", "middle_block.2.emb_layers.1"),
    ("up_blocks.0.attentions.2.proj_out", "output_blocks.2.1.proj_out"),
    ("up_blocks.1.resnets.2.conv_shortcut", "output_blocks.5.0.skip_connection"),
    ("up_blocks.0.upsamplers.0.conv", "output_blocks.2.2.conv"),
    ("up_blocks.1.upsamplers.0.conv", "output_blocks.5.2.conv"),
    ("conv_in", "input_blocks.0.0"),
    ("time_embedding.linear_2", "time_embed.2"),
    ("add_embedding.linear_1", "label_emb.0.0"),
])
def test_sdxl_diffusers_to_ldm_and_back(diff, ldm):
    assert naming.diffusers_to_ldm_unet_path(diff) == ldm
    assert naming.ldm_to_diffusers_unet_path(ldm) == diff
    assert naming.sdxl_unet_kohya_name(diff) == "lora_unet_" + ldm.replace(".", "_")
    assert naming.unet_kohya_name(diff, "sdxl") == naming.ldm_unet_kohya_name("diffusion_model." + ldm, "sdxl")


@pytest.mark.parametrize("ldm, diff", [
    ("input_blocks.1.1.transformer_blocks.0.attn2.to_k", "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"),
    ("input_blocks.3.0.op", "down_blocks.0.downsamplers.0.conv"),
    ("input_blocks.11.0.in_layers.2", "down_blocks.3.resnets.1.conv1"),
    ("output_blocks.2.1.conv", "up_blocks.0.upsamplers.0.conv"),   # SD1: up_blocks.0 has no attention
    ("output_blocks.5.2.conv", "up_blocks.1.upsamplers.0.conv"),
    ("output_blocks.11.1.proj_out", "up_blocks.3.attentions.2.proj_out"),
    ("middle_block.1.proj_in", "mid_block.attentions.0.proj_in"),
])
def test_sd1_ldm_paths_give_diffusers_names(ldm, diff):
    assert naming.ldm_to_diffusers_unet_path(ldm) == diff
    assert naming.ldm_unet_kohya_name("model.diffusion_model." + ldm, "sd1") == "lora_unet_" + diff.replace(".", "_")
    assert naming.diffusers_to_ldm_unet_path(diff, naming.SD_UP_BLOCKS_WITH_ATTENTION) == ldm
    assert naming.unet_kohya_name(diff, "sd1") == naming.sd_unet_kohya_name(diff) == "lora_unet_" + diff.replace(".", "_")


@pytest.mark.parametrize("arch, up_attn", [("sd1", naming.SD_UP_BLOCKS_WITH_ATTENTION),
                                           ("sdxl", naming.SDXL_UP_BLOCKS_WITH_ATTENTION)])
def test_every_module_of_a_real_unet_round_trips(arch, up_attn):
    unet = tiny_unet(arch)
    blocks = ("down_blocks.", "mid_block.", "up_blocks.", "conv_in", "conv_out", "time_embedding.",
              "add_embedding.", "conv_norm_out")
    # every module that owns weights (containers and activations have no LDM twin of their own)
    paths = [p for p, m in unet.named_modules() if p.startswith(blocks) and list(m.parameters(recurse=False))]
    n = 0
    for p in paths:
        ldm = naming.diffusers_to_ldm_unet_path(p, up_attn)
        assert naming.ldm_to_diffusers_unet_path(ldm) == p, (p, ldm)
        n += 1
    assert n > 200


def test_unknown_paths_raise():
    for bad in ("foo.bar", "down_blocks.0.weird.0", "up_blocks.0.upsamplers.1.conv"):
        with pytest.raises(ValueError):
            naming.diffusers_to_ldm_unet_path(bad)
    for bad in ("foo", "input_blocks.3.1.proj_in", "middle_block.3"):
        with pytest.raises(ValueError):
            naming.ldm_to_diffusers_unet_path(bad)


@pytest.mark.parametrize("path", [
    "text_model.encoder.layers.3.self_attn.q_proj",       # transformers 4 CLIPTextModel
    "encoder.layers.3.self_attn.q_proj",                  # transformers 5 CLIPTextModel
    "transformer.text_model.encoder.layers.3.self_attn.q_proj",  # A1111 FrozenCLIPEmbedder
])
@pytest.mark.parametrize("prefix", naming.TE_PREFIXES)
def test_hf_clip_names_ignore_transformers_version(path, prefix):
    assert naming.hf_clip_kohya_name(path, prefix) == f"{prefix}_text_model_encoder_layers_3_self_attn_q_proj"


def test_hf_clip_mlp_and_bad_path():
    assert naming.hf_clip_kohya_name("encoder.layers.11.mlp.fc2") == "lora_te_text_model_encoder_layers_11_mlp_fc2"
    with pytest.raises(ValueError):
        naming.hf_clip_kohya_name("embeddings.token_embedding")


def test_open_clip_names():
    assert naming.open_clip_kohya_name("transformer.resblocks.7.mlp.c_fc", "lora_te2") == \
        "lora_te2_text_model_encoder_layers_7_mlp_fc1"
    assert naming.open_clip_kohya_name("resblocks.7.mlp.c_proj", "lora_te") == \
        "lora_te_text_model_encoder_layers_7_mlp_fc2"
    assert naming.open_clip_kohya_name("model.transformer.resblocks.0.attn.out_proj") == \
        "lora_te2_text_model_encoder_layers_0_self_attn_out_proj"
    assert naming.open_clip_qkv_names("transformer.resblocks.2.attn", "lora_te") == (
        "lora_te_text_model_encoder_layers_2_self_attn_q_proj",
        "lora_te_text_model_encoder_layers_2_self_attn_k_proj",
        "lora_te_text_model_encoder_layers_2_self_attn_v_proj")
    with pytest.raises(ValueError):
        naming.open_clip_kohya_name("transformer.resblocks.2.attn")
    with pytest.raises(ValueError):
        naming.open_clip_qkv_names("transformer.resblocks.2.mlp.c_fc")


def test_webui_helpers():
    assert naming.ldm_unet_to_diffusers("input_blocks.1.1.transformer_blocks.0.attn1.to_q") == \
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    assert naming.ldm_unet_to_diffusers("input_blocks.1.1") == "lora_unet_down_blocks_0_attentions_0"
    assert naming.ldm_unet_to_diffusers("nonsense.3") is None
    assert naming.open_clip_te_name("transformer.resblocks.0.attn", "lora_te")[2] == \
        "lora_te_text_model_encoder_layers_0_self_attn_v_proj"
    assert naming.open_clip_te_name("transformer.resblocks.0.mlp.c_fc", "lora_te") == \
        "lora_te_text_model_encoder_layers_0_mlp_fc1"
