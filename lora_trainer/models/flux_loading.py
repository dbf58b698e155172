"""Load a FLUX.1 (dev / schnell-derived) or Chroma base offline: built-in tiny, diffusers folder, or the
single files Forge and ComfyUI users have.

Why this shape: users hold `flux1-dev.safetensors` (BFL-layout transformer, sometimes an all-in-one
file with `vae.` / `text_encoders.*` inside) plus `ae.safetensors`, `clip_l.safetensors` and
`t5xxl_*.safetensors`. Everything is checked from the safetensors headers first (kind, quantisation,
missing parts, a file given in the wrong place), so mistakes cost one line, not a 24 GB read. The
transformer config is read from the weights' shapes (the shipped real configs in
`configs/flux/` are what those shapes give for the real models, which a test checks); the VAE,
CLIP-L and T5 configs ship in `configs/flux/` (real sizes) or are the built-in tiny ones. Nothing is
downloaded: tokenizers come from the user's folders, the local HF cache or Forge's copy.

The parts dict is the one `flux_tiny.build_tiny_flux_parts` returns.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from typing import Any

from lora_trainer.errors import ModelLoadError
from lora_trainer.models import flux_detect
from lora_trainer.models.flux_configs import shipped_config
from lora_trainer.models.flux_detect import AIO_CLIP, AIO_T5, AIO_VAE, FluxFile
from lora_trainer.models.tiny import own_key

BUILTIN = {"builtin:tiny-flux": "flux", "builtin:tiny-chroma": "chroma"}
ROPE_AXES = {128: (16, 56, 56), 32: (8, 12, 12)}  # head dim -> rope axes (real FLUX.1/Chroma, tiny)
T5_TOKENIZER_REPOS = [("black-forest-labs/FLUX.1-dev", "tokenizer_2"),
                      ("black-forest-labs/FLUX.1-schnell", "tokenizer_2"), ("google/t5-v1_1-xxl", "")]


@dataclass(frozen=True)
class TextEncoderFiles:
    """Where a FLUX.1 / Chroma model's text encoders are read from, so they are loaded only when a caption
    or prompt is not in the text-encoder cache (T5-XXL is 9 GB), and named without loading them.

    `t5` / `clip`: (file, key prefix) of single files, or (component folder, "") of a diffusers folder."""

    kind: str
    t5: tuple[str, str]
    clip: tuple[str, str] | None
    folder: bool
    dtype: Any

    def fingerprint(self) -> str:
        """Changes when either encoder's weights change (`file_fingerprint`); reads headers and a few bytes."""
        from lora_trainer.models.file_fingerprint import folder_fingerprint, safetensors_fingerprint

        ids = [folder_fingerprint(src[0]) if self.folder else safetensors_fingerprint(*src)
               for src in (self.t5, self.clip) if src is not None]
        return "files:" + ":".join(ids)

    def load(self, part: str) -> Any:
        """`text_encoder_2` (T5) or `text_encoder` (CLIP-L; None for Chroma), in eval mode."""
        src = self.t5 if part == "text_encoder_2" else self.clip
        if src is None:
            return None
        path, prefix = src
        if not self.folder:
            return (_load_t5 if part == "text_encoder_2" else _load_clip)(path, prefix, self.dtype)
        from transformers import CLIPTextModel, T5EncoderModel

        cls = T5EncoderModel if part == "text_encoder_2" else CLIPTextModel
        kw = {"local_files_only": True, **({"torch_dtype": self.dtype} if self.dtype is not None else {})}
        return cls.from_pretrained(path, **kw).eval()


def load_flux_parts(base_model: str, *, vae_path: str | None = None, clip_l_path: str | None = None,
                    t5xxl_path: str | None = None, tokenizer_path: str | None = None,
                    model_cache_dir: str | None = None, dtype: Any = None,
                    defer_text_encoders: bool = False) -> dict[str, Any]:
    """The parts of `base_model` (see module doc). `vae_path` / `clip_l_path` / `t5xxl_path` name the
    separate files of a single-file transformer (they override parts inside an all-in-one file);
    `tokenizer_path` is a folder with `tokenizer/` (CLIP) and `tokenizer_2/` (T5) for single files.
    fp8 weights are upcast to `dtype` (default float32). `defer_text_encoders`: a file-based model's
    text encoders are not loaded; the parts hold None for them and `"text_files"` (`TextEncoderFiles`)
    says where they are (the built-in models load whole)."""
    import torch

    dtype = dtype or torch.float32
    base = str(base_model or "").strip()
    if base in BUILTIN:
        from lora_trainer.models.flux_tiny import build_tiny_flux_parts

        return build_tiny_flux_parts(BUILTIN[base])
    path = os.path.expanduser(base)
    if os.path.isdir(path):
        return load_flux_folder(path, dtype, defer_text_encoders=defer_text_encoders)
    if not os.path.isfile(path):
        raise ModelLoadError(f"base_model not found: {base} (give a FLUX.1/Chroma diffusers folder, the transformer "
                             ".safetensors file, or builtin:tiny-flux)")
    f = flux_detect.inspect_flux_file(path)
    msg = flux_detect.missing_parts(f, vae_path=vae_path, clip_l_path=clip_l_path, t5xxl_path=t5xxl_path)
    if msg:
        raise ModelLoadError(msg)
    sources = _check_part_files(f, vae_path, clip_l_path, t5xxl_path)
    return _load_single_files(f, sources, tokenizer_path, model_cache_dir, dtype, defer_text_encoders)


def check_single_files(base_model: str | None, *, vae_path: str | None = None, clip_l_path: str | None = None,
                       t5xxl_path: str | None = None) -> None:
    """For the dry run: the headers-only checks `load` makes on a transformer file and its separate parts
    (a missing `t5xxl_path`, a file in the wrong place), so `--dry-run` refuses what the run would."""
    path = os.path.expanduser(str(base_model or "").strip())
    if not os.path.isfile(path):
        return  # built-in, diffusers folder, or missing (named by the config check / the loader)
    f = flux_detect.inspect_flux_file(path)
    msg = flux_detect.missing_parts(f, vae_path=vae_path, clip_l_path=clip_l_path, t5xxl_path=t5xxl_path)
    if msg:
        raise ModelLoadError(msg)
    _check_part_files(f, vae_path, clip_l_path, t5xxl_path)


# ---- header checks of the separate files ---------------------------------------------------------
def _check_part_files(f: FluxFile, vae_path: str | None, clip_l_path: str | None,
                      t5xxl_path: str | None) -> dict[str, tuple[str, str]]:
    """{part: (file, key prefix)} after checking each separate file's header holds what its key says."""
    out = {"vae": (f.path, AIO_VAE), "clip_l": (f.path, AIO_CLIP), "t5": (f.path, AIO_T5)}
    for part, p, field in (("vae", vae_path, "vae_path"), ("clip_l", clip_l_path, "clip_l_path"),
                           ("t5", t5xxl_path, "t5xxl_path")):
        if not p or (part == "clip_l" and f.kind == "chroma"):
            continue
        header = flux_detect.read_header(os.path.expanduser(p))
        prefix = _part_prefix(header, part)
        if prefix is None:
            raise ModelLoadError(f"config '{field}': {p} is not a {_PART_TITLES[part]} file "
                                 f"({flux_detect.what_else(set(header))})")
        refusal = flux_detect.quant_refusal(p, header, prefix)
        if refusal:
            raise ModelLoadError(f"config '{field}': {refusal}")
        if part == "vae":
            ch = header[prefix + "decoder.conv_in.weight"]["shape"][1]
            if ch != 16:
                raise ModelLoadError(f"config 'vae_path': {p} is a {ch}-channel (Stable Diffusion) VAE; FLUX.1 and "
                                     "Chroma need the 16-channel ae.safetensors")
        out[part] = (os.path.expanduser(p), prefix)
    return out


_PART_TITLES = {"vae": "VAE (ae.safetensors)", "clip_l": "CLIP-L text encoder", "t5": "T5-XXL text encoder"}
_PART_MARKS = {"vae": "decoder.conv_in.weight", "clip_l": "embeddings.token_embedding.weight",
               "t5": "encoder.block.0.layer.0.SelfAttention.q.weight"}


def _part_prefix(header: dict[str, Any], part: str) -> str | None:
    mark = _PART_MARKS[part]
    for k in header:
        if k.endswith(mark) and (part != "clip_l" or "vision" not in k):
            return k[: -len(mark)].removesuffix("text_model.") if part == "clip_l" else k[: -len(mark)]
    return None


# ---- single files --------------------------------------------------------------------------------
def _read(path: str, prefix: str, dtype: Any) -> dict[str, Any]:
    """Tensors under `prefix` (prefix removed); float tensors become `dtype`, always as fresh copies: views
    into the memory-mapped file sit at any alignment, which changes the last bit of CPU matmuls."""
    from safetensors import safe_open

    out = {}
    with safe_open(path, framework="pt") as fh:
        for k in fh.keys():  # noqa: SIM118 - safe_open is no dict
            if k.startswith(prefix):
                t = fh.get_tensor(k)
                out[k[len(prefix):]] = t.to(dtype, copy=True) if t.is_floating_point() else t.clone()
    if not out:
        raise ModelLoadError(f"{path} has no tensors under {prefix!r}")
    return out


def transformer_config_from_bfl(shapes: dict[str, list[int]], kind: str) -> dict[str, Any]:
    """diffusers config of a BFL-layout FLUX.1/Chroma transformer, from its tensor shapes
    (`model.diffusion_model.` already stripped)."""
    hidden, in_ch = shapes["img_in.weight"]
    head_dim = shapes["double_blocks.0.img_attn.norm.query_norm.scale"][0]
    if head_dim not in ROPE_AXES:
        raise ModelLoadError(f"unsupported FLUX.1 attention head size {head_dim} (known: {sorted(ROPE_AXES)})")
    count = lambda rx: len({m[1] for k in shapes if (m := re.match(rx, k))})  # noqa: E731
    cfg: dict[str, Any] = {"patch_size": 1, "in_channels": in_ch, "num_layers": count(r"^double_blocks\.(\d+)\."),
                           "num_single_layers": count(r"^single_blocks\.(\d+)\."), "attention_head_dim": head_dim,
                           "num_attention_heads": hidden // head_dim,
                           "joint_attention_dim": shapes["txt_in.weight"][1],
                           "axes_dims_rope": list(ROPE_AXES[head_dim])}
    if kind == "chroma":
        g_hidden, g_in = shapes["distilled_guidance_layer.in_proj.weight"]
        cfg.update(approximator_num_channels=g_in, approximator_hidden_dim=g_hidden,
                   approximator_layers=count(r"^distilled_guidance_layer\.layers\.(\d+)\."))
    else:
        cfg.update(pooled_projection_dim=shapes["vector_in.in_layer.weight"][1],
                   guidance_embeds=kind == "flux-dev")
    return cfg


def _load_transformer(f: FluxFile, dtype: Any) -> Any:
    from lora_trainer.models.flux_convert import bfl_to_diffusers, diffusers_to_bfl
    from lora_trainer.models.flux_tiny import transformer_class

    sd = _read(f.path, f.prefix, dtype)
    chroma = f.kind == "chroma"
    if f.layout == "diffusers":
        sd = {k: v for k, v in sd.items() if not k.startswith(("vae.", "text_encoders."))}
        bfl_shapes = {k: list(v.shape) for k, v in diffusers_to_bfl(sd, chroma=chroma).items()}
    else:
        bfl_shapes = {k: list(v.shape) for k, v in sd.items()}
        sd = bfl_to_diffusers(sd, chroma=chroma)
    cfg = transformer_config_from_bfl(bfl_shapes, f.kind)
    return _build(transformer_class(f.kind), cfg, sd, f"{f.path} (transformer)")


def _build(cls: Any, cfg: Any, sd: dict[str, Any], where: str) -> Any:
    """A model of `cls` with `sd` assigned. Parameters are created on the meta device (no random init,
    no second copy of a 24 GB model); buffers computed in `__init__` (rope tables, position ids) stay real."""
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        model = cls(cfg) if not isinstance(cfg, dict) else cls(**cfg)
    own = model.state_dict()
    sd = {own_key(k, own): v for k, v in sd.items()}
    missing, unexpected = model.load_state_dict(sd, strict=False, assign=True)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise ModelLoadError(f"{where} does not fit the expected model: missing {missing[:2]}, unexpected "
                             f"{unexpected[:2]}; is it complete and unmodified?")
    return model.eval()



def _load_vae(path: str, prefix: str, dtype: Any) -> Any:
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    from lora_trainer.models.flux_tiny import vae_config

    sd = _read(path, prefix, dtype)
    width = sd["encoder.conv_in.weight"].shape[0]
    cfg = shipped_config("vae") if width == 128 else vae_config()
    cfg = {k: v for k, v in cfg.items() if not k.startswith("_")}
    if not any(k.startswith("encoder.down_blocks.") for k in sd):
        sd = convert_ldm_vae_checkpoint(sd, cfg)
    return _build(AutoencoderKL, cfg, sd, f"{path} (VAE)")


def _load_clip(path: str, prefix: str, dtype: Any) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel

    from lora_trainer.models.flux_tiny import TEXT_WIDTH, clip_config

    sd = {k: v for k, v in _read(path, prefix, dtype).items()
          if not k.startswith(("text_projection.", "logit_scale"))}  # CLIPTextModel has no projection head
    emb = next(v for k, v in sd.items() if k.endswith("token_embedding.weight"))
    if emb.shape[1] == TEXT_WIDTH:
        cfg = clip_config(emb.shape[0], 49406 if emb.shape[0] > 49406 else emb.shape[0] - 2, emb.shape[0] - 1)
    else:
        cfg = {k: v for k, v in shipped_config("clip_l").items() if k != "architectures"}
    return _build(CLIPTextModel, CLIPTextConfig(**cfg), sd, f"{path} (CLIP-L)")


def _load_t5(path: str, prefix: str, dtype: Any) -> Any:
    from transformers import T5Config, T5EncoderModel

    from lora_trainer.models.flux_tiny import TEXT_WIDTH, t5_config

    sd = {k: v for k, v in _read(path, prefix, dtype).items()
          if not k.startswith(("decoder.", "lm_head.", "logit_scale"))}  # encoder only
    emb = sd.get("shared.weight", sd.get("encoder.embed_tokens.weight"))
    if emb is None:
        raise ModelLoadError(f"{path}: no T5 token embedding (shared.weight) in it; use t5xxl_fp16.safetensors")
    sd.setdefault("shared.weight", emb)
    sd.setdefault("encoder.embed_tokens.weight", emb)
    cfg = t5_config(emb.shape[0]) if emb.shape[1] == TEXT_WIDTH else {
        k: v for k, v in shipped_config("t5xxl").items() if k != "architectures"}
    return _build(T5EncoderModel, T5Config(**cfg), sd, f"{path} (T5-XXL)")


def _load_single_files(f: FluxFile, sources: dict[str, tuple[str, str]], tokenizer_path: str | None,
                       cache_dir: str | None, dtype: Any, defer_text_encoders: bool = False) -> dict[str, Any]:
    from diffusers import FlowMatchEulerDiscreteScheduler

    from lora_trainer.models.flux_tiny import TEXT_WIDTH

    embed = "x_embedder.weight" if f.layout == "diffusers" else "img_in.weight"
    tiny = flux_detect.read_header(f.path)[f.prefix + embed]["shape"][0] == TEXT_WIDTH
    tokenizers = _tokenizers(f, tiny, tokenizer_path, cache_dir)  # before the heavy reads
    transformer = _load_transformer(f, dtype)
    vae = _load_vae(*sources["vae"], dtype)
    files = TextEncoderFiles(f.kind, sources["t5"], sources["clip_l"] if f.kind != "chroma" else None, False, dtype)
    sched_cfg = shipped_config(f"scheduler-{f.kind}")
    sched = FlowMatchEulerDiscreteScheduler(**{k: v for k, v in sched_cfg.items() if not k.startswith("_")})
    return {"kind": f.kind, "transformer": transformer, "vae": vae, "tokenizer": tokenizers[0],
            "tokenizer_2": tokenizers[1], "scheduler": sched, **_text_parts(files, defer_text_encoders)}


def _text_parts(files: TextEncoderFiles, defer: bool) -> dict[str, Any]:
    """The parts' text encoders: loaded now, or None plus where to load them from."""
    if defer:
        return {"text_encoder": None, "text_encoder_2": None, "text_files": files}
    return {"text_encoder": files.load("text_encoder"), "text_encoder_2": files.load("text_encoder_2")}


def _tokenizers(f: FluxFile, tiny: bool, tokenizer_path: str | None, cache_dir: str | None) -> tuple[Any, Any]:
    """(CLIP tokenizer or None for Chroma, T5 tokenizer). The built-in tiny model has its own."""
    if tiny:
        from lora_trainer.models.flux_tiny import TINY_T5_MAX_LENGTH
        from lora_trainer.models.t5_tokenizer import make_t5_tokenizer
        from lora_trainer.models.tiny_tokenizer import make_tokenizer
        from lora_trainer.synthetic import VOCABULARY

        return (None if f.kind == "chroma" else make_tokenizer(VOCABULARY)), make_t5_tokenizer(VOCABULARY,
                                                                                               TINY_T5_MAX_LENGTH)
    clip = None
    if f.kind != "chroma":
        from lora_trainer.models.tokenizers import find_tokenizers

        clip = find_tokenizers("sd1", f.path, tokenizer_path, cache_dir)[0]
    return clip, find_t5_tokenizer(f.path, tokenizer_path, cache_dir)


def _t5_tokenizer_from(folder: str) -> Any:
    if not any(os.path.isfile(os.path.join(folder, n)) for n in ("tokenizer.json", "spiece.model")):
        return None
    from transformers import T5TokenizerFast

    return T5TokenizerFast.from_pretrained(folder, local_files_only=True)


def find_t5_tokenizer(checkpoint: str, tokenizer_path: str | None, cache_dir: str | None) -> Any:
    """The T5 tokenizer from `tokenizer_path[/tokenizer_2]`, `tokenizer_2/` next to the checkpoint, or the
    local HF cache; a one-line ModelLoadError saying where to put it otherwise."""
    here = os.path.dirname(os.path.abspath(checkpoint))
    candidates = [os.path.join(tokenizer_path, "tokenizer_2"), tokenizer_path] if tokenizer_path else []
    candidates += [os.path.join(here, "tokenizer_2")]
    for c in candidates:
        if os.path.isdir(c) and (tok := _t5_tokenizer_from(c)) is not None:
            return tok
    for repo, sub in T5_TOKENIZER_REPOS:
        try:
            from huggingface_hub import snapshot_download

            snap = snapshot_download(repo, cache_dir=cache_dir, local_files_only=True,
                                     allow_patterns=[f"{sub}/*" if sub else "*"])
        except Exception:  # noqa: BLE001 - not in the local cache
            continue
        if (tok := _t5_tokenizer_from(os.path.join(snap, sub))) is not None:
            return tok
    raise ModelLoadError(f"no T5 tokenizer found for {os.path.basename(checkpoint)}: put the tokenizer_2/ folder of "
                         f"black-forest-labs/FLUX.1-dev (tokenizer.json or spiece.model) in {here}/, or set "
                         "tokenizer_path to a folder holding tokenizer_2/ (Forge ships one in backend/huggingface/)")


# ---- diffusers folders ---------------------------------------------------------------------------
def load_flux_folder(path: str, dtype: Any = None, *, defer_text_encoders: bool = False) -> dict[str, Any]:
    """A FluxPipeline / ChromaPipeline folder (model_index.json, transformer/, vae/, text encoders)."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler
    from transformers import CLIPTokenizer

    idx_path = os.path.join(path, "model_index.json")
    if not os.path.isfile(idx_path):
        raise ModelLoadError(f"base_model folder {path} has no model_index.json: give a diffusers FLUX.1/Chroma "
                             "folder or the transformer .safetensors file")
    with open(idx_path, encoding="utf-8") as fh:
        index = json.load(fh)
    cls_name = index.get("_class_name", "")
    if cls_name not in ("FluxPipeline", "ChromaPipeline"):
        raise ModelLoadError(f"{path} is a {cls_name or 'unknown'} folder, not FLUX.1 or Chroma (FluxPipeline / "
                             "ChromaPipeline)")
    chroma = cls_name == "ChromaPipeline"
    need = ["transformer", "vae", "text_encoder", "tokenizer", "scheduler"] + ([] if chroma else
                                                                              ["text_encoder_2", "tokenizer_2"])
    missing = [p for p in need if not os.path.isdir(os.path.join(path, p))]
    if missing:
        raise ModelLoadError(f"diffusers folder {path} lacks {', '.join(p + '/' for p in missing)}; copy the whole "
                             "model folder")
    from lora_trainer.models.flux_tiny import transformer_class

    kw: dict[str, Any] = {"local_files_only": True, **({"torch_dtype": dtype} if dtype is not None else {})}
    cls = transformer_class("chroma" if chroma else "flux")
    transformer = cls.from_pretrained(path, subfolder="transformer", **kw)
    kind = "chroma" if chroma else ("flux-dev" if transformer.config.guidance_embeds else "flux-schnell")
    vae = AutoencoderKL.from_pretrained(path, subfolder="vae", **kw)
    t5_sub = "text_encoder" if chroma else "text_encoder_2"
    files = TextEncoderFiles(kind, (os.path.join(path, t5_sub), ""),
                             None if chroma else (os.path.join(path, "text_encoder"), ""), True, dtype)
    t5_tok = _t5_tokenizer_from(os.path.join(path, "tokenizer" if chroma else "tokenizer_2"))
    clip_tok = None
    if not chroma:
        clip_tok = CLIPTokenizer.from_pretrained(os.path.join(path, "tokenizer"), local_files_only=True)
    sched = FlowMatchEulerDiscreteScheduler.from_pretrained(path, subfolder="scheduler", local_files_only=True)
    transformer.eval()
    vae.eval()
    return {"kind": kind, "transformer": transformer, "vae": vae, "tokenizer": clip_tok, "tokenizer_2": t5_tok,
            "scheduler": sched, **_text_parts(files, defer_text_encoders)}
