"""The built-in tiny FLUX.1-dev and Chroma models (`base_model: builtin:tiny-flux` / `builtin:tiny-chroma`).

Why: tests, the demo and a first Flux run need a real diffusers/transformers model without
downloading 30 GB of weights. The tiny models use the real classes (`FluxTransformer2DModel` /
`ChromaTransformer2DModel`, a 16-channel `AutoencoderKL` with FLUX.1's latent scale and shift, a
`CLIPTextModel` and a `T5EncoderModel`) and the real layout (double- then single-stream blocks, fused
projections when written in the BFL layout), with small widths. The transformer's shapes are those
of the Forge harness's `tinyflux` (hidden 64, 2 heads of 32, rope axes 8/12/12, T5 and CLIP width
64) so files written from one fit the other; it has 2 double and 2 single blocks so block selection
can be tested. Tokenizers are built offline (CLIP BPE and T5 Unigram over the synthetic words).
"""

from __future__ import annotations

import json
import os
from typing import Any

from lora_trainer.errors import ModelLoadError

FLUX_KINDS = ("flux", "chroma")  # builtin:tiny-flux (FLUX.1-dev layout, guidance input), builtin:tiny-chroma
PART_KIND = {"flux": "flux-dev", "chroma": "chroma"}  # parts["kind"], as models.flux_detect names them
TINY_FLUX_RESOLUTION = 64
TINY_T5_MAX_LENGTH = 32
HIDDEN = 64
HEADS, HEAD_DIM = 2, 32
ROPE_AXES = (8, 12, 12)  # sums to HEAD_DIM, like (16, 56, 56) sums to 128 in the real model
TEXT_WIDTH = 64           # CLIP-L hidden (pooled vector) and T5 d_model of the tiny model
LATENT_SCALE, LATENT_SHIFT = 0.3611, 0.1159  # FLUX.1's 16-channel VAE (ae.safetensors)

def transformer_config(kind: str) -> dict[str, Any]:
    """diffusers config of the tiny transformer (`in_channels` = 16 latent channels x 2x2 packing)."""
    common = {"patch_size": 1, "in_channels": 64, "num_layers": 2, "num_single_layers": 2,
              "attention_head_dim": HEAD_DIM, "num_attention_heads": HEADS, "joint_attention_dim": TEXT_WIDTH,
              "axes_dims_rope": list(ROPE_AXES)}
    if kind == "flux":
        return {**common, "pooled_projection_dim": TEXT_WIDTH, "guidance_embeds": True}
    if kind == "chroma":
        return {**common, "approximator_num_channels": 64, "approximator_hidden_dim": 128, "approximator_layers": 2}
    raise ValueError(f"no tiny model for {kind!r}")


def vae_config() -> dict[str, Any]:
    """A 16-channel AutoencoderKL without quant convs (as FLUX.1's ae.safetensors), downscale 8."""
    return {"in_channels": 3, "out_channels": 3, "latent_channels": 16, "layers_per_block": 1,
            "block_out_channels": [16, 32, 32, 32], "norm_num_groups": 8, "sample_size": TINY_FLUX_RESOLUTION,
            "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
            "use_quant_conv": False, "use_post_quant_conv": False,
            "scaling_factor": LATENT_SCALE, "shift_factor": LATENT_SHIFT}


def clip_config(vocab_size: int, bos: int, eos: int) -> dict[str, Any]:
    """CLIP-L-style text encoder (quick_gelu); its pooled output is FLUX.1's `pooled_projections`."""
    return {"vocab_size": vocab_size, "hidden_size": TEXT_WIDTH, "intermediate_size": 2 * TEXT_WIDTH,
            "num_hidden_layers": 2, "num_attention_heads": 2, "max_position_embeddings": 77,
            "projection_dim": TEXT_WIDTH, "hidden_act": "quick_gelu", "bos_token_id": bos, "eos_token_id": eos,
            "pad_token_id": eos}


def t5_config(vocab_size: int) -> dict[str, Any]:
    """T5 v1.1-style encoder (gated-gelu, relative attention) as T5-XXL, small."""
    return {"vocab_size": vocab_size, "d_model": TEXT_WIDTH, "d_ff": 2 * TEXT_WIDTH, "d_kv": HEAD_DIM,
            "num_heads": 2, "num_layers": 2, "feed_forward_proj": "gated-gelu", "dropout_rate": 0.0,
            "relative_attention_num_buckets": 32, "relative_attention_max_distance": 128,
            "pad_token_id": 0, "eos_token_id": 1, "decoder_start_token_id": 0, "is_encoder_decoder": False,
            "tie_word_embeddings": False}


def scheduler_config(kind: str) -> dict[str, Any]:
    """The real model's FlowMatchEulerDiscreteScheduler settings (shipped in configs/flux/): dev shifts the
    sigmas by image size, schnell and Chroma (Forge's copy of its config) use a fixed shift of 1."""
    from lora_trainer.models.flux_configs import shipped_config

    return shipped_config(f"scheduler-{kind}")


def flux_weights_path(kind: str = "flux") -> str:
    """The shipped pretrained weights of a tiny model (written by tools/pretrain_tiny_flux.py)."""
    return os.path.join(os.path.dirname(__file__), "tiny_weights", f"tiny-{kind}.safetensors")


_PART_NAMES = ("transformer", "vae", "text_encoder", "text_encoder_2")


def flat_flux_state_dict(parts: dict[str, Any]) -> dict[str, Any]:
    """Every part's tensors in one dict, keys prefixed with the part's name."""
    return {f"{name}.{k}": v for name in _PART_NAMES if parts.get(name) is not None
            for k, v in parts[name].state_dict().items()}


def _load_pretrained(parts: dict[str, Any], path: str) -> None:
    """The shipped weights into the parts; CLIP keys fit transformers 4 and 5 (`tiny.own_key`)."""
    import torch
    from safetensors.torch import load_file

    from lora_trainer.models.tiny import own_key

    sd = load_file(path)
    for name in _PART_NAMES:
        if parts.get(name) is None:
            continue
        own = parts[name].state_dict()
        sub = {own_key(k[len(name) + 1:], own): v.to(torch.float32) if v.is_floating_point() else v
               for k, v in sd.items() if k.startswith(name + ".")}
        missing, unexpected = parts[name].load_state_dict(sub, strict=False)
        missing = [k for k in missing if not k.endswith("position_ids")]
        if missing or unexpected:
            raise ModelLoadError(f"tiny FLUX.1 weights do not fit the tiny {name}: missing {missing[:3]}, "
                                 f"unexpected {unexpected[:3]}; rebuild them with tools/pretrain_tiny_flux.py")


def build_tiny_flux_parts(kind: str = "flux", seed: int = 0, *, pretrained: bool = True) -> dict[str, Any]:
    """The tiny parts: {transformer, vae, text_encoder, tokenizer, text_encoder_2, tokenizer_2, scheduler,
    kind} (kind "flux-dev" | "chroma"; Chroma has no CLIP: text_encoder/tokenizer are None, its T5 is
    text_encoder_2 as in FLUX.1). Random weights, deterministic per seed; `pretrained` then loads the shipped
    weights where there are some (the tiny FLUX.1; `parts["pretrained"]` says whether it did)."""
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from lora_trainer.models.t5_tokenizer import make_t5_tokenizer
    from lora_trainer.models.tiny_tokenizer import make_tokenizer
    from lora_trainer.synthetic import VOCABULARY

    if kind not in FLUX_KINDS:
        raise ModelLoadError(f"base_model 'builtin:tiny-{kind}' does not exist; use builtin:tiny-flux or "
                             "builtin:tiny-chroma")
    torch.manual_seed(seed)
    transformer = transformer_class(kind)(**transformer_config(kind))
    vae = AutoencoderKL(**vae_config())
    t5_tok = make_t5_tokenizer(VOCABULARY, TINY_T5_MAX_LENGTH)
    t5 = T5EncoderModel(T5Config(**t5_config(len(t5_tok))))
    clip = clip_tok = None
    if kind == "flux":
        clip_tok = make_tokenizer(VOCABULARY)
        clip = CLIPTextModel(CLIPTextConfig(**clip_config(len(clip_tok), clip_tok.bos_token_id,
                                                          clip_tok.eos_token_id)))
    for m in (transformer, vae, t5, clip):
        if m is not None:
            m.eval()
    sched = {k: v for k, v in scheduler_config(PART_KIND[kind]).items() if not k.startswith("_")}
    parts = {"kind": PART_KIND[kind], "transformer": transformer, "vae": vae, "text_encoder": clip,
             "tokenizer": clip_tok, "text_encoder_2": t5, "tokenizer_2": t5_tok,
             "scheduler": FlowMatchEulerDiscreteScheduler(**sched), "pretrained": False}
    if pretrained and os.path.exists(flux_weights_path(kind)):
        _load_pretrained(parts, flux_weights_path(kind))
        parts["pretrained"] = True
    return parts


def transformer_class(kind: str) -> Any:
    """The diffusers transformer class of a kind ("flux-dev" | "flux-schnell" | "chroma"; "flux").
    Chroma arrived in diffusers 0.35; Forge pins 0.31 (there, Forge's own Chroma model is trained)."""
    import diffusers

    if kind != "chroma":
        return diffusers.FluxTransformer2DModel
    cls = getattr(diffusers, "ChromaTransformer2DModel", None)
    if cls is None:
        raise ModelLoadError(f"Chroma needs diffusers 0.35 or newer (this environment has {diffusers.__version__}); "
                             "upgrade it in the standalone environment, or train Chroma in Forge on its loaded model")
    return cls


def make_pipeline(parts: dict[str, Any]) -> Any:
    """A diffusers FluxPipeline / ChromaPipeline over the parts (for conformance checks and sampling)."""
    if parts["kind"] == "chroma":
        from diffusers import ChromaPipeline

        return ChromaPipeline(scheduler=parts["scheduler"], vae=parts["vae"], text_encoder=parts["text_encoder_2"],
                              tokenizer=parts["tokenizer_2"], transformer=parts["transformer"])
    from diffusers import FluxPipeline

    return FluxPipeline(scheduler=parts["scheduler"], vae=parts["vae"], text_encoder=parts["text_encoder"],
                        tokenizer=parts["tokenizer"], text_encoder_2=parts["text_encoder_2"],
                        tokenizer_2=parts["tokenizer_2"], transformer=parts["transformer"])


def save_tiny_flux(folder: str, kind: str = "flux", seed: int = 0) -> str:
    """Write the tiny model as a diffusers folder (model_index.json, transformer/, vae/, text_encoder*/,
    tokenizer*/, scheduler/) so folder loading can be tested like a real model."""
    from lora_trainer.models.t5_tokenizer import write_t5_tokenizer
    from lora_trainer.models.tiny_tokenizer import write_tokenizer
    from lora_trainer.synthetic import VOCABULARY

    parts = build_tiny_flux_parts(kind, seed)
    os.makedirs(folder, exist_ok=True)
    parts["transformer"].save_pretrained(os.path.join(folder, "transformer"))
    parts["vae"].save_pretrained(os.path.join(folder, "vae"))
    chroma = kind == "chroma"
    t5_name = "text_encoder" if chroma else "text_encoder_2"
    parts["text_encoder_2"].save_pretrained(os.path.join(folder, t5_name))
    write_t5_tokenizer(os.path.join(folder, "tokenizer" if chroma else "tokenizer_2"), VOCABULARY,
                       TINY_T5_MAX_LENGTH)
    index: dict[str, Any] = {
        "_class_name": "ChromaPipeline" if chroma else "FluxPipeline", "_diffusers_version": "0.42.0",
        "transformer": ["diffusers", type(parts["transformer"]).__name__], "vae": ["diffusers", "AutoencoderKL"],
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        t5_name: ["transformers", "T5EncoderModel"],
        "tokenizer" if chroma else "tokenizer_2": ["transformers", "T5TokenizerFast"]}
    if not chroma:
        parts["text_encoder"].save_pretrained(os.path.join(folder, "text_encoder"))
        write_tokenizer(os.path.join(folder, "tokenizer"), VOCABULARY)
        index["text_encoder"] = ["transformers", "CLIPTextModel"]
        index["tokenizer"] = ["transformers", "CLIPTokenizer"]
    os.makedirs(os.path.join(folder, "scheduler"), exist_ok=True)
    with open(os.path.join(folder, "scheduler", "scheduler_config.json"), "w", encoding="utf-8") as f:
        json.dump(scheduler_config(PART_KIND[kind]), f, indent=1)
    with open(os.path.join(folder, "model_index.json"), "w", encoding="utf-8") as f:
        json.dump(index, f, indent=1)
    return folder
