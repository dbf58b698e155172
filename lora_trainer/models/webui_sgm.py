"""The WebUI's loaded SDXL model (sgm `DiffusionEngine`) as a ModelAdapter, trained in place.

SDXL has no usable `forward(x, c)`: the trainer computes noise and loss and this adapter calls the
UNet wrapper (`sd_model.model(x, t, {"crossattn", "vector"})`, what A1111's `apply_model` does).
The conditioner runs text embedders under no_grad, so they are called directly here (text-encoder
LoRA trains), and the size conditioning is embedded per image from `SizeInfo`.
Names: UNet keys keep LDM paths, CLIP-L → `lora_te1_`, OpenCLIP-G → `lora_te2_` (fused q/k/v split).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from lora_trainer.models.base import AdapterInfo, SizeInfo
from lora_trainer.models.webui_ldm import WebUILdmAdapter, _checkpoint_name

if TYPE_CHECKING:
    from lora_trainer.lora.target import LoraTarget
    from lora_trainer.models.webui_services import WebUIServices

SIZE_KEYS = ("original_size_as_tuple", "crop_coords_top_left", "target_size_as_tuple")


def _inner(embedder: Any) -> Any:
    return getattr(embedder, "wrapped", embedder)


class WebUISgmAdapter(WebUILdmAdapter):
    """A1111 SDXL base (`sgm.models.diffusion.DiffusionEngine`)."""

    def __init__(self, sd_model: Any, services: WebUIServices | None = None, *, verify_hash: bool = False):
        from lora_trainer.models.webui_services import HostRefused, WebUIServices

        self.sd_model = sd_model
        self.services = services or WebUIServices(sd_model_getter=lambda: sd_model)
        self.verify_hash = verify_hash
        self.unet = sd_model.model.diffusion_model
        embedders = list(sd_model.conditioner.embedders)
        self.text_embedders = [e for e in embedders if getattr(e, "input_key", "txt") == "txt"]
        self.size_embedders = {e.input_key: e for e in embedders if getattr(e, "input_key", None) in SIZE_KEYS}
        if any(getattr(e, "input_key", None) == "aesthetic_score" for e in embedders):
            raise HostRefused("the loaded checkpoint is the SDXL refiner: train LoRAs on an SDXL base checkpoint.")
        self.te_root = _inner(self.text_embedders[0])
        self.open_clip = False
        name, short_hash = _checkpoint_name(sd_model)
        pred = "v_prediction" if "V" in type(getattr(sd_model, "denoiser", None)).__name__ else "epsilon"
        self.info = AdapterInfo(arch="sdxl", prediction_type=pred, model_name=name, model_hash=short_hash,
                                extra={"host": "webui"})
        self.services.check_trainable()
        self._snapshot = None
        self._undone_optimizations = False
        self._checkpointed: list[torch.nn.Module] = []
        self.restore_problems: list[str] = []

    def metadata(self) -> dict[str, str]:
        meta = {"ss_sd_model_name": self.info.model_name, "ss_v2": "False"}
        if self.info.model_hash:
            meta["ss_sd_model_hash"] = self.info.model_hash
        return meta

    def lora_targets(self, *, unet: bool, text_encoder: bool, conv: bool) -> list[LoraTarget]:
        from lora_trainer.lora import discovery

        out: list[LoraTarget] = []
        if unet:
            out += discovery.ldm_unet_targets(self.unet, "sdxl", conv)
        if text_encoder:
            for i, emb in enumerate(self.text_embedders):
                inner, prefix = _inner(emb), f"lora_te{i + 1}"
                if hasattr(inner, "transformer"):  # HF CLIP-L
                    out += discovery.text_encoder_targets(inner.transformer, prefix=prefix)
                else:  # open_clip bigG
                    blocks = inner.model.transformer.resblocks
                    used = len(blocks) - (1 if getattr(inner, "layer", "") == "penultimate" else 0)
                    out += [t for t in discovery.open_clip_targets(inner.model.transformer, prefix=prefix)
                            if int(t.name.split("_layers_")[1].split("_")[0]) < used]
        return out

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        vae = self.sd_model.first_stage_model
        with torch.no_grad(), self._autocast():
            z = self.sd_model.encode_first_stage(pixels.to(self.device, next(vae.parameters()).dtype))
        return z.float()

    def encode_text(self, captions: list[str]) -> dict[str, torch.Tensor]:
        crossattn, pooled = [], None
        with self._autocast():
            for emb in self.text_embedders:
                out = emb(list(captions))
                if isinstance(out, (tuple, list)):
                    z, pool = out[0], out[1] if len(out) > 1 else None
                else:
                    z, pool = out, getattr(out, "pooled", None)
                if pool is not None:
                    pooled = pool
                crossattn.append(z)
        if pooled is None:
            raise TypeError("no pooled text embedding from the SDXL text encoders")
        return {"crossattn": torch.cat(crossattn, dim=-1), "pooled": pooled}

    def _size_vector(self, n: int, sizes: list[SizeInfo] | None, hw: tuple[int, int]) -> torch.Tensor:
        rows = []
        for i in range(n):
            s = sizes[i] if sizes and i < len(sizes) else SizeInfo(original=hw, target=hw)
            target = s.target if s.target != (0, 0) else hw
            rows.append({"original_size_as_tuple": s.original, "crop_coords_top_left": s.crop_top_left,
                         "target_size_as_tuple": target})
        parts = []
        for key in SIZE_KEYS:
            emb = self.size_embedders[key]
            values = torch.tensor([r[key] for r in rows], device=self.device, dtype=torch.float32)
            parts.append(emb(values))
        return torch.cat(parts, dim=-1)

    def predict(self, noisy_latents: torch.Tensor, timesteps: torch.Tensor,
                cond: dict[str, torch.Tensor], sizes: list[SizeInfo] | None = None) -> torch.Tensor:
        dtype = self.dtype
        n = noisy_latents.shape[0]
        hw = (noisy_latents.shape[2] * 8, noisy_latents.shape[3] * 8)
        vector = torch.cat([cond["pooled"].to(self.device, dtype),
                            self._size_vector(n, sizes, hw).to(dtype)], dim=-1)
        c = {"crossattn": cond["crossattn"].to(self.device, dtype), "vector": vector}
        with self._autocast():
            return self.sd_model.model(noisy_latents.to(self.device, dtype), timesteps.to(self.device), c)
