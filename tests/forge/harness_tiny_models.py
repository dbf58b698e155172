"""Tiny models the Forge harness lacks, added to its build from Forge's own classes (idempotent).

    <Forge venv python> tests/forge/harness_tiny_models.py <forge root> [--quant Q4_0] [--force]

1. A GGUF FLUX.1-dev as GGUF Flux models ship: the transformer alone in `models/Stable-diffusion/ltflux-gguf-
<quant>.gguf` (its Linear weights quantised; Forge keeps them as GGUF blocks and dequantises them in its
forward), and the VAE, CLIP-L and T5 as separate files in `models/VAE` and `models/text_encoder`, chosen
in Forge's "VAE / Text Encoder" selector (`forge_additional_modules`). Forge takes a separate CLIP-L only
at the real width (768 wide: `backend.loader.replace_state_dict`), so this model's CLIP-L is 768 wide
with one layer (the transformer's pooled-vector input follows), and its transformer is 96 wide (3 heads)
so the harness's 64-wide `tinyflux` class does not claim it.

2. A Chroma all-in-one file, `models/Stable-diffusion/ltchroma.safetensors` (the tests' tiny Chroma:
`tiny_forge_flux.write_checkpoint`). This Forge sends a Chroma checkpoint to its Chroma engine by a
hard-coded repository name, "Chroma", after swapping in the full-size Chroma dimensions
(`backend/loader.py`, `GuessChroma`), and reads the component configs from the folder of that name. The tiny
class does that swap's work itself (tiny dimensions, no guidance input, T5 as `text_encoder`), and its
repository name is a tiny config folder whose name also compares equal to "Chroma" (`_LoraTrainerRepo`),
so Forge picks its Chroma engine with the tiny configs.

3. An NF4 FLUX.1-dev, `models/Stable-diffusion/ltflux-nf4.safetensors`: the harness's own `tinyflux` file
with its transformer's Linear weights in bitsandbytes NF4 (`tiny_forge_flux.write_nf4_checkpoint`), as
NF4 FLUX.1 files ship. Its class subclasses the harness's `HarnessTinyFlux` (same configs) and claims
files with `bitsandbytes__nf4` keys and a 64-wide `img_in` (read from the bias: NF4 packs the weight).
Forge's 4-bit layers need bitsandbytes >= 0.46 to run on a CPU (its own pin, 0.45.3, is CUDA-only).

Forge picks a model class with huggingface_guess from the transformer's keys and shapes: a class for the
model (a subclass of the real `Flux`) is appended to the build's `huggingface_guess/model_list.py`
between markers (replaced on every run; rerun after the harness's setup, which rewrites its own block),
and its component configs go to `backend/huggingface/lora-trainer-tiny/`. Run it before starting Forge
(Forge lists the model folders and imports huggingface_guess at start).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

BEGIN, END = "# >>> lora-trainer tiny models >>>", "# <<< lora-trainer tiny models <<<"
REPO = "lora-trainer-tiny/FLUX.1-dev-gguf"
CHROMA_REPO = "lora-trainer-tiny/Chroma"
NAME = "ltflux-gguf"
CHROMA_NAME = "ltchroma"
NF4_NAME = "ltflux-nf4"
WIDTH = 96
CLIP_768 = {"hidden_size": 768, "intermediate_size": 256, "num_hidden_layers": 1, "num_attention_heads": 12,
            "projection_dim": 768}


def gguf_dims() -> dict:
    from tiny_forge_flux import DIMS

    return dict(DIMS, hidden_size=WIDTH, num_heads=3, depth=1, depth_single_blocks=1, vec_in_dim=CLIP_768["hidden_size"])


def guess_block(with_nf4: bool) -> str:
    """The huggingface_guess classes, as source appended to `model_list.py` (Forge imports it at start);
    `with_nf4`: the NF4 class too (it builds on the harness's own `HarnessTinyFlux`)."""
    from tiny_forge_flux import CHROMA_DIMS, DIMS

    return f'''{BEGIN}
# Added by LoRA Trainer's tests/forge/harness_tiny_models.py (not upstream): a tiny GGUF FLUX.1-dev,
# transformer {WIDTH} wide, 768-wide one-layer CLIP-L; configs in backend/huggingface/{REPO}.
def _lora_trainer_flux_width(state_dict):
    for k, v in (state_dict or {{}}).items():
        if k.endswith("img_in.weight") and "double_blocks" not in k:
            return v.shape[0]
    return None


class LoraTrainerTinyFluxGGUF(Flux):
    huggingface_repo = {REPO!r}
    unet_config = {{"image_model": "flux", "guidance_embed": True}}
    unet_extra_config = {gguf_dims()!r}

    @classmethod
    def matches(s, unet_config, state_dict=None):
        return Flux.matches.__func__(s, unet_config, state_dict) and _lora_trainer_flux_width(state_dict) == {WIDTH}


class _LoraTrainerRepo(str):
    """A config folder that Forge's loader also takes for its hard-coded "Chroma" (which picks its Chroma engine)."""

    def __eq__(self, other):
        return str.__eq__(self, other) is True or (isinstance(other, str) and str.__eq__(other, "Chroma"))

    def __ne__(self, other):
        return not self.__eq__(other)

    __hash__ = str.__hash__


class LoraTrainerTinyChroma(FluxSchnell):
    """The tests' tiny Chroma (64 wide, distilled guidance layer, T5 only): what Forge's GuessChroma sets, tiny."""
    huggingface_repo = _LoraTrainerRepo({CHROMA_REPO!r})
    unet_config = {{"image_model": "flux", "guidance_embed": False}}
    unet_extra_config = {dict(DIMS, **CHROMA_DIMS)!r}

    def __init__(self, unet_config):
        super().__init__(unet_config)
        self.unet_config.pop("guidance_embed", None)

    def clip_target(self, state_dict={{}}):
        return {{"t5xxl": "text_encoder"}}

    @classmethod
    def matches(s, unet_config, state_dict=None):
        return (FluxSchnell.matches.__func__(s, unet_config, state_dict)
                and _lora_trainer_flux_width(state_dict) == {DIMS["hidden_size"]}
                and any("distilled_guidance_layer." in k for k in (state_dict or {{}})))


models = [LoraTrainerTinyFluxGGUF, LoraTrainerTinyChroma] + models
{NF4_BLOCK if with_nf4 else ""}{END}
'''


NF4_BLOCK = '''

class LoraTrainerTinyFluxNF4(HarnessTinyFlux):
    """The harness's tinyflux with its transformer in bitsandbytes NF4 (packed weights: width from the bias)."""

    @classmethod
    def matches(s, unet_config, state_dict=None):
        keys = state_dict or {}
        width = next((v.shape[0] for k, v in keys.items() if k.endswith("img_in.bias")), None)
        return (Flux.matches.__func__(s, unet_config, state_dict) and width == 64
                and any(k.endswith("bitsandbytes__nf4") for k in keys))


models = [LoraTrainerTinyFluxNF4] + models
'''


def patch_model_list(root: str) -> str:
    path = os.path.join(root, "repositories", "huggingface_guess", "huggingface_guess", "model_list.py")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if BEGIN in text:
        text = text[:text.index(BEGIN)].rstrip("\n") + "\n" + text[text.index(END) + len(END):].lstrip("\n")
    from lora_trainer.atomic import atomic_write_text

    atomic_write_text(path, text.rstrip("\n") + "\n\n" + guess_block("class HarnessTinyFlux(" in text))
    return path


def outputs(root: str, quant: str) -> dict[str, str]:
    models = os.path.join(root, "models")
    return {"gguf": os.path.join(models, "Stable-diffusion", f"{NAME}-{quant.lower()}.gguf"),
            "vae": os.path.join(models, "VAE", f"{NAME}-ae.safetensors"),
            "clip_l": os.path.join(models, "text_encoder", f"{NAME}-clip_l.safetensors"),
            "t5xxl": os.path.join(models, "text_encoder", f"{NAME}-t5xxl.safetensors"),
            "chroma": os.path.join(models, "Stable-diffusion", f"{CHROMA_NAME}.safetensors"),
            "nf4": os.path.join(models, "Stable-diffusion", f"{NF4_NAME}.safetensors")}


def build(repo: str) -> dict[str, dict]:
    """Every part's state dict in the layout its separate file has, every weight redrawn (fixed seeds)."""
    import torch
    from backend.nn.flux import IntegratedFluxTransformer2DModel
    from backend.nn.t5 import IntegratedT5
    from backend.nn.vae import IntegratedAutoencoderKL
    from tiny_forge import _clip, _randomise
    from tiny_forge_flux import _redraw

    transformer = IntegratedFluxTransformer2DModel(**gguf_dims(), guidance_embed=True)
    _redraw(transformer, 31)
    vae = IntegratedAutoencoderKL.from_config(IntegratedAutoencoderKL.load_config(os.path.join(repo, "vae")))
    _randomise(vae, 32)
    with open(os.path.join(repo, "text_encoder_2", "config.json")) as f:
        t5 = IntegratedT5(json.load(f))
    _randomise(t5, 33)

    def plain(sd: dict, dtype: torch.dtype = torch.float32) -> dict:
        return {k: v.detach().to(dtype).contiguous().clone() for k, v in sd.items() if not k.endswith("position_ids")}

    return {"gguf": plain(transformer.state_dict()), "vae": plain(vae.state_dict()),
            "clip_l": plain(_clip(repo, "text_encoder", 34, projection=True), torch.float16),
            "t5xxl": plain({k[len("transformer."):]: v for k, v in t5.state_dict().items() if k.startswith("transformer.")})}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("forge_root", help="the Forge checkout (holding backend/, models/, repositories/)")
    ap.add_argument("--quant", default="Q4_0", help="GGUF block type of the transformer's Linear weights (Q8_0, Q4_0, ...)")
    ap.add_argument("--force", action="store_true", help="rewrite the model files that are already there")
    args = ap.parse_args(argv)
    root = os.path.abspath(args.forge_root)
    if not os.path.isdir(os.path.join(root, "backend", "huggingface")):
        sys.exit(f"forge_root: {root} is not a Forge checkout (no backend/huggingface); give the harness's build")
    os.environ["LT_FORGE_DIR"] = root
    from forge_env import import_backend

    found, why = import_backend()
    if found is None:
        sys.exit(why)
    from safetensors.torch import save_file
    from tiny_forge import write_gguf
    from tiny_forge_flux import TINY_T5, write_checkpoint, write_nf4_checkpoint, write_repo

    from lora_trainer.atomic import atomic_path

    repo = write_repo(root, "flux", os.path.join(root, "backend", "huggingface", REPO),
                      encoders={"text_encoder": CLIP_768, "text_encoder_2": TINY_T5})
    chroma_repo = write_repo(root, "chroma", os.path.join(root, "backend", "huggingface", CHROMA_REPO))
    print("configs", repo, chroma_repo)
    print("patched", patch_model_list(root))
    out = outputs(root, args.quant)
    tinyflux = os.path.join(root, "models", "Stable-diffusion", "tinyflux.safetensors")
    if not os.path.isfile(tinyflux):
        print(f"skipped {out.pop('nf4')} (no {tinyflux}: run the harness's setup first)")
    todo = {k: p for k, p in out.items() if args.force or not os.path.isfile(p)}
    parts = build(repo) if set(todo) - {"chroma", "nf4"} else {}
    for key, path in out.items():
        if key in todo:
            with atomic_path(path) as tmp:
                if key == "chroma":
                    write_checkpoint("chroma", chroma_repo, tmp)
                elif key == "nf4":
                    write_nf4_checkpoint(tinyflux, tmp)
                elif key == "gguf":
                    write_gguf(parts[key], tmp, args.quant)
                else:
                    save_file(parts[key], tmp)
        print(("wrote " if key in todo else "kept  ") + path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
