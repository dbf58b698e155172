"""ModelAdapter for FLUX.1 (dev / schnell-derived) and Chroma: the engine trains them through the same step
as SD, only the family differs (flow matching, packed tokens, T5 + CLIP-L conditioning, Euler sampler).

Why latents stay unpacked between the adapter and the engine: cached latents, buckets and the objective's
noise all work on [B, 16, h, w]; packing 2x2 patches into tokens is a permutation, so it is done inside
`predict` (and undone on its output) without changing the maths. The pieces are the groundwork's
(`flux_math`, `flux_sampler`, `discovery_flux`, `fp8_storage`, `block_swap`); this file only wires them to
the `ModelAdapter` seam and the run's settings.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from lora_trainer.errors import ConfigError
from lora_trainer.models import flux_math, flux_sampler
from lora_trainer.models.base import AdapterInfo, ModelAdapter, SizeInfo, move_parts, weights_fingerprint
from lora_trainer.models.flow import FlowMatchingObjective
from lora_trainer.models.objective import NoisedBatch

if TYPE_CHECKING:
    from PIL import Image

    from lora_trainer.lora.target import LoraTarget

FLUX_ARCHS = ("flux-dev", "flux-schnell", "chroma")
T5_MAX_LENGTH = {"flux-dev": 512, "flux-schnell": 256, "chroma": 512}


@dataclass(frozen=True)
class FluxObjective(FlowMatchingObjective):
    """Flow matching with FLUX.1-dev's resolution-dependent shift: μ follows each batch's token count
    (buckets differ in size), as kohya's `flux_shift` and diffusers' dynamic shifting do."""

    by_resolution: bool = False

    def noised(self, latents: torch.Tensor, generator: torch.Generator | None = None) -> NoisedBatch:
        if not self.by_resolution:
            return super().noised(latents, generator)
        mu = flux_math.shift_mu(flux_math.image_seq_len(*latents.shape[-2:]))
        return FlowMatchingObjective.noised(dataclasses.replace(self, mu=mu, by_resolution=False), latents, generator)


@dataclass(frozen=True)
class FluxOptions:
    """The run's FLUX.1 / Chroma settings (from `TrainConfig`)."""

    timestep_sampling: str = "auto"      # auto | uniform | sigmoid | shift | flux_shift
    discrete_flow_shift: float = 3.0
    sigmoid_scale: float = 1.0
    guidance_scale_train: float | None = None
    t5_max_token_length: int | None = None
    layers: tuple[str, ...] = ("attn", "mlp", "mod")
    double_blocks: str = "all"
    single_blocks: str = "all"
    fp8_base: bool = False
    blocks_to_swap: int = 0
    lora_layout: str = "kohya"
    fused_targets: bool = False  # LoHa / LoKr / DoRA: train BFL's fused qkv / linear1 as one module
    swap_prefetch: bool = True   # block swap: issue the next block's copy while one runs

    @classmethod
    def from_config(cls, cfg: Any) -> FluxOptions:
        return cls(cfg.timestep_sampling, cfg.discrete_flow_shift, cfg.sigmoid_scale, cfg.guidance_scale_train,
                   cfg.t5_max_token_length, tuple(cfg.flux_layers), str(cfg.flux_double_blocks),
                   str(cfg.flux_single_blocks), cfg.fp8_base, cfg.blocks_to_swap, cfg.lora_layout,
                   fused_targets=needs_fused_targets(cfg.network_type, cfg.dora_wd))


def needs_fused_targets(network_type: str, dora_wd: bool) -> bool:
    """Separate q/k/v LoRAs are exactly one LoRA on the fused BFL weight (stacked downs, block-diagonal ups);
    a LoHa / LoKr product or a DoRA norm is not, so these kinds train the fused module itself."""
    return network_type in ("loha", "lokr", "dora") or bool(dora_wd)


def lora_targets_for(ad: ModelAdapter, network_type: str, dora_wd: bool, **kw: Any) -> list[LoraTarget]:
    """`ad.lora_targets(**kw)` for a network of `network_type`: on a diffusers-layout FLUX.1 / Chroma model
    the fused BFL modules are trained whole when the type needs it (whatever the adapter was built with: a
    `network_weights` file may set the type, and a caller may hand over an adapter built without the run's
    options). Other adapters (SD; BFL-layout models, whose targets are the fused modules) as they are."""
    if isinstance(ad, FluxAdapter):
        return ad.lora_targets(**kw, fused=needs_fused_targets(network_type, dora_wd))
    return ad.lora_targets(**kw)


def flux_objective(o: FluxOptions, *, dynamic_shift: bool) -> FluxObjective:
    """The run's σ sampling; `auto` = the model's own: the resolution shift where its scheduler shifts
    dynamically (FLUX.1-dev), logit-normal otherwise (schnell, Chroma)."""
    mode = o.timestep_sampling
    if mode == "auto":
        mode = "flux_shift" if dynamic_shift else "sigmoid"
    if mode == "flux_shift":
        return FluxObjective("sigmoid", sigmoid_scale=o.sigmoid_scale, by_resolution=True)
    return FluxObjective(mode, sigmoid_scale=o.sigmoid_scale, shift=o.discrete_flow_shift)


def check_kind_options(kind: str, guidance_scale_train: float | None, lora_layout: str) -> None:
    """Options this FLUX.1 / Chroma kind cannot take, in one line (the dry run checks them too)."""
    if guidance_scale_train is not None and kind != "flux-dev":
        raise ConfigError("guidance_scale_train", f"only FLUX.1-dev has a guidance input; this model is "
                                                  f"{kind}: leave guidance_scale_train empty")
    if kind == "chroma" and lora_layout == "peft":
        raise ConfigError("lora_layout", "Chroma LoRAs are written in the kohya layout only (Forge reads no "
                                         "PEFT-layout Chroma file); set lora_layout: kohya")


class FluxAdapter(ModelAdapter):
    """A FLUX.1 / Chroma parts dict (`flux_tiny.build_tiny_flux_parts` / `flux_loading.load_flux_parts`)."""

    def __init__(self, parts: dict[str, Any], options: FluxOptions | None = None, *, model_name: str = ""):
        self.parts = parts
        self.kind: str = parts["kind"]
        self.options = options or FluxOptions()
        check_kind_options(self.kind, self.options.guidance_scale_train, self.options.lora_layout)
        self.info = AdapterInfo(arch=self.kind, prediction_type="flow", model_name=model_name)
        self._compute_dtype = next(parts["transformer"].parameters()).dtype
        self._swap: Any = None
        self._target: torch.device | None = None  # the training device (`place`)
        self._prompt_cache: dict[str, dict[str, torch.Tensor]] = {}
        self._t5_released = False
        self._text_files: Any = parts.get("text_files")  # flux_loading.TextEncoderFiles: encoders not loaded yet
        self._released = False  # release_text_encoders was called: T5 belongs in CPU memory

    # ---- facts -------------------------------------------------------------------------------
    @property
    def transformer(self) -> Any:
        return self.parts["transformer"]

    @property
    def device(self) -> torch.device:
        return self._target or next(self.transformer.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The compute dtype (weights stored as fp8 are upcast to it per layer)."""
        return self._compute_dtype

    @property
    def latent_scale(self) -> float:
        return float(self.parts["vae"].config.scaling_factor)

    @property
    def latent_shift(self) -> float:
        return float(self.parts["vae"].config.shift_factor or 0.0)

    @property
    def max_sequence_length(self) -> int:
        if self.options.t5_max_token_length:
            return int(self.options.t5_max_token_length)
        limit = getattr(self.parts["tokenizer_2"], "model_max_length", None) or 512
        return int(min(T5_MAX_LENGTH[self.kind], limit))

    def modules(self) -> dict[str, torch.nn.Module]:
        """The loaded parts (text encoders loaded on first use are not among them until then)."""
        names = ("transformer", "vae", "text_encoder", "text_encoder_2")
        return {n: self.parts[n] for n in names if self.parts.get(n) is not None}

    def text_encoders_loaded(self) -> bool:
        return self.parts.get("text_encoder_2") is not None

    def _load_text_encoders(self) -> None:
        """Load T5 (and CLIP-L) from their files the first time a caption or prompt must be encoded (a run
        whose captions are all in the text-encoder disk cache never does), frozen, in the compute dtype and
        on the training device, as `place` would have put them (T5 in CPU memory once released)."""
        if self._text_files is None or self.text_encoders_loaded():
            return
        for name in ("text_encoder", "text_encoder_2"):
            mod = self._text_files.load(name)
            if mod is not None:
                mod.requires_grad_(False)
                on_cpu = name == "text_encoder_2" and self._released and self.device.type != "cpu"
                move_parts({name: mod}, "cpu" if on_cpu else self.device, self._compute_dtype)
                self._t5_released = self._t5_released or on_cpu
            self.parts[name] = mod

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None,
           *, vae_dtype: torch.dtype | None = None) -> FluxAdapter:
        move_parts(self.modules(), device, dtype, vae_dtype)
        if dtype is not None:
            self._compute_dtype = dtype
        return self

    def set_attention(self, kind: str) -> None:
        """diffusers' Flux/Chroma attention always uses torch SDPA; nothing to choose."""

    # ---- the family ----------------------------------------------------------------------------
    def objective(self, *, noise_offset: float = 0.0, min_snr_gamma: float | None = None) -> FlowMatchingObjective:
        """σ sampling as kohya's flux_train_network: `auto` = the model's own scheduler (resolution shift for
        dev, logit-normal for schnell/Chroma); noise offset and min-SNR are SD-only and ignored here."""
        dynamic = bool(dict(self.parts["scheduler"].config).get("use_dynamic_shifting", False))
        return flux_objective(self.options, dynamic_shift=dynamic)

    # ---- LoRA targets ----------------------------------------------------------------------------
    def trainable_text_encoder(self) -> bool:
        """CLIP-L of FLUX.1 can carry a LoRA; T5 never does, and Chroma has no CLIP."""
        if self.kind == "chroma":
            return False
        return self.parts.get("text_encoder") is not None or (
            self._text_files is not None and self._text_files.clip is not None)

    def lora_targets(self, *, unet: bool, text_encoder: bool, conv: bool,
                     fused: bool | None = None) -> list[LoraTarget]:
        """`fused`: train BFL's fused modules whole (None: as the run's network type needs; a file reader
        passes what the file's type needs)."""
        from lora_trainer.lora.discovery_flux import flux_clip_targets, flux_transformer_targets

        o = self.options
        out: list[LoraTarget] = []
        if unet:
            try:
                out += flux_transformer_targets(self.transformer, chroma=self.kind == "chroma", layers=o.layers,
                                                double_blocks=o.double_blocks, single_blocks=o.single_blocks,
                                                fused=o.fused_targets if fused is None else fused)
            except ValueError as e:
                field = ("flux_layers" if "layers" in str(e) else
                         "flux_double_blocks" if "double" in str(e) else "flux_single_blocks")
                raise ConfigError(field, str(e)) from e
        if text_encoder and self.trainable_text_encoder():
            self._load_text_encoders()
            out += flux_clip_targets(self.parts["text_encoder"])
        return out

    # ---- encoding --------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """Scaled, shifted 16-channel latents [B, 16, H/8, W/8] (the mean: cached and live latents agree)."""
        vae = self.parts["vae"]
        z = vae.encode(pixels.to(self.device, next(vae.parameters()).dtype)).latent_dist.mean
        return flux_math.scale_latents(z, self.latent_scale, self.latent_shift)

    def encode_text(self, captions: list[str]) -> dict[str, torch.Tensor]:
        """{"t5", "pooled"} (FLUX.1) or {"t5", "t5_mask"} (Chroma): T5 frozen, CLIP-L in the caller's grad mode."""
        self._load_text_encoders()
        return flux_sampler.encode_prompts(self.parts, captions, self.max_sequence_length)

    # ---- the transformer ---------------------------------------------------------------------------
    def predict(self, noisy_latents: torch.Tensor, timesteps: torch.Tensor,
                cond: dict[str, torch.Tensor], sizes: list[SizeInfo] | None = None) -> torch.Tensor:
        """Velocity for unpacked latents at timesteps σ·1000: packed into 2x2 tokens, run, unpacked."""
        b, _, h, w = noisy_latents.shape
        dev = self.device
        tokens = flux_math.pack_latents(noisy_latents.to(dev))
        sigma = (timesteps.to(dev, torch.float32) / 1000.0)
        scale = self.options.guidance_scale_train
        guidance = flux_math.guidance_input(self.kind, b, 1.0 if scale is None else scale, device=dev)
        cond = {k: v.to(dev) for k, v in cond.items()}
        out = flux_sampler.transformer_call(self.parts, tokens, sigma, cond,
                                            flux_math.image_ids(h, w, device=dev, dtype=self.dtype), guidance)
        return flux_math.unpack_latents(out, h, w)

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        tr = self.transformer
        (tr.enable_gradient_checkpointing if enabled else tr.disable_gradient_checkpointing)()
        clip = self.parts.get("text_encoder")
        if clip is None:
            return
        kwargs = {"use_reentrant": False}  # transformers 5 renamed the methods ("activation_...")
        if enabled and hasattr(clip, "activation_checkpointing_enable"):
            clip.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        elif enabled:
            clip.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        else:
            (getattr(clip, "activation_checkpointing_disable", None) or clip.gradient_checkpointing_disable)()

    def prepare_for_training(self) -> None:
        """Freeze every part, and apply fp8 storage / block swap where `place` has not done so yet."""
        for mod in self.modules().values():
            mod.requires_grad_(False)
        self._memory_options()

    def _memory_options(self) -> bool:
        """fp8 storage of the blocks' weights (irreversible: the run loaded this base itself) and block swap
        (undone by `restore`); True when blocks are swapped."""
        o = self.options
        if o.fp8_base:
            from lora_trainer.models.fp8_storage import in_blocks, store_fp8

            store_fp8(self.transformer, select=in_blocks)
        if o.blocks_to_swap and self._swap is None:
            from lora_trainer.models.block_swap import BlockSwap, flux_swap_blocks

            try:
                blocks = flux_swap_blocks(self.transformer, o.blocks_to_swap)
            except ValueError as e:
                raise ConfigError("blocks_to_swap", str(e)) from e
            self._swap = BlockSwap(blocks, self._target or self.device, prefetch=o.swap_prefetch).attach()
        return self._swap is not None

    def place(self, device: torch.device | str, dtype: torch.dtype, *, vae_dtype: torch.dtype | None = None
              ) -> FluxAdapter:
        """Move the model to `device` for training without ever holding the whole base there: cast, freeze,
        store fp8 and pick the swapped blocks while it is still in CPU memory, then move everything except
        the swapped blocks (a 12 GB card never sees FLUX.1-dev's 24 GB of bf16 weights)."""
        self.to(None, dtype, vae_dtype=vae_dtype)
        self._target = torch.device(device)
        for mod in self.modules().values():
            mod.requires_grad_(False)
        swapped = self._memory_options()
        skip = {id(b) for b in self._swap.blocks} if swapped else set()
        for mod in self.modules().values():
            _move_except(mod, skip, self._target)
        return self

    def restore(self) -> None:
        if self._swap is not None:
            self._swap.detach()
            self._swap = None
        if self._t5_released and self.text_encoders_loaded():
            self.parts["text_encoder_2"].to(self.device)
            self._t5_released = False
        self._released = False
        self._prompt_cache.clear()

    # ---- samples and files -------------------------------------------------------------------------
    def generate(self, prompt: str, *, negative_prompt: str = "", seed: int = 0, steps: int = 20,
                 width: int = 512, height: int = 512, guidance_scale: float = 7.0) -> Image.Image:
        """The family's Euler sampler from a fixed seed (dev: `guidance_scale` is its guidance input); prompts
        encoded before the text encoders left the GPU come from `_prompt_cache`."""
        chroma = self.kind == "chroma"
        cond = self._prompt_cond(prompt)
        negative = self._prompt_cond(negative_prompt) if chroma else None
        return flux_sampler.render(self.parts, cond, negative, height=height, width=width, steps=steps,
                                   guidance_scale=guidance_scale, seed=seed)

    def _prompt_cond(self, prompt: str) -> dict[str, torch.Tensor]:
        cached = self._prompt_cache.get(prompt)
        if cached is None:
            self._load_text_encoders()
            with torch.no_grad():
                cached = flux_sampler.encode_prompts(self.parts, [prompt], self.max_sequence_length)
        return {k: v.to(self.device) for k, v in cached.items()}

    def release_text_encoders(self, prompts: list[str],
                              encoded: Callable[[str], dict[str, torch.Tensor]] | None = None) -> None:
        """After the caption cache pre-pass: keep the sample `prompts`' conditioning (`encoded(prompt)`: the
        run's text-encoder cache, so a prompt on disk costs no T5; else encoded here), then move T5, if it
        was loaded at all, to CPU memory (FLUX.1-dev's T5-XXL is 9 GB in bf16, most of a 12 GB card). A
        caption met later still encodes, on the CPU. `restore` brings T5 back."""
        for p in dict.fromkeys(prompts):
            if encoded is not None:
                cond = {k: v[None] for k, v in encoded(p).items()}
            else:
                self._load_text_encoders()
                with torch.no_grad():
                    cond = flux_sampler.encode_prompts(self.parts, [p], self.max_sequence_length)
            self._prompt_cache[p] = {k: v.cpu() for k, v in cond.items()}
        self._released = True
        if self.device.type == "cpu" or not self.text_encoders_loaded():
            return
        self.parts["text_encoder_2"].to("cpu")
        self._t5_released = True
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def text_cache_id(self) -> str:
        """T5 (and CLIP-L) weights, tokenizers' sizes and the T5 length: a changed text encoder, or a
        `t5_max_token_length` change, gives other file names in the text-encoder disk cache. A model read
        from files is named by its files (`TextEncoderFiles.fingerprint`: no encoder is loaded for it);
        the built-in ones by their loaded weights."""
        p = self.parts
        tok = [len(t) if t is not None else 0 for t in (p.get("tokenizer"), p.get("tokenizer_2"))]
        weights = (self._text_files.fingerprint() if self._text_files is not None else
                   weights_fingerprint(p.get("text_encoder"), p.get("text_encoder_2")))
        return f"{self.kind}:t5 {self.max_sequence_length}:tok {tok}:{weights}"

    def metadata(self) -> dict[str, str]:
        o = self.options
        meta = {"ss_timestep_sampling": o.timestep_sampling, "ss_discrete_flow_shift": str(o.discrete_flow_shift),
                "ss_sigmoid_scale": str(o.sigmoid_scale), "ss_t5xxl_max_token_length": str(self.max_sequence_length)}
        if self.kind == "flux-dev":
            meta["ss_guidance_scale"] = str(1.0 if o.guidance_scale_train is None else o.guidance_scale_train)
        if o.fp8_base:
            meta["ss_fp8_base"] = "True"
        return meta


def _move_except(module: torch.nn.Module, skip: set[int], device: torch.device) -> None:
    """`module.to(device)` except for the submodules whose id is in `skip` (they stay where they are)."""
    if id(module) in skip:
        return
    if not any(id(m) in skip for m in module.modules()):
        module.to(device=device)
        return
    for child in module.children():
        _move_except(child, skip, device)
    for name, p in module._parameters.items():  # tensors held by a module that also holds skipped blocks
        if p is not None:
            module._parameters[name] = torch.nn.Parameter(p.detach().to(device), requires_grad=p.requires_grad)
    for name, b in module._buffers.items():
        if b is not None:
            module._buffers[name] = b.to(device)


def load_flux_adapter(cfg: Any, dtype: torch.dtype | None = None) -> FluxAdapter:
    """The FLUX.1 / Chroma adapter of `cfg.base_model` (builtin, diffusers folder, single files) with the
    run's options; files are read straight into `dtype` (bf16 for a bf16 run: half the CPU memory)."""
    import os

    from lora_trainer.models.flux_loading import BUILTIN, load_flux_parts

    base = cfg.base_model.strip()
    name = base if base in BUILTIN else os.path.basename(os.path.normpath(os.path.expanduser(base)))
    parts = load_flux_parts(base, vae_path=cfg.vae_path, clip_l_path=cfg.clip_l_path, t5xxl_path=cfg.t5xxl_path,
                            tokenizer_path=cfg.tokenizer_path, model_cache_dir=cfg.model_cache_dir, dtype=dtype,
                            defer_text_encoders=True)
    wanted = cfg.model_type
    family = "chroma" if parts["kind"] == "chroma" else "flux"
    if wanted != "auto" and wanted != family:
        from lora_trainer.errors import ModelLoadError

        raise ModelLoadError(f"config 'model_type' is {wanted!r} but {base} is a {parts['kind']} model; "
                             f"set model_type: auto (or {family})")
    return FluxAdapter(parts, FluxOptions.from_config(cfg), model_name=name)
