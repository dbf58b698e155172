"""The contract every model adapter fulfils so the training loop stays library- and host-agnostic."""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lora_trainer.data.sizes import SizeInfo
from lora_trainer.lora.archs import ARCHS, BASE_MODEL_VERSION, MODELSPEC_ARCH, SIDECAR_SD_VERSION

__all__ = ["ARCHS", "BASE_MODEL_VERSION", "LATENT_SCALE", "MODELSPEC_ARCH", "SIDECAR_SD_VERSION", "AdapterInfo",
           "ModelAdapter", "SizeInfo"]

if TYPE_CHECKING:  # torch is imported lazily at run time
    import torch
    from PIL import Image

    from lora_trainer.lora.target import LoraTarget
    from lora_trainer.models.objective import Objective

LATENT_SCALE = {"sd1": 0.18215, "sd2": 0.18215, "sdxl": 0.13025}


@dataclass
class AdapterInfo:
    arch: str                         # "sd1" | "sd2" | "sdxl"
    prediction_type: str = "epsilon"  # "epsilon" | "v_prediction"
    model_name: str = ""              # ss_sd_model_name (file or folder name of the base)
    model_hash: str = ""              # optional, for metadata
    extra: dict[str, Any] = field(default_factory=dict)


class ModelAdapter(abc.ABC):
    """A loaded SD-family model as the trainer sees it.

    Conventions: images are float pixels in [-1, 1], BCHW; latents returned by `encode_images` are
    already multiplied by the latent scale; `predict` returns the UNet output (epsilon or v) for
    `noisy_latents` at the `timesteps` its `objective()` produced, under conditioning `cond` from
    `encode_text`. The family (objective, latent scale/shift, sampler in `generate`) is the
    adapter's; SD1/SD2/SDXL share `models.ddpm` whatever host loaded them.
    """

    info: AdapterInfo

    @property
    def arch(self) -> str:
        return self.info.arch

    @property
    def latent_scale(self) -> float:
        return LATENT_SCALE[self.info.arch]

    @property
    def latent_shift(self) -> float:
        """Subtracted before scaling (0 for SD; FLUX-type VAEs have a shift)."""
        return 0.0

    def objective(self, *, noise_offset: float = 0.0, min_snr_gamma: float | None = None) -> Objective:
        """The family's training objective; the SD family's is DDPM ε/v-prediction on the scaled-linear
        schedule. A flow-matching family returns `models.flow.FlowMatchingObjective` here."""
        from lora_trainer.models.ddpm import DDPMObjective

        return DDPMObjective(self.info.prediction_type, noise_offset, min_snr_gamma)

    @property
    @abc.abstractmethod
    def device(self) -> torch.device: ...

    @property
    @abc.abstractmethod
    def dtype(self) -> torch.dtype:
        """Dtype of the frozen base weights."""

    @abc.abstractmethod
    def lora_targets(self, *, unet: bool, text_encoder: bool, conv: bool) -> list[LoraTarget]:
        """Modules to wrap, with their kohya names (already in the file's naming scheme)."""

    @abc.abstractmethod
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """VAE-encode pixels in [-1,1] to scaled latents (no grad)."""

    @abc.abstractmethod
    def encode_text(self, captions: list[str]) -> dict[str, torch.Tensor]:
        """Conditioning for the UNet. Runs with grad when text-encoder LoRA is attached and
        trained (the caller decides with torch.no_grad()). Keys are adapter-defined, e.g.
        {"crossattn": [B,77,C]} or, for SDXL, {"crossattn": ..., "pooled": [B,1280]}; every value
        is a tensor with batch first, so the trainer can cache and batch them."""

    @abc.abstractmethod
    def predict(self, noisy_latents: torch.Tensor, timesteps: torch.Tensor,
                cond: dict[str, torch.Tensor], sizes: list[SizeInfo] | None = None) -> torch.Tensor:
        """UNet forward."""

    def trainable_text_encoder(self) -> bool:
        """False where the host cannot backprop through its text encoder."""
        return True

    def set_gradient_checkpointing(self, enabled: bool) -> None:  # noqa: B027 - optional
        """Trade compute for memory in the UNet (and text encoders when trained)."""

    @abc.abstractmethod
    def generate(self, prompt: str, *, negative_prompt: str = "", seed: int = 0, steps: int = 20,
                 width: int = 512, height: int = 512, guidance_scale: float = 7.0) -> Image.Image:
        """A sample image with the currently attached LoRA (for previews and sample grids)."""

    def release_text_encoders(self, prompts: list[str],  # noqa: B027 - optional
                              encoded: Callable[[str], dict[str, torch.Tensor]] | None = None) -> None:
        """Called once every caption's conditioning is cached (text encoders frozen): a family with large
        text encoders may take the sample `prompts`' conditioning now (`encoded(prompt)`: from the run's
        text-encoder cache, without batch dimension) and move the encoders off the GPU until `restore()`.
        SD keeps them (they are small and the WebUI owns them)."""

    def prepare_for_training(self) -> None:  # noqa: B027
        """Freeze the base, move parts where training needs them, undo host hooks that cannot
        backprop. Must be undone exactly by `restore()`."""

    def restore(self) -> None:  # noqa: B027
        """Undo `prepare_for_training` (always called, after success, stop or error)."""

    def metadata(self) -> dict[str, str]:
        """Extra `ss_*` metadata the adapter knows (e.g. ss_sd_model_name, ss_v2)."""
        return {}

    def text_cache_id(self) -> str:
        """What the text-encoder outputs depend on besides the caption, for the disk cache's file names:
        a family that can read its text encoders' weights says so (`weights_fingerprint`); the default is
        the model's name and hash."""
        info = self.info
        return f"{info.arch}:{info.model_name}:{info.model_hash}"


def weights_fingerprint(*modules: torch.nn.Module | None) -> str:
    """sha256 over every tensor's name, shape, dtype and 64 evenly spaced values: another or a fine-tuned
    model changes it (its weights differ throughout), without reading gigabytes (T5-XXL: ~9 GB)."""
    import hashlib

    import torch

    digest = hashlib.sha256()
    for i, mod in enumerate(modules):
        if mod is None:
            continue
        for name, t in mod.state_dict().items():
            digest.update(f"{i}:{name}:{tuple(t.shape)}:{t.dtype}".encode())
            flat = t.detach().reshape(-1)
            if flat.numel():
                sample = flat[:: max(1, flat.numel() // 64)][:64]
                digest.update(sample.to("cpu", torch.float64).numpy().tobytes())
    return digest.hexdigest()


def move_parts(modules: dict[str, torch.nn.Module], device: torch.device | str | None,
               dtype: torch.dtype | None, vae_dtype: torch.dtype | None = None) -> None:
    """Move a model's parts to `device` / `dtype`; the VAE may keep its own dtype (SDXL's overflows in
    fp16). Parts already there are not touched."""
    import torch

    for name, mod in modules.items():
        want = (vae_dtype or dtype) if name == "vae" else dtype
        p = next(mod.parameters())
        if want is not None and p.dtype != want:
            mod.to(dtype=want)
        if device is not None and p.device != torch.device(device):
            mod.to(device=device)
