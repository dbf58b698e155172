"""The base-model architectures a LoRA file can be for, and how each is named in the file's metadata.

These are file-format facts (kohya `ss_base_model_version`, `modelspec.architecture`, the A1111
sidecar's "sd version"), so they live with the file format; model adapters import them from here.
"""

from __future__ import annotations

ARCHS = ("sd1", "sd2", "sdxl")
# values written to ss_base_model_version / modelspec.architecture / A1111 sidecar "sd version"
BASE_MODEL_VERSION = {"sd1": "sd_v1", "sd2": "sd_v2", "sdxl": "sdxl_base_v1-0"}
MODELSPEC_ARCH = {"sd1": "stable-diffusion-v1/lora", "sd2": "stable-diffusion-v2-768-v/lora",
                  "sdxl": "stable-diffusion-xl-v1-base/lora"}
SIDECAR_SD_VERSION = {"sd1": "SD1", "sd2": "SD2", "sdxl": "SDXL"}
