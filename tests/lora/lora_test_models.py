"""Tiny real models (diffusers UNet2DConditionModel, transformers CLIP) for the lora tests."""

from __future__ import annotations

import torch
from torch import nn

SD1_UNET = dict(sample_size=8, in_channels=4, out_channels=4, layers_per_block=2,
                down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
                up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
                block_out_channels=[32, 64, 64, 64], cross_attention_dim=32, attention_head_dim=8,
                norm_num_groups=32)
SDXL_UNET = dict(sample_size=8, in_channels=4, out_channels=4, layers_per_block=2,
                 down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
                 up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
                 block_out_channels=[32, 64, 64], transformer_layers_per_block=2, cross_attention_dim=64,
                 attention_head_dim=8, norm_num_groups=32, use_linear_projection=True,
                 addition_embed_type="text_time", addition_time_embed_dim=8,
                 projection_class_embeddings_input_dim=8 * 6 + 32)
TE = dict(hidden_size=32, intermediate_size=128, num_attention_heads=4, num_hidden_layers=2,
          vocab_size=100, max_position_embeddings=16, projection_dim=32)


def tiny_unet(arch: str = "sd1", **over):
    from diffusers import UNet2DConditionModel

    cfg = dict(SDXL_UNET if arch == "sdxl" else SD1_UNET)
    if arch == "sd2":
        cfg["use_linear_projection"] = True
    cfg.update(over)
    torch.manual_seed(0)
    return UNet2DConditionModel(**cfg).eval()


def tiny_te(projection: bool = False, **over):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(1)
    cfg = CLIPTextConfig(**{**TE, **over})
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(cfg).eval()


def randomize_lora(net, seed: int = 0, scale: float = 0.1) -> None:
    """Give every LoRA a non-zero up weight so a dropped key changes the result."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.loras.values():
            for p in (m.lora_down.weight, m.lora_up.weight):
                p.copy_(torch.randn(p.shape, generator=g) * scale)




class OpenClipBlock(nn.Module):
    """The layout of open_clip's ResidualAttentionBlock (the module A1111's SD2/SDXL-G encoder uses)."""

    def __init__(self, d: int = 16):
        super().__init__()
        self.ln_1 = nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, 2)
        self.ln_2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential()
        self.mlp.add_module("c_fc", nn.Linear(d, 4 * d))
        self.mlp.add_module("gelu", nn.GELU())
        self.mlp.add_module("c_proj", nn.Linear(4 * d, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.ln_1(x)
        x = x + self.attn(y, y, y, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class OpenClipText(nn.Module):
    def __init__(self, d: int = 16, layers: int = 2):
        super().__init__()
        self.transformer = nn.Module()
        self.transformer.resblocks = nn.ModuleList(OpenClipBlock(d) for _ in range(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for b in self.transformer.resblocks:
            x = b(x)
        return x
