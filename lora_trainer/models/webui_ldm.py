"""The WebUI's loaded SD1/SD2 model (ldm `LatentDiffusion`) as a ModelAdapter, trained in place.

No copy and no reload: LoRA wraps the host's own UNet and text-encoder modules, encoding goes
through the host's VAE and text encoder, and `restore()` leaves the object exactly as it found it
(checked with a `ModelSnapshot`). Works on the bare `ldm` model (tests) and on A1111's hijacked one
(`cond_stage_model.wrapped`). Host services (lock, optimisations, builtin-Lora unmerge) come in as a
`WebUIServices`; nothing here imports `modules.*`.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import TYPE_CHECKING, Any

import torch

from lora_trainer.models.base import AdapterInfo, ModelAdapter, SizeInfo
from lora_trainer.models.block_checkpoint import checkpoint_blocks, remove_checkpointing
from lora_trainer.models.snapshot import ModelSnapshot
from lora_trainer.models.webui_services import WebUIServices, host_sample

if TYPE_CHECKING:
    from PIL import Image

    from lora_trainer.lora.target import LoraTarget

log = logging.getLogger("lora_trainer.webui")

CHECKPOINT_BLOCKS = ("BasicTransformerBlock", "ResBlock")


def _checkpoint_name(sd_model: Any) -> tuple[str, str]:
    """(name, short hash) of the host's checkpoint, as A1111 records them on the model."""
    info = getattr(sd_model, "sd_checkpoint_info", None)
    name = getattr(info, "name_for_extra", None) or getattr(info, "model_name", None) or ""
    if not name and getattr(info, "filename", None):
        name = os.path.splitext(os.path.basename(info.filename))[0]
    return name or type(sd_model).__name__, str(getattr(sd_model, "sd_model_hash", "") or "")


class WebUILdmAdapter(ModelAdapter):
    """A1111 SD1.x / SD2.x (`ldm.models.diffusion.ddpm.LatentDiffusion`)."""

    def __init__(self, sd_model: Any, services: WebUIServices | None = None, *, verify_hash: bool = False):
        self.sd_model = sd_model
        self.services = services or WebUIServices(sd_model_getter=lambda: sd_model)
        self.verify_hash = verify_hash
        self.unet = sd_model.model.diffusion_model
        cond = sd_model.cond_stage_model
        self.te_root = getattr(cond, "wrapped", cond)   # A1111 wraps the ldm embedder
        self.open_clip = hasattr(self.te_root, "model") and hasattr(self.te_root.model, "transformer") \
            and not hasattr(self.te_root, "transformer")
        arch = "sd2" if self.open_clip or getattr(sd_model, "is_sd2", False) else "sd1"
        pred = "v_prediction" if getattr(sd_model, "parameterization", "eps") == "v" else "epsilon"
        name, short_hash = _checkpoint_name(sd_model)
        self.info = AdapterInfo(arch=arch, prediction_type=pred, model_name=name, model_hash=short_hash,
                                extra={"host": "webui"})
        self.services.check_trainable()
        self._snapshot: ModelSnapshot | None = None
        self._undone_optimizations = False
        self._checkpointed: list[torch.nn.Module] = []
        self.restore_problems: list[str] = []

    # ---- basics
    @property
    def device(self) -> torch.device:
        if self.services.device is not None:
            return torch.device(self.services.device)
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    def _te_dtype(self) -> torch.dtype:
        return next(self.te_root.parameters()).dtype

    def metadata(self) -> dict[str, str]:
        meta = {"ss_sd_model_name": self.info.model_name, "ss_v2": str(self.arch == "sd2")}
        if self.info.model_hash:
            meta["ss_sd_model_hash"] = self.info.model_hash
        return meta

    # ---- targets
    def _te_layers_used(self) -> int | None:
        """open_clip with layer="penultimate" never runs its last block: no LoRA there (kohya's
        SD2 text encoder has the last layer removed too)."""
        idx = getattr(self.te_root, "layer_idx", 0)
        if self.open_clip and idx:
            return len(self.te_root.model.transformer.resblocks) - int(idx)
        return None

    def lora_targets(self, *, unet: bool, text_encoder: bool, conv: bool) -> list[LoraTarget]:
        from lora_trainer.lora import discovery

        out: list[LoraTarget] = []
        if unet:
            out += discovery.ldm_unet_targets(self.unet, self.arch, conv)
        if text_encoder:
            if self.open_clip:
                used = self._te_layers_used()
                for t in discovery.open_clip_targets(self.te_root.model.transformer, prefix="lora_te"):
                    layer = int(t.name.split("_layers_")[1].split("_")[0])
                    if used is None or layer < used:
                        out.append(t)
            else:
                out += discovery.text_encoder_targets(self.te_root.transformer, prefix="lora_te")
        return out

    # ---- compute
    def _autocast(self) -> Any:
        if self.services.autocast is not None and self.dtype != torch.float32:
            return self.services.autocast()
        return contextlib.nullcontext()

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        vae = self.sd_model.first_stage_model
        vae_dtype = next(vae.parameters()).dtype
        with torch.no_grad(), self._autocast():
            posterior = self.sd_model.encode_first_stage(pixels.to(self.device, vae_dtype))
            z = self.sd_model.get_first_stage_encoding(posterior)
        return z.float()

    def encode_text(self, captions: list[str]) -> dict[str, torch.Tensor]:
        with self._autocast():
            c = self.sd_model.get_learned_conditioning(list(captions))
        if isinstance(c, dict):  # never for LatentDiffusion; guards a mis-detected SDXL
            raise TypeError("expected a tensor conditioning from an SD1/SD2 model")
        return {"crossattn": c}

    def predict(self, noisy_latents: torch.Tensor, timesteps: torch.Tensor,
                cond: dict[str, torch.Tensor], sizes: list[SizeInfo] | None = None) -> torch.Tensor:
        dtype = self.dtype
        with self._autocast():
            out = self.sd_model.apply_model(noisy_latents.to(self.device, dtype), timesteps.to(self.device),
                                            cond["crossattn"].to(self.device, dtype))
        return out

    # ---- gradient checkpointing (torch's non-reentrant one: ldm's own ignores LoRA parameters)
    def set_gradient_checkpointing(self, enabled: bool) -> None:
        self._remove_checkpointing()
        if enabled:
            self._checkpointed = checkpoint_blocks(self.unet, CHECKPOINT_BLOCKS)

    def _remove_checkpointing(self) -> None:
        remove_checkpointing(self._checkpointed)
        self._checkpointed = []

    # ---- prepare / restore
    def prepare_for_training(self) -> None:
        svc = self.services
        svc.check_trainable()
        if svc.unmerge_networks is not None:
            n = svc.unmerge_networks(self.sd_model)
            if n:
                log.info("removed LoRA weights merged by the builtin Lora extension from %d modules", n)
        self._snapshot = ModelSnapshot.take(self.sd_model, with_hash=self.verify_hash)
        # --medvram: the WebUI keeps one part on the GPU and tracks which; training moves parts
        # around, so the devices are restored below and this record with them
        self._medvram = svc.medvram(self.arch == "sdxl") and svc.lowvram_get is not None
        self._gpu_part = svc.lowvram_get() if self._medvram else None
        if svc.undo_optimizations is not None and not svc.option("training_xattention_optimizations", False):
            svc.undo_optimizations()
            self._undone_optimizations = True
        for p in self.sd_model.parameters():
            p.requires_grad_(False)

    def restore(self) -> None:
        self._remove_checkpointing()
        svc = self.services
        try:
            if self._undone_optimizations and svc.apply_optimizations is not None:
                svc.apply_optimizations()
        finally:
            self._undone_optimizations = False
            if self._snapshot is not None:
                self._snapshot.restore(self.sd_model)
                if getattr(self, "_medvram", False) and svc.lowvram_set is not None:
                    svc.lowvram_set(self._gpu_part)
                self.restore_problems = self._snapshot.differences(self.sd_model)
                if self.restore_problems:
                    log.error("the model differs from before training: %s", "; ".join(self.restore_problems[:10]))

    def verify(self) -> list[str]:
        """What differs from the model as it was before training (empty: identical)."""
        return self._snapshot.differences(self.sd_model) if self._snapshot else []

    # ---- samples
    def generate(self, prompt: str, *, negative_prompt: str = "", seed: int = 0, steps: int = 20,
                 width: int = 512, height: int = 512, guidance_scale: float = 7.0) -> Image.Image:
        return host_sample(self, self.services, self.sd_model.decode_first_stage, prompt,
                           negative_prompt=negative_prompt, seed=seed, steps=steps, width=width, height=height,
                           guidance_scale=guidance_scale)
