"""Forge's loaded model (`shared.sd_model.forge_objects`) as a ModelAdapter — UNet LoRA only.

Forge runs its text encoders under `torch.inference_mode()`, so text-encoder LoRA cannot train here
(the conditioning is computed by Forge and cloned out of inference mode). Quantised bases (fp8, nf4,
GGUF) get a clear refusal: LoRA gradients through such weights are not supported.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from lora_trainer.models.base import AdapterInfo, SizeInfo
from lora_trainer.models.webui_ldm import WebUILdmAdapter, _checkpoint_name

if TYPE_CHECKING:
    from lora_trainer.lora.target import LoraTarget
    from lora_trainer.models.webui_services import WebUIServices

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def quantised_reason(unet: torch.nn.Module) -> str | None:
    """Why the weights cannot be trained through, or None when they are plain floats."""
    for name, p in unet.named_parameters():
        cls = type(p).__name__
        if p.dtype not in FLOAT_DTYPES or cls in ("Params4bit", "GGUFParameter", "ForgeParams4bit"):
            kind = "nf4/fp4" if "4bit" in cls else ("GGUF" if "GGUF" in cls else str(p.dtype).replace("torch.", ""))
            return f"{kind} weights (first: {name})"
    return None


class ForgeAdapter(WebUILdmAdapter):
    def __init__(self, sd_model: Any, services: WebUIServices | None = None, *, verify_hash: bool = False):
        from lora_trainer.models.webui_services import HostRefused, WebUIServices

        self.sd_model = sd_model
        self.services = services or WebUIServices(sd_model_getter=lambda: sd_model)
        self.verify_hash = verify_hash
        fo = sd_model.forge_objects
        self.unet = fo.unet.model.diffusion_model
        why = quantised_reason(self.unet)
        if why:
            raise HostRefused(f"the loaded checkpoint has {why}. LoRA Trainer trains only on float weights "
                              "(fp16/bf16/fp32): load a non-quantised checkpoint, or set Forge's 'Diffusion in "
                              "Low Bits' to Automatic/fp16, then start training again.")
        self.te_root = fo.clip.cond_stage_model
        self.open_clip = False
        sdxl = bool(getattr(sd_model, "is_sdxl", False))
        arch = "sdxl" if sdxl else ("sd2" if getattr(sd_model, "is_sd2", False) else "sd1")
        sampling = getattr(fo.unet.model, "model_sampling", None)
        pred = "v_prediction" if "V" in type(sampling).__name__.replace("EPS", "") else "epsilon"
        name, short_hash = _checkpoint_name(sd_model)
        self.info = AdapterInfo(arch=arch, prediction_type=pred, model_name=name, model_hash=short_hash,
                                extra={"host": "forge"})
        self.services.check_trainable()
        self._snapshot = None
        self._undone_optimizations = False
        self._checkpointed: list[torch.nn.Module] = []
        self.restore_problems: list[str] = []

    def trainable_text_encoder(self) -> bool:
        return False

    def lora_targets(self, *, unet: bool, text_encoder: bool, conv: bool) -> list[LoraTarget]:
        from lora_trainer.lora import discovery

        return discovery.ldm_unet_targets(self.unet, self.arch, conv) if unet else []

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            z = self.sd_model.encode_first_stage(pixels.to(self.device))
        return z.clone().float()

    def encode_text(self, captions: list[str]) -> dict[str, torch.Tensor]:
        with torch.inference_mode():
            c = self.sd_model.get_learned_conditioning(list(captions))
        if isinstance(c, dict):
            return {"crossattn": c["crossattn"].clone(), "vector": c["vector"].clone()}
        return {"crossattn": c.clone()}

    def predict(self, noisy_latents: torch.Tensor, timesteps: torch.Tensor,
                cond: dict[str, torch.Tensor], sizes: list[SizeInfo] | None = None) -> torch.Tensor:
        dtype = self.dtype
        kwargs = {"y": cond["vector"].to(self.device, dtype)} if "vector" in cond else {}
        return self.unet(noisy_latents.to(self.device, dtype), timesteps.to(self.device),
                         context=cond["crossattn"].to(self.device, dtype), **kwargs)
