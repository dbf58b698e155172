"""Forge's side of a run: which family is loaded, its LoRA patches, its memory manager.

Facts (lllyasviel/stable-diffusion-webui-forge, `backend/`):
- `shared.sd_model` is a `ForgeDiffusionEngine` (`StableDiffusion`, `StableDiffusion2`,
  `StableDiffusionXL`, `StableDiffusionXLRefiner`, `StableDiffusion3`, `Flux`, `Chroma`), not an
  nn.Module; its parts are `forge_objects.unet` (a `UnetPatcher` whose `.model` is a `KModel` with
  `.diffusion_model` and `.predictor.prediction_type`), `.clip` (`.patcher`, `.cond_stage_model`)
  and `.vae`; `forge_objects_original` holds the same parts without any LoRA.
- A `<lora:…>` prompt replaces `forge_objects.unet/clip` with clones carrying `lora_patches`; the
  weights are patched when the clone is loaded (`LoraLoader.refresh`, shared by all clones of one
  model, keeps the originals as backups) and stay patched until a refresh with other patches.
- `memory_management.load_models_gpu([patcher])` moves a part to its compute device (and may move
  others off it); Forge calls it under `torch.inference_mode()`, and so does this module.
"""

from __future__ import annotations

from typing import Any

import torch

TRAINABLE = {"StableDiffusion": "sd1", "StableDiffusion2": "sd2", "StableDiffusionXL": "sdxl"}
FLOW_ENGINES = ("Flux", "Chroma")  # the rectified-flow family (models/forge_flux.py)
PREDICTIONS = ("epsilon", "v_prediction")


def is_flow(sd_model: Any) -> bool:
    """True for Forge's FLUX.1 (dev / schnell) and Chroma engines."""
    return type(sd_model).__name__ in FLOW_ENGINES


def forge_refusal(sd_model: Any) -> str | None:
    """One line saying why this loaded Forge model cannot be trained, or None when it can."""
    kind = type(sd_model).__name__
    if kind in FLOW_ENGINES:
        return None
    if kind not in TRAINABLE:
        family = {"StableDiffusion3": "an SD3", "StableDiffusionXLRefiner": "the SDXL refiner"}.get(kind, f"a {kind}")
        return (f"the loaded checkpoint is {family} model, which LoRA Trainer cannot train yet in Forge: "
                "load an SD1.5, SD2.x, SDXL, FLUX.1 or Chroma checkpoint at the top of the page and start again.")
    if getattr(sd_model, "is_inpaint", False):
        return ("the loaded checkpoint is an inpainting model (extra UNet input channels): load a "
                "regular SD1.5, SD2.x or SDXL checkpoint to train a LoRA.")
    pred = prediction_type(sd_model)
    if pred not in PREDICTIONS:
        return (f"the loaded checkpoint uses {pred!r} prediction; LoRA Trainer trains epsilon and "
                "v-prediction models only.")
    return None


def arch_of(sd_model: Any) -> str:
    """"sd1" | "sd2" | "sdxl" | "flux-dev" | "flux-schnell" | "chroma" (FLUX.1-dev is the one with a
    guidance embedder, as Forge's own loader tells them apart)."""
    kind = type(sd_model).__name__
    if kind == "Chroma":
        return "chroma"
    if kind == "Flux":
        dm = sd_model.forge_objects.unet.model.diffusion_model
        return "flux-dev" if getattr(dm, "guidance_embed", False) else "flux-schnell"
    return TRAINABLE[kind]


def prediction_type(sd_model: Any) -> str:
    """What the UNet predicts, as Forge's sampler reads it (`KModel.predictor.prediction_type`)."""
    predictor = getattr(sd_model.forge_objects.unet.model, "predictor", None)
    return str(getattr(predictor, "prediction_type", "epsilon"))


def load_unet(patcher: Any) -> None:
    """Have Forge's memory manager put the UNet on its compute device (a no-op when it is there)."""
    from backend import memory_management

    with torch.inference_mode():
        memory_management.load_models_gpu([patcher])


class ForgeLoras:
    """Takes LoRAs Forge patched in for an earlier prompt out of the weights for a run, and puts them
    back after, the way Forge itself switches between prompts with and without LoRAs."""

    def __init__(self, sd_model: Any):
        self.sd_model = sd_model
        self.saved: tuple[Any, Any] | None = None

    def remove(self) -> int:
        """Swap in the LoRA-free patchers and restore the weights from Forge's backups; returns how
        many LoRA files were active."""
        fo, orig = self.sd_model.forge_objects, self.sd_model.forge_objects_original
        self.saved = (fo.unet, fo.clip)
        active = len(getattr(fo.unet, "lora_patches", {}) or {}) + len(getattr(fo.clip.patcher, "lora_patches", {}) or {})
        if orig is not None:
            fo.unet, fo.clip = orig.unet, orig.clip
        with torch.inference_mode():
            for patcher in (fo.unet, fo.clip.patcher):
                patcher.lora_loader.refresh(lora_patches={}, offload_device=patcher.offload_device)
        return active

    def put_back(self) -> None:
        """The patchers that were active before, with their LoRAs merged again (Forge's backups of the
        original weights are taken again on the way, exactly as on a generation)."""
        if self.saved is None:
            return
        fo = self.sd_model.forge_objects
        fo.unet, fo.clip = self.saved
        self.saved = None
        with torch.inference_mode():
            for patcher in (fo.unet, fo.clip.patcher):
                if getattr(patcher, "lora_patches", None):
                    patcher.refresh_loras()
