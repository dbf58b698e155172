"""Forge's loaded SD1.x / SD2.x / SDXL model (`shared.sd_model.forge_objects`) as a ModelAdapter.

UNet LoRA, trained in place on Forge's own modules: the latents and the conditioning come from
Forge's VAE and text encoders (run, as Forge runs them, under `torch.inference_mode()`, then cloned
out of it), and the UNet forward is Forge's own — fp16/bf16/fp32 weights, and also fp8, NF4 or GGUF
weights dequantised by Forge's layers on the fly, so the LoRA trains QLoRA-style on a frozen,
untouched base. `forge_autograd.frozen_base()` is what lets gradients through Forge's inference
tensors and in-place residual adds. Text-encoder LoRA is not trained here (Forge's text engines run
in inference mode).

Forge is left as it was: LoRAs it had patched in for an earlier prompt are taken out for the run
and put back after (`forge_host.ForgeLoras`); every parameter's device, dtype, `requires_grad`,
train/eval mode and hooks are snapshotted and checked (`models.snapshot.ModelSnapshot`).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import torch

from lora_trainer.models import forge_host
from lora_trainer.models.base import AdapterInfo, ModelAdapter, SizeInfo
from lora_trainer.models.block_checkpoint import checkpoint_blocks, remove_checkpointing
from lora_trainer.models.forge_autograd import frozen_base
from lora_trainer.models.snapshot import ModelSnapshot
from lora_trainer.models.webui_ldm import _checkpoint_name
from lora_trainer.models.webui_services import host_sample

if TYPE_CHECKING:
    from PIL import Image

    from lora_trainer.lora.target import LoraTarget
    from lora_trainer.models.webui_services import WebUIServices

log = logging.getLogger("lora_trainer.webui")

CHECKPOINT_BLOCKS = ("BasicTransformerBlock", "ResBlock")
SDXL_SIZE_DIMS = 6 * 256  # Forge's SDXL size conditioning: 6 Timestep(256) embeddings after the pooled vector


class ForgeAdapter(ModelAdapter):
    """Forge's `StableDiffusion` / `StableDiffusion2` / `StableDiffusionXL` engine. The host side (LoRAs
    Forge patched in, snapshot and restore, checkpointing around Forge's blocks) is shared with the
    flow family's `forge_flux.ForgeFluxAdapter`, which overrides the family's compute."""

    checkpoint_block_names: tuple[str, ...] = CHECKPOINT_BLOCKS

    def __init__(self, sd_model: Any, services: WebUIServices | None = None, *, verify_hash: bool = False):
        from lora_trainer.models.webui_services import HostRefused, WebUIServices

        why = forge_host.forge_refusal(sd_model)
        if why:
            raise HostRefused(why)
        self.sd_model = sd_model
        self.services = services or WebUIServices(sd_model_getter=lambda: sd_model, forge=True)
        self.services.check_trainable()
        self.verify_hash = verify_hash
        self.kmodel = sd_model.forge_objects.unet.model
        self.unet = self.kmodel.diffusion_model
        name, short_hash = _checkpoint_name(sd_model)
        self.info = AdapterInfo(arch=forge_host.arch_of(sd_model), prediction_type=forge_host.prediction_type(sd_model),
                                model_name=name, model_hash=short_hash,
                                extra={"host": "forge", "storage_dtype": str(getattr(self.kmodel, "storage_dtype", ""))})
        self._loras = forge_host.ForgeLoras(sd_model)
        self._snapshots: dict[str, ModelSnapshot] = {}
        self._frozen: list[torch.nn.Parameter] = []
        self._checkpointed: list[torch.nn.Module] = []
        self.restore_problems: list[str] = []

    # ---- basics
    @property
    def device(self) -> torch.device:
        if self.services.device is not None:
            return torch.device(self.services.device)
        return torch.device(self.sd_model.forge_objects.unet.load_device)

    @property
    def dtype(self) -> torch.dtype:
        """Forge's computation dtype: what its layers cast (or dequantise) the stored weights to."""
        return self.kmodel.computation_dtype

    def trainable_text_encoder(self) -> bool:
        return False

    def metadata(self) -> dict[str, str]:
        meta = {"ss_sd_model_name": self.info.model_name, "ss_v2": str(self.arch == "sd2")}
        if self.info.model_hash:
            meta["ss_sd_model_hash"] = self.info.model_hash
        return meta

    def lora_targets(self, *, unet: bool, text_encoder: bool, conv: bool) -> list[LoraTarget]:
        from lora_trainer.lora import discovery

        return discovery.ldm_unet_targets(self.unet, self.arch, conv) if unet else []

    # ---- compute (Forge's own encoders; results cloned out of inference mode)
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():  # (Forge casts to its VAE's dtype itself; fp32 in keeps fp32 latents out)
            z = self.sd_model.encode_first_stage(pixels.to(self.device, torch.float32))
        return z.clone().float()

    def encode_text(self, captions: list[str]) -> dict[str, torch.Tensor]:
        with torch.inference_mode():
            c = self.sd_model.get_learned_conditioning(list(captions))
        if isinstance(c, dict):  # SDXL: the pooled part only; sizes are per image, added in predict()
            vector = c["vector"]
            return {"crossattn": c["crossattn"].clone(), "pooled": vector[:, :vector.shape[1] - SDXL_SIZE_DIMS].clone()}
        return {"crossattn": c.clone()}

    def _size_vector(self, n: int, sizes: list[SizeInfo] | None, hw: tuple[int, int]) -> torch.Tensor:
        """Forge's SDXL size conditioning (height, width, crop top, crop left, target h, w), per image."""
        rows = []
        for i in range(n):
            s = sizes[i] if sizes and i < len(sizes) else SizeInfo(original=hw, target=hw)
            target = s.target if s.target != (0, 0) else hw
            values = torch.tensor([*s.original, *s.crop_top_left, *target], dtype=torch.float32)
            rows.append(torch.flatten(self.sd_model.embedder(values)))
        return torch.stack(rows)

    def predict(self, noisy_latents: torch.Tensor, timesteps: torch.Tensor,
                cond: dict[str, torch.Tensor], sizes: list[SizeInfo] | None = None) -> torch.Tensor:
        forge_host.load_unet(self.sd_model.forge_objects.unet)
        dev, dtype = self.device, self.dtype
        kwargs: dict[str, Any] = {}
        if "pooled" in cond:
            n = noisy_latents.shape[0]
            hw = (noisy_latents.shape[2] * 8, noisy_latents.shape[3] * 8)
            vector = torch.cat([cond["pooled"].to(dev, torch.float32),
                                self._size_vector(n, sizes, hw).to(dev)], dim=1)
            kwargs["y"] = vector.to(dtype)
        with frozen_base():
            return self.unet(noisy_latents.to(dev, dtype), timesteps.to(dev).float(),
                             context=cond["crossattn"].to(dev, dtype), transformer_options={}, **kwargs)

    # ---- gradient checkpointing (Forge's own raises NotImplementedError): torch's, recomputing
    # under frozen_base() too
    def set_gradient_checkpointing(self, enabled: bool) -> None:
        self._remove_checkpointing()
        if enabled:
            self._checkpointed = checkpoint_blocks(self.unet, self.checkpoint_block_names, around=frozen_base)

    def _remove_checkpointing(self) -> None:
        remove_checkpointing(self._checkpointed)
        self._checkpointed = []

    # ---- prepare / restore
    def _parts(self) -> dict[str, torch.nn.Module]:
        fo = self.sd_model.forge_objects
        return {"unet": fo.unet.model, "text encoder": fo.clip.cond_stage_model, "vae": fo.vae.first_stage_model}

    def prepare_for_training(self) -> None:
        self.services.check_trainable()
        n = self._loras.remove()
        if n:
            log.info("took %d LoRA(s) Forge had applied for an earlier prompt out of the weights", n)
        try:
            forge_host.load_unet(self.sd_model.forge_objects.unet)
            self._snapshots = {k: ModelSnapshot.take(m, with_hash=self.verify_hash) for k, m in self._parts().items()}
            # every parameter that asks for gradients is frozen for the run and given back its flag after:
            # frozen_base hands torch calls grad-free aliases of inference tensors, but not the calls it never
            # sees, such as bitsandbytes' `MatMul4Bit` autograd function, which gets the NF4 layers' biases
            # (Parameters Forge made under inference mode with requires_grad=True) as they are
            self._frozen = [p for p in self.unet.parameters() if p.requires_grad]
            for p in self._frozen:
                p.requires_grad_(False)
        except BaseException:
            self._loras.put_back()
            raise

    def restore(self) -> None:
        self._remove_checkpointing()
        try:
            with torch.inference_mode():  # the only place an inference tensor may ask for gradients again
                for p in self._frozen:
                    p.requires_grad_(True)
            self._frozen = []
            parts = self._parts()
            problems: list[str] = []
            for key, snap in self._snapshots.items():
                snap.restore(parts[key])
                problems += [f"{key}: {d}" for d in snap.differences(parts[key])]
            self.restore_problems = problems
            if problems:
                log.error("the model differs from before training: %s", "; ".join(problems[:10]))
        finally:
            self._loras.put_back()

    def verify(self) -> list[str]:
        """What differs from the model as it was before training (empty: identical)."""
        if self._loras.saved is not None:  # called between prepare and restore
            parts = self._parts()
            return [f"{k}: {d}" for k, s in self._snapshots.items() for d in s.differences(parts[k])]
        return list(self.restore_problems)

    # ---- samples
    def generate(self, prompt: str, *, negative_prompt: str = "", seed: int = 0, steps: int = 20,
                 width: int = 512, height: int = 512, guidance_scale: float = 7.0) -> Image.Image:
        return host_sample(self, self.services, self.sd_model.decode_first_stage, prompt,
                           negative_prompt=negative_prompt, seed=seed, steps=steps, width=width, height=height,
                           guidance_scale=guidance_scale)
