"""Forge's loaded FLUX.1 (dev / schnell) or Chroma checkpoint as a ModelAdapter: the flow family on the host.

The LoRA trains QLoRA-style on Forge's own modules, left frozen and untouched: its transformer
(`forge_objects.unet.model.diffusion_model`, BFL layout: `double_blocks.N.img_attn.qkv`, so the run's
module names are the file's kohya keys and nothing is fused), with Forge's own forward - bf16/fp16/fp32
weights, and also fp8 ("Diffusion in Low Bits"), GGUF or NF4 ones dequantised by Forge's layers on the
fly. Conditioning is Forge's: its CLIP-L + T5 (FLUX.1) or T5 (Chroma) text engines, run under
inference mode per caption (so emphasis and padding are what a generation gets), cached by the
trainer. FLUX.1-dev gets its guidance input (`guidance_scale_train`, 1.0 by default, as kohya);
schnell and Chroma have none. The host side (Forge's LoRA patches out and back, snapshot, checks,
checkpointing) is `forge.ForgeAdapter`'s.

Why T5 sequences are padded and cut back per sample: Forge's T5 engine pads FLUX.1 prompts to 256
tokens and Chroma prompts not at all (and never truncates), while cached conditioning is stacked per
batch. Each caption's sequence is zero-padded to `T5_PAD` with its length kept beside it, and
`predict` runs the transformer once per distinct length on exactly the tokens Forge would give it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import torch

from lora_trainer.errors import ConfigError
from lora_trainer.models import flow, flux_math, forge_host
from lora_trainer.models.base import AdapterInfo, SizeInfo
from lora_trainer.models.flux_adapter import FluxOptions, check_kind_options, flux_objective
from lora_trainer.models.forge import ForgeAdapter
from lora_trainer.models.forge_autograd import frozen_base
from lora_trainer.models.preview import to_pil
from lora_trainer.models.webui_ldm import _checkpoint_name
from lora_trainer.models.webui_services import host_sample

if TYPE_CHECKING:
    from PIL import Image

    from lora_trainer.lora.target import LoraTarget
    from lora_trainer.models.webui_services import WebUIServices

log = logging.getLogger("lora_trainer.webui")

T5_PAD = 512          # cached T5 sequences are zero-padded to this many tokens (FLUX.1-dev's T5 limit)
LATENT_CHANNELS = 16
VAE_DOWNSCALE = 8


class ForgeFluxAdapter(ForgeAdapter):
    """Forge's `Flux` / `Chroma` engine (see the module docstring)."""

    checkpoint_block_names = ("DoubleStreamBlock", "SingleStreamBlock")

    def __init__(self, sd_model: Any, services: WebUIServices | None = None, *, verify_hash: bool = False,
                 options: FluxOptions | None = None):
        super().__init__(sd_model, services, verify_hash=verify_hash)
        self.options = options or FluxOptions()
        kind = forge_host.arch_of(sd_model)
        check_kind_options(kind, self.options.guidance_scale_train, self.options.lora_layout)
        if self.options.lora_layout != "kohya":
            raise ConfigError("lora_layout", "in Forge the LoRA trains on Forge's own (BFL-layout) modules and is "
                                             "written in the kohya layout: set lora_layout: kohya")
        for on, name in ((self.options.fp8_base, "fp8_base"), (self.options.blocks_to_swap, "blocks_to_swap")):
            if on:
                log.warning("%s is ignored in Forge: the loaded checkpoint's storage and Forge's memory "
                            "settings apply (Settings > Forge: 'Diffusion in Low Bits', GPU weights)", name)
        name, short_hash = _checkpoint_name(sd_model)
        self.info = AdapterInfo(arch=kind, prediction_type="flow", model_name=name, model_hash=short_hash,
                                extra={"host": "forge", "storage_dtype": str(getattr(self.kmodel, "storage_dtype", ""))})

    # ---- the family -------------------------------------------------------------------------------
    @property
    def latent_scale(self) -> float:
        """Forge's `process_in` already scales and shifts its VAE's latents (FLUX.1's 0.3611 / 0.1159)."""
        return 1.0

    def objective(self, *, noise_offset: float = 0.0, min_snr_gamma: float | None = None) -> flow.FlowMatchingObjective:
        """As the standalone FLUX.1 adapter: `auto` = the resolution shift for dev, logit-normal otherwise."""
        return flux_objective(self.options, dynamic_shift=self.arch == "flux-dev")

    def metadata(self) -> dict[str, str]:
        o = self.options
        meta = {"ss_sd_model_name": self.info.model_name, "ss_timestep_sampling": o.timestep_sampling,
                "ss_discrete_flow_shift": str(o.discrete_flow_shift), "ss_sigmoid_scale": str(o.sigmoid_scale)}
        if self.info.model_hash:
            meta["ss_sd_model_hash"] = self.info.model_hash
        if self.arch == "flux-dev":
            meta["ss_guidance_scale"] = str(self._train_guidance)
        return meta

    @property
    def _train_guidance(self) -> float:
        g = self.options.guidance_scale_train
        return 1.0 if g is None else float(g)

    def lora_targets(self, *, unet: bool, text_encoder: bool, conv: bool) -> list[LoraTarget]:
        from lora_trainer.lora.discovery_flux import bfl_flux_targets

        if not unet:
            return []
        o = self.options
        try:
            return bfl_flux_targets(self.unet, layers=o.layers, double_blocks=o.double_blocks,
                                    single_blocks=o.single_blocks)
        except ValueError as e:
            field = ("flux_layers" if "layers" in str(e) else
                     "flux_double_blocks" if "double" in str(e) else "flux_single_blocks")
            raise ConfigError(field, str(e)) from e

    # ---- conditioning: Forge's text engines, one caption at a time --------------------------------
    def encode_text(self, captions: list[str]) -> dict[str, torch.Tensor]:
        """{"crossattn": [B, T5_PAD, D] (zero-padded), "t5_len": [B]} plus {"pooled": [B, 768]} for FLUX.1;
        in CPU memory (a cached FLUX.1 caption is 4 MB), cloned out of inference mode."""
        seqs, pooled = [], []
        for caption in captions:
            with torch.inference_mode():
                c = self.sd_model.get_learned_conditioning([caption])
            t5 = c["crossattn"] if isinstance(c, dict) else c
            seqs.append(t5.reshape(-1, t5.shape[-1]).to("cpu"))  # (chunks split by BREAK: one sequence)
            if isinstance(c, dict) and "vector" in c:
                pooled.append(c["vector"].to("cpu"))
        lengths = [min(len(s), T5_PAD) for s in seqs]
        if any(len(s) > T5_PAD for s in seqs):
            log.warning("a caption is longer than %d T5 tokens; its conditioning is cut there", T5_PAD)
        out = torch.zeros(len(seqs), T5_PAD, seqs[0].shape[-1], dtype=seqs[0].dtype)
        for i, (s, n) in enumerate(zip(seqs, lengths, strict=True)):
            out[i, :n] = s[:n]
        cond = {"crossattn": out, "t5_len": torch.tensor(lengths, dtype=torch.int64)}
        if pooled:
            cond["pooled"] = torch.cat(pooled).clone()
        return cond

    # ---- the transformer ---------------------------------------------------------------------------
    def predict(self, noisy_latents: torch.Tensor, timesteps: torch.Tensor,
                cond: dict[str, torch.Tensor], sizes: list[SizeInfo] | None = None) -> torch.Tensor:
        """Velocity (ε − x0) for latents [B, 16, h, w] at timesteps σ·1000, from Forge's transformer."""
        return self._velocity(noisy_latents, timesteps / flow.NUM_TRAIN_TIMESTEPS, cond, self._train_guidance)

    def _velocity(self, x: torch.Tensor, sigma: torch.Tensor, cond: dict[str, torch.Tensor],
                  guidance: float) -> torch.Tensor:
        """Forge's `KModel.apply_model` without its σ bookkeeping (Forge's flow models predict the velocity
        and take σ itself as the timestep), once per distinct caption length."""
        forge_host.load_unet(self.sd_model.forge_objects.unet)
        dev, dtype = self.device, self.dtype
        x = x.to(dev, dtype)
        sigma = sigma.to(dev, torch.float32).reshape(-1).expand(x.shape[0])
        lengths = [int(n) for n in cond["t5_len"].tolist()]
        outs: list[tuple[list[int], torch.Tensor]] = []
        for n in dict.fromkeys(lengths):
            idx = [i for i, m in enumerate(lengths) if m == n]
            whole = len(idx) == len(lengths)
            pick = (lambda t: t) if whole else (lambda t, ix=idx: t[ix])
            kwargs: dict[str, Any] = {"context": pick(cond["crossattn"])[:, :n].to(dev, dtype)}
            if "pooled" in cond:
                kwargs["y"] = pick(cond["pooled"]).to(dev, dtype)
            if self.arch == "flux-dev":
                kwargs["guidance"] = torch.full((len(idx),), float(guidance), device=dev, dtype=dtype)
            with frozen_base():
                out = self.unet(pick(x), pick(sigma), transformer_options={}, **kwargs)
            if whole:
                return out
            outs.append((idx, out))
        order = [i for idx, _ in outs for i in idx]
        merged = torch.cat([o for _, o in outs])
        return merged[torch.tensor(order, device=merged.device).argsort()]

    # ---- samples -----------------------------------------------------------------------------------
    def generate(self, prompt: str, *, negative_prompt: str = "", seed: int = 0, steps: int = 20,
                 width: int = 512, height: int = 512, guidance_scale: float = 3.5) -> Image.Image:
        """Through Forge's own txt2img when the host gives one; else Euler on Forge's σ grid (its
        predictor's shift μ) from a fixed seed, decoded by Forge's VAE. FLUX.1-dev: `guidance_scale` is its
        guidance input; Chroma: classifier-free guidance against `negative_prompt`; schnell: none."""
        if self.services.txt2img is not None:
            return host_sample(self, self.services, self.sd_model.decode_first_stage, prompt,
                               negative_prompt=negative_prompt, seed=seed, steps=steps, width=width, height=height,
                               guidance_scale=guidance_scale)
        with torch.no_grad():
            g = torch.Generator().manual_seed(int(seed))
            x = torch.randn((1, LATENT_CHANNELS, height // VAE_DOWNSCALE, width // VAE_DOWNSCALE), generator=g)
            x = x.to(self.device)
            sigmas = flow.euler_sigmas(steps, mu=float(self.kmodel.predictor.mu))
            cond = self.encode_text([prompt])
            cfg = self.arch == "chroma" and guidance_scale > 1
            negative = self.encode_text([negative_prompt]) if cfg else None

            def velocity(xt: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
                v = self._velocity(xt, sigma, cond, guidance_scale).float()
                if negative is not None:
                    v_neg = self._velocity(xt, sigma, negative, guidance_scale).float()
                    v = v_neg + guidance_scale * (v - v_neg)
                return v

            x = flux_math.euler_sample(velocity, x.float(), sigmas)
            with torch.inference_mode():
                img = self.sd_model.decode_first_stage(x.to(self.dtype))
        return to_pil(img[0])
