"""ModelAdapter over diffusers/transformers SD1, SD2 (eps or v) and SDXL models (standalone use).

Why: outside the WebUI the trainer needs one object that encodes images and captions and runs the
UNet, whatever the architecture; the training loop never sees diffusers. Text conditioning follows
what the LoRA's consumers (A1111, ComfyUI, kohya) do at inference, so a LoRA trained here behaves
the same there: SD1 uses the last CLIP layer (or an earlier one with `clip_skip`, final layer norm
applied), SD2 the diffusers text encoder's last layer (already the penultimate open_clip layer),
SDXL the penultimate layers of both encoders concatenated, pooled output of encoder 2, and size
conditioning (`add_time_ids`) from `SizeInfo`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from lora_trainer.models.base import (
    BASE_MODEL_VERSION,
    AdapterInfo,
    ModelAdapter,
    SizeInfo,
    move_parts,
    weights_fingerprint,
)
from lora_trainer.models.ddpm import ddim_sample
from lora_trainer.models.preview import to_pil
from lora_trainer.models.snapshot import ModelSnapshot, eval_mode

if TYPE_CHECKING:
    from PIL import Image

    from lora_trainer.lora.target import LoraTarget

class DiffusersAdapter(ModelAdapter):
    """SD-family model made of diffusers/transformers modules.

    `text_encoders`/`tokenizers`: one each for SD1/SD2, two for SDXL (CLIP-L, then OpenCLIP-G with
    projection). `clip_skip` counts from the end (1 = last layer). `max_token_length` 75/150/225
    encodes long captions in 77-token chunks, concatenated (as A1111 does).
    """

    def __init__(self, unet: Any, vae: Any, text_encoders: list[Any], tokenizers: list[Any],
                 info: AdapterInfo, *, clip_skip: int = 1, max_token_length: int = 75):
        if info.arch == "sdxl" and len(text_encoders) != 2:
            raise ValueError("SDXL needs two text encoders (CLIP-L and OpenCLIP-G)")
        if info.arch != "sdxl" and len(text_encoders) != 1:
            raise ValueError(f"{info.arch} needs exactly one text encoder")
        self.unet, self.vae = unet, vae
        self.text_encoders, self.tokenizers = list(text_encoders), list(tokenizers)
        self.info = info
        self.clip_skip = max(1, int(clip_skip or 1))
        self.max_token_length = max(75, int(max_token_length or 75))
        self._saved: dict[str, ModelSnapshot] | None = None

    # ---- basic facts -------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    @property
    def latent_scale(self) -> float:
        """The VAE's own scaling factor (the tiny model's differs from the real SD value)."""
        return float(getattr(self.vae.config, "scaling_factor", None) or super().latent_scale)

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def modules(self) -> dict[str, torch.nn.Module]:
        """Every torch part by name: `unet`, `vae`, `text_encoder`, (`text_encoder_2`)."""
        parts = {"unet": self.unet, "vae": self.vae}
        for i, te in enumerate(self.text_encoders):
            parts["text_encoder" if i == 0 else f"text_encoder_{i + 1}"] = te
        return parts

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None,
           *, vae_dtype: torch.dtype | None = None) -> DiffusersAdapter:
        """Move parts; the VAE may keep its own dtype (SDXL's VAE overflows in fp16)."""
        move_parts(self.modules(), device, dtype, vae_dtype)
        return self

    # ---- LoRA targets ------------------------------------------------------------------------
    def lora_targets(self, *, unet: bool, text_encoder: bool, conv: bool) -> list[LoraTarget]:
        """UNet targets (LoCon convs when `conv`) then text-encoder targets, in module order; the
        selection rules and names are `lora.discovery`'s."""
        from lora_trainer.lora import discovery

        targets: list[LoraTarget] = []
        if unet:
            targets += discovery.unet_targets(self.unet, self.arch, conv=conv)
        if text_encoder:
            tes = self.text_encoders
            for te, prefix in zip(tes, discovery.text_encoder_prefixes(len(tes)), strict=True):
                targets += discovery.text_encoder_targets(te, prefix)
        return targets

    # ---- encoding ----------------------------------------------------------------------------
    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """Latent mean (deterministic, so cached and live latents agree) times the latent scale."""
        vae_dtype = next(self.vae.parameters()).dtype
        dist = self.vae.encode(pixels.to(self.device, vae_dtype)).latent_dist
        return dist.mean * self.latent_scale

    def _token_chunks(self, tokenizer: Any, captions: list[str]) -> torch.Tensor:
        """Token ids [B, n_chunks, 77]: each chunk is BOS + 75 tokens + EOS/pad."""
        n_chunks = (self.max_token_length + 74) // 75
        body = 75 * n_chunks
        enc = tokenizer(captions, add_special_tokens=False, truncation=True, max_length=body,
                        padding=False)
        bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
        out = torch.full((len(captions), n_chunks, 77), pad, dtype=torch.long)
        for b, ids in enumerate(enc["input_ids"]):
            for c in range(n_chunks):
                part = ids[c * 75:(c + 1) * 75]
                row = [bos, *part, eos]
                out[b, c, :len(row)] = torch.tensor(row, dtype=torch.long)
        if n_chunks > 1:  # drop trailing chunks that are empty for every caption
            used = max(1, max((len(ids) + 74) // 75 for ids in enc["input_ids"]) if captions else 1)
            out = out[:, :used]
        return out

    def _run_te(self, te: Any, ids: torch.Tensor, layer_from_end: int, final_norm: bool
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Hidden states of one encoder (chunks concatenated) and the first chunk's pooled output."""
        b, n, length = ids.shape
        out = te(ids.reshape(b * n, length).to(te.device), output_hidden_states=True)
        if layer_from_end == 1 and final_norm:
            hidden = out.last_hidden_state
        else:
            hidden = out.hidden_states[-layer_from_end]
            if final_norm:
                hidden = _final_layer_norm(te)(hidden)
        hidden = hidden.reshape(b, n * length, hidden.shape[-1])
        pooled = getattr(out, "text_embeds", None)
        if pooled is not None:
            pooled = pooled.reshape(b, n, -1)[:, 0]
        return hidden, pooled

    def encode_text(self, captions: list[str]) -> dict[str, torch.Tensor]:
        if self.info.arch != "sdxl":
            ids = self._token_chunks(self.tokenizers[0], captions)
            hidden, _ = self._run_te(self.text_encoders[0], ids, self.clip_skip, final_norm=True)
            return {"crossattn": hidden}
        # SDXL: penultimate layer of both encoders (clip_skip 1 -> hidden_states[-2]), no final norm
        layer = self.clip_skip + 1
        h1, _ = self._run_te(self.text_encoders[0], self._token_chunks(self.tokenizers[0], captions),
                             layer, final_norm=False)
        h2, pooled = self._run_te(self.text_encoders[1], self._token_chunks(self.tokenizers[1], captions),
                                  layer, final_norm=False)
        return {"crossattn": torch.cat([h1, h2.to(h1.device)], dim=-1), "pooled": pooled}

    # ---- UNet ----------------------------------------------------------------------------------
    def time_ids(self, sizes: list[SizeInfo] | None, batch: int, latent_hw: tuple[int, int]) -> torch.Tensor:
        """SDXL add_time_ids [B, 6]: original (h, w), crop (top, left), target (h, w)."""
        f = self.vae_scale_factor
        default = (latent_hw[0] * f, latent_hw[1] * f)
        rows = []
        for i in range(batch):
            s = sizes[i] if sizes else SizeInfo(original=default)
            target = s.target if s.target and s.target != (0, 0) else default
            orig = s.original if s.original and s.original != (0, 0) else target
            rows.append([*orig, *s.crop_top_left, *target])
        return torch.tensor(rows, dtype=torch.float32)

    def predict(self, noisy_latents: torch.Tensor, timesteps: torch.Tensor,
                cond: dict[str, torch.Tensor], sizes: list[SizeInfo] | None = None) -> torch.Tensor:
        dev, dt = self.device, self.dtype
        extra: dict[str, Any] = {}
        if self.info.arch == "sdxl":
            ids = self.time_ids(sizes, noisy_latents.shape[0], tuple(noisy_latents.shape[-2:]))
            extra["added_cond_kwargs"] = {"text_embeds": cond["pooled"].to(dev, dt),
                                          "time_ids": ids.to(dev, dt)}
        return self.unet(noisy_latents.to(dev, dt), timesteps.to(dev),
                         encoder_hidden_states=cond["crossattn"].to(dev, dt), **extra).sample

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        if enabled:
            self.unet.enable_gradient_checkpointing()
        else:
            self.unet.disable_gradient_checkpointing()
        for te in self.text_encoders:  # transformers 5 renamed the methods ("activation_...")
            kwargs = {"use_reentrant": False}
            if enabled and hasattr(te, "activation_checkpointing_enable"):
                te.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
            elif enabled:
                te.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
            else:
                (getattr(te, "activation_checkpointing_disable", None) or te.gradient_checkpointing_disable)()

    def set_attention(self, kind: str) -> None:
        """"sdpa" (torch scaled_dot_product_attention, the default) or "default" (plain matmul)."""
        from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

        self.unet.set_attn_processor(AttnProcessor2_0() if kind == "sdpa" else AttnProcessor())

    # ---- prepare / restore -------------------------------------------------------------------
    def prepare_for_training(self) -> None:
        """Freeze every base weight; VAE in eval, UNet and text encoders in train mode."""
        if self._saved is None:
            self._saved = {name: ModelSnapshot.take(mod) for name, mod in self.modules().items()}
        for name, mod in self.modules().items():
            mod.requires_grad_(False)
            mod.train(name != "vae")

    def restore(self) -> None:
        saved, self._saved = self._saved, None
        for name, snap in (saved or {}).items():
            snap.restore(self.modules()[name])

    # ---- sampling ----------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, prompt: str, *, negative_prompt: str = "", seed: int = 0, steps: int = 20,
                 width: int = 512, height: int = 512, guidance_scale: float = 7.0) -> Image.Image:
        """The SD family's DDIM (eta 0) with classifier-free guidance; the same seed gives the same image."""
        f = self.vae_scale_factor
        h, w = max(f, int(height) // f * f), max(f, int(width) // f * f)
        sizes = [SizeInfo(original=(h, w), target=(h, w))] * 2
        with eval_mode(self.modules().values()):
            cond = self.encode_text([negative_prompt, prompt])
            gen = torch.Generator("cpu").manual_seed(int(seed))
            x = torch.randn((1, self.unet.config.in_channels, h // f, w // f), generator=gen, dtype=torch.float32)
            x = ddim_sample(lambda xt, t, c: self.predict(xt, t, c, sizes), x.to(self.device), cond, steps,
                            guidance_scale, self.info.prediction_type)
            vae_dtype = next(self.vae.parameters()).dtype
            img = self.vae.decode((x / self.latent_scale).to(vae_dtype)).sample
        return to_pil(img[0])

    # ---- metadata ----------------------------------------------------------------------------
    def text_cache_id(self) -> str:
        """The text encoders' weights and tokenizer sizes (the disk cache's file names change with them)."""
        return (f"{self.info.arch}:tok {[len(t) for t in self.tokenizers]}:"
                f"{weights_fingerprint(*self.text_encoders)}")

    def metadata(self) -> dict[str, str]:
        v = self.info.prediction_type == "v_prediction"
        version = BASE_MODEL_VERSION[self.info.arch] + ("_v" if v and self.info.arch == "sd2" else "")
        md = {"ss_sd_model_name": self.info.model_name, "ss_v2": str(self.info.arch == "sd2"),
              "ss_base_model_version": version, "ss_v_parameterization": str(v),
              "ss_clip_skip": str(self.clip_skip), "modelspec.prediction_type": "v" if v else "epsilon"}
        return md


def _final_layer_norm(te: Any) -> torch.nn.Module:
    """The encoder's final LayerNorm (transformers 5 has no `text_model` level, 4 has one)."""
    inner = getattr(te, "text_model", te)
    return inner.final_layer_norm
