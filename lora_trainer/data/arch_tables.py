"""Per-architecture tables of the layers a kohya LoRA adapts, for estimates without loading a model.

Source: counted from the real classes — diffusers `UNet2DConditionModel` built with the published
SD1.5 / SD2.x / SDXL-base UNet configs and transformers `CLIPTextModel` with CLIP-L (768x12),
OpenCLIP-H (1024x23 as SD2 uses it) and OpenCLIP-bigG (1280x32) sizes, on the meta device
(`tests/data/test_plan.py` re-counts them when diffusers is installed). The module sets follow
kohya's networks/lora.py: every Linear / 1x1 conv inside `Transformer2DModel` (UNet), the
`q/k/v/out_proj` and `fc1/fc2` of each CLIP layer (text encoders), and with LoCon (conv_dim > 0)
every conv / Linear inside `ResnetBlock2D`, `Downsample2D`, `Upsample2D` (kernel 1 → lora_rank,
kernel 3 → conv_dim). Entries: (in_features, out_features, kernel, how many).
Counts: SD1/SD2 UNet 192 modules, SDXL 722; text encoders 72 (CLIP-L), 138 (SD2), 72 + 192 (SDXL).
"""

from __future__ import annotations

Layer = tuple[int, int, int, int]

_SD_CONV: list[Layer] = [
    (320, 320, 3, 8), (320, 640, 1, 1), (320, 640, 3, 1), (640, 320, 1, 2), (640, 320, 3, 2),
    (640, 640, 3, 8), (640, 1280, 1, 1), (640, 1280, 3, 1), (960, 320, 1, 1), (960, 320, 3, 1),
    (960, 640, 1, 1), (960, 640, 3, 1), (1280, 320, 1, 5), (1280, 640, 1, 6), (1280, 640, 3, 1),
    (1280, 1280, 1, 12), (1280, 1280, 3, 20), (1920, 640, 1, 1), (1920, 640, 3, 1), (1920, 1280, 1, 1),
    (1920, 1280, 3, 1), (2560, 1280, 1, 5), (2560, 1280, 3, 5),
]


def _sd_attn(context: int) -> list[Layer]:
    return [(320, 320, 1, 40), (320, 2560, 1, 5), (640, 640, 1, 40), (640, 5120, 1, 5), (context, 320, 1, 10),
            (context, 640, 1, 10), (context, 1280, 1, 12), (1280, 320, 1, 5), (1280, 1280, 1, 48),
            (1280, 10240, 1, 6), (2560, 640, 1, 5), (5120, 1280, 1, 6)]


def _clip(width: int, layers: int) -> list[Layer]:
    return [(width, width, 1, 4 * layers), (width, 4 * width, 1, layers), (4 * width, width, 1, layers)]


UNET_ATTN: dict[str, list[Layer]] = {
    "sd1": _sd_attn(768),
    "sd2": _sd_attn(1024),
    "sdxl": [(640, 640, 1, 70), (640, 5120, 1, 10), (1280, 1280, 1, 372), (1280, 10240, 1, 60),
             (2048, 640, 1, 20), (2048, 1280, 1, 120), (2560, 640, 1, 10), (5120, 1280, 1, 60)],
}
UNET_CONV: dict[str, list[Layer]] = {
    "sd1": _SD_CONV,
    "sd2": _SD_CONV,
    "sdxl": [(320, 320, 3, 8), (320, 640, 1, 1), (320, 640, 3, 1), (640, 320, 1, 2), (640, 320, 3, 2),
             (640, 640, 3, 8), (640, 1280, 1, 1), (640, 1280, 3, 1), (960, 320, 1, 1), (960, 320, 3, 1),
             (960, 640, 1, 1), (960, 640, 3, 1), (1280, 320, 1, 5), (1280, 640, 1, 6), (1280, 640, 3, 1),
             (1280, 1280, 1, 7), (1280, 1280, 3, 11), (1920, 640, 1, 1), (1920, 640, 3, 1), (1920, 1280, 1, 1),
             (1920, 1280, 3, 1), (2560, 1280, 1, 2), (2560, 1280, 3, 2)],
}
TEXT_ENCODERS: dict[str, list[list[Layer]]] = {
    "sd1": [_clip(768, 12)],
    "sd2": [_clip(1024, 23)],
    "sdxl": [_clip(768, 12), _clip(1280, 32)],
}
# parameters of the frozen base (UNet, text encoders, VAE), for the memory estimate
BASE_PARAMS: dict[str, dict[str, int]] = {
    "sd1": {"unet": 859_520_964, "text_encoder": 123_060_480, "vae": 83_653_863},
    "sd2": {"unet": 865_910_724, "text_encoder": 340_387_840, "vae": 83_653_863},
    "sdxl": {"unet": 2_567_463_684, "text_encoder": 123_060_480 + 694_659_840, "vae": 83_653_863},
}


def lora_params(layers: list[Layer], rank: int, conv_rank: int = 0) -> tuple[int, int]:
    """(trainable parameters, modules) for LoRA on `layers`: down [r, in·k²] + up [out, r] each.
    Kernel-3 layers use `conv_rank` (skipped when 0)."""
    params = modules = 0
    for fan_in, fan_out, kernel, count in layers:
        r = rank if kernel == 1 else conv_rank
        if r <= 0:
            continue
        params += count * r * (fan_in * kernel * kernel + fan_out)
        modules += count
    return params, modules
