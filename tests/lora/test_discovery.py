"""Target discovery on the real SD1.5 / SDXL / CLIP-L configs (built on the meta device: no memory)."""

from __future__ import annotations

from collections import Counter

import torch

from lora_trainer.lora.discovery import text_encoder_targets, unet_targets

SD15 = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
            down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
            up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
            block_out_channels=[320, 640, 1280, 1280], cross_attention_dim=768, attention_head_dim=8)
SDXL = dict(sample_size=128, in_channels=4, out_channels=4, layers_per_block=2,
            down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
            up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
            block_out_channels=[320, 640, 1280], transformer_layers_per_block=[1, 2, 10],
            cross_attention_dim=2048, attention_head_dim=[5, 10, 20], use_linear_projection=True,
            addition_embed_type="text_time", addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=2816)


def _meta_unet(cfg):
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        return UNet2DConditionModel(**cfg)


def test_sd15_counts_192_unet_72_te():
    from transformers import CLIPTextConfig, CLIPTextModel

    unet = _meta_unet(SD15)
    ts = unet_targets(unet, "sd1")
    assert len(ts) == 192
    assert Counter(t.kind for t in ts) == {"linear": 160, "conv1x1": 32}  # SD1 proj_in/out are 1x1 convs
    names = {t.name for t in ts}
    assert len(names) == 192
    assert "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q" in names
    assert "lora_unet_mid_block_attentions_0_proj_in" in names
    assert "lora_unet_up_blocks_3_attentions_2_transformer_blocks_0_ff_net_2" in names
    assert all(t.group == "unet" for t in ts)
    with torch.device("meta"):
        te = CLIPTextModel(CLIPTextConfig())  # CLIP-L defaults: 12 layers, 768 wide
    tt = text_encoder_targets(te)
    assert len(tt) == 72 and all(t.group == "text_encoder" and t.kind == "linear" for t in tt)
    assert tt[0].name.startswith("lora_te_text_model_encoder_layers_0_self_attn_")
    conv = unet_targets(unet, "sd1", conv=True)
    # kohya LoCon: + conv1/conv2/time_emb_proj(/conv_shortcut) of 22 resnets + 3 down + 3 upsamplers
    assert Counter(t.kind for t in conv) - Counter(t.kind for t in ts) == {"conv": 50, "linear": 22, "conv1x1": 14}


def test_sdxl_counts_722():
    unet = _meta_unet(SDXL)
    ts = unet_targets(unet, "sdxl")
    assert len(ts) == 722  # what kohya reports for SDXL
    assert all(t.kind == "linear" for t in ts)  # SDXL projects with Linear
    names = {t.name for t in ts}
    assert "lora_unet_input_blocks_4_1_transformer_blocks_1_attn2_to_v" in names
    assert "lora_unet_middle_block_1_transformer_blocks_9_ff_net_0_proj" in names
    assert "lora_unet_output_blocks_0_1_proj_out" in names
    assert not any("down_blocks" in n or "up_blocks" in n for n in names)
    conv_names = {t.name for t in unet_targets(unet, "sdxl", conv=True)} - names
    assert {"lora_unet_input_blocks_3_0_op", "lora_unet_input_blocks_6_0_op", "lora_unet_output_blocks_2_2_conv",
            "lora_unet_output_blocks_5_2_conv", "lora_unet_middle_block_2_out_layers_3"} <= conv_names
