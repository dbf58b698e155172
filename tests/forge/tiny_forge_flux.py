"""Tiny FLUX.1-dev and Chroma checkpoints loaded by Forge's own loader (`backend.loader.forge_loader`).

As `tiny_forge` does for SD: each tiny model gets a huggingface_guess class subclassing the real one
(`Flux` / `FluxSchnell`) whose `huggingface_repo` is an absolute path to a copy of Forge's config folder
(`black-forest-labs/FLUX.1-dev`, `Chroma`) with CLIP-L, T5 and the VAE shrunk; the checkpoint is one
file in the layout Forge and ComfyUI users have (`model.diffusion_model.*` BFL transformer, `vae.*`,
`text_encoders.clip_l.*` / `text_encoders.t5xxl.*`), built from Forge's own classes. Forge recognises
real Chroma files by a hard-coded full-size config; the tiny one is routed to Forge's `Chroma` engine
through that engine's `matched_guesses` instead (`register`), the same lookup its other engines use.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from safetensors.torch import save_file
from tiny_forge import TINY_CLIP, _clip, _randomise, shrunk_config_folder

TINY_T5 = {"d_model": 64, "d_ff": 128, "d_kv": 32, "num_heads": 2, "num_layers": 2, "num_decoder_layers": 2}
TINY_VAE = {"block_out_channels": [32, 32, 64, 64], "layers_per_block": 1, "norm_num_groups": 32}
DIMS = {"in_channels": 16, "vec_in_dim": 64, "context_in_dim": 64, "hidden_size": 64, "mlp_ratio": 4.0,
        "num_heads": 2, "depth": 2, "depth_single_blocks": 2, "axes_dim": [8, 12, 12], "theta": 10000,
        "qkv_bias": True}
CHROMA_DIMS = {"guidance_out_dim": 64, "guidance_hidden_dim": 128, "guidance_n_layers": 2}
REPOS = {"flux": ("black-forest-labs/FLUX.1-dev", {"text_encoder": TINY_CLIP, "text_encoder_2": TINY_T5}),
         "chroma": ("Chroma", {"text_encoder": TINY_T5})}
FLOW_ARCHS = tuple(REPOS)


def write_repo(forge_root: str, arch: str, dst: str, encoders: dict[str, dict] | None = None) -> str:
    """Forge's config folder of the family, its text encoders (`encoders`: config updates per component, the
    tiny ones by default) and VAE shrunk."""
    src, tiny = REPOS[arch]
    encoders = tiny if encoders is None else encoders
    return shrunk_config_folder(forge_root, src, dst, [*encoders.items(), ("vae", TINY_VAE)])


def _is_tiny(state_dict, chroma: bool) -> bool:
    keys = state_dict or {}  # the bias: an NF4 file keeps `img_in.weight` packed, its bias as it was
    width = next((v.shape[0] for k, v in keys.items() if k.endswith("img_in.bias")), None)
    has_approximator = any("distilled_guidance_layer." in k for k in keys)
    return width == DIMS["hidden_size"] and has_approximator == chroma


def guess_class(arch: str, repo: str) -> type:
    """The huggingface_guess class of the tiny model (a subclass of the real FLUX.1-dev / schnell one)."""
    from huggingface_guess import model_list

    chroma = arch == "chroma"
    base = model_list.FluxSchnell if chroma else model_list.Flux
    extra = dict(DIMS, **CHROMA_DIMS) if chroma else dict(DIMS)

    def matches(cls, unet_config, state_dict=None):
        return base.matches.__func__(cls, unet_config, state_dict) and _is_tiny(state_dict, chroma)

    def init(self, unet_config):
        base.__init__(self, unet_config)
        if chroma:  # what Forge's loader does for Chroma (`GuessChroma.unet_remove_config`)
            self.unet_config.pop("guidance_embed", None)

    attrs = {"huggingface_repo": repo, "unet_extra_config": extra, "matches": classmethod(matches), "__init__": init}
    if chroma:  # Chroma has T5 only, as `text_encoder`
        attrs["clip_target"] = lambda self, state_dict={}: {"t5xxl": "text_encoder"}  # noqa: B006 - Forge's signature
    return type(f"Tiny{'Chroma' if chroma else 'Flux'}", (base,), attrs)


@contextmanager
def register(classes: list[type]) -> Iterator[None]:
    """The tiny classes first in huggingface_guess's list; a tiny Chroma class routed to Forge's Chroma engine."""
    from backend.diffusion_engine.chroma import Chroma
    from huggingface_guess import model_list

    chroma = [c for c in classes if c.__name__ == "TinyChroma"]
    saved = list(Chroma.matched_guesses)
    model_list.models[:0] = classes
    Chroma.matched_guesses = saved + chroma
    try:
        yield
    finally:
        Chroma.matched_guesses = saved
        for c in classes:
            model_list.models.remove(c)


def _redraw(model: torch.nn.Module, seed: int) -> None:
    """`tiny_forge._randomise`, with RMSNorm scales near 1 (not near 0), so attention is not flat."""
    _randomise(model, seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if name.endswith(".scale"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))


def write_checkpoint(arch: str, repo: str, path: str) -> str:
    """The single file: transformer (BFL keys), VAE, text encoders, every weight redrawn."""
    from backend.nn.t5 import IntegratedT5
    from backend.nn.vae import IntegratedAutoencoderKL

    if arch == "chroma":
        from backend.nn.chroma import IntegratedChromaTransformer2DModel
        transformer = IntegratedChromaTransformer2DModel(**DIMS, **CHROMA_DIMS)
    else:
        from backend.nn.flux import IntegratedFluxTransformer2DModel
        transformer = IntegratedFluxTransformer2DModel(**DIMS, guidance_embed=True)
    _redraw(transformer, 21)
    vae = IntegratedAutoencoderKL.from_config(IntegratedAutoencoderKL.load_config(os.path.join(repo, "vae")))
    _randomise(vae, 22)
    with open(os.path.join(repo, "text_encoder" if arch == "chroma" else "text_encoder_2", "config.json")) as f:
        t5 = IntegratedT5(json.load(f))
    _randomise(t5, 23)
    sd = {"model.diffusion_model." + k: v for k, v in transformer.state_dict().items()}
    sd.update({"vae." + k: v for k, v in vae.state_dict().items()})
    sd.update({"text_encoders.t5xxl." + k: v for k, v in t5.state_dict().items() if k != "logit_scale"})
    if arch == "flux":
        sd.update({"text_encoders.clip_l.transformer." + k: v for k, v in _clip(repo, "text_encoder", 24).items()})
    sd = {k: v.detach().float().contiguous().clone() for k, v in sd.items() if not k.endswith("position_ids")}
    save_file(dict(sorted(sd.items())), path)
    return path


def write_nf4_checkpoint(float_path: str, path: str) -> str:
    """The single file with the transformer's Linear weights (every 2-D `.weight` of a BFL FLUX.1
    transformer) in bitsandbytes NF4, as Forge's NF4 FLUX.1 files ship (`flux1-dev-bnb-nf4-v2`: blocks of
    64, one absmax per block, no second quantisation; packed 4-bit `weight` plus `weight.absmax`,
    `weight.quant_map`, `weight.quant_state.bitsandbytes__nf4`); the rest of the file as it was. Forge sees
    the `bitsandbytes__nf4` keys and builds its 4-bit layers."""
    from bitsandbytes.functional import quantize_4bit
    from safetensors.torch import load_file

    prefix = "model.diffusion_model."
    out = {}
    for key, t in load_file(float_path).items():
        if not (key.startswith(prefix) and key.endswith(".weight") and t.dim() == 2):
            out[key] = t
            continue
        packed, state = quantize_4bit(t.float(), blocksize=64, quant_type="nf4", compress_statistics=False)
        out[key] = packed
        out.update({f"{key}.{k}": v for k, v in state.as_dict(packed=True).items()})
    assert sum(k.endswith("bitsandbytes__nf4") for k in out) > 10, f"{float_path}: no FLUX.1 transformer in it"
    save_file(dict(sorted(out.items())), path)
    return path


def write_dequantized_checkpoint(nf4_path: str, path: str) -> str:
    """The NF4 file with every 4-bit weight dequantised back to float32: the weights an NF4 model computes
    with, stored as a float file (the reference a QLoRA-style run on the NF4 model must match)."""
    from bitsandbytes.functional import QuantState, dequantize_4bit
    from safetensors.torch import load_file

    sd = load_file(nf4_path)
    packed = [k[: -len(".quant_state.bitsandbytes__nf4")] for k in sd if k.endswith(".quant_state.bitsandbytes__nf4")]
    for key in packed:
        extra = {k[len(key) + 1:]: sd.pop(k) for k in list(sd) if k.startswith(key + ".")}
        sd[key] = dequantize_4bit(sd[key], QuantState.from_dict(extra, device=torch.device("cpu"))).float()
    save_file(dict(sorted(sd.items())), path)
    return path


def first_generation(sd_model) -> None:
    """One forward of Forge's transformer under inference mode, as a user's first generation runs it: Forge's
    RMSNorm replaces its fp8 `scale` by a compute-dtype copy then (its own, lasting change), so tests start
    from the state a user's Forge is in."""
    kmodel = sd_model.forge_objects.unet.model
    with torch.inference_mode():
        c = sd_model.get_learned_conditioning(["warm-up"])
        kw = {"c_crossattn": c["crossattn"], "y": c["vector"], "guidance": c["guidance"]} if isinstance(c, dict) \
            else {"c_crossattn": c}
        kmodel.apply_model(torch.randn(1, 16, 8, 8), torch.ones(1), transformer_options={}, **kw)
