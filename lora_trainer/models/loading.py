"""`load_adapter(cfg)`: the base model named by `base_model`, loaded offline as a DiffusersAdapter.

Why offline with shipped configs: users point at a single `.safetensors` checkpoint from
models/Stable-diffusion; loading it must not reach the Hub for configs (no network, or a mirror
that is blocked). The architecture is read from the state dict's keys, the diffusers configs for it
ship in `models/configs/<arch>/`, diffusers' own LDM->diffusers converters do the key mapping, and
the CLIP tokenizer (vocab.json + merges.txt, the same for every SD model) is looked up locally.
Accepted `base_model` values:
- `builtin:tiny-sd1` / `builtin:tiny-sdxl`: the built-in tiny models;
- a diffusers folder (with model_index.json);
- a single-file `.safetensors` checkpoint (SD1.x, SD2.x incl. v-prediction, SDXL base);
- `.ckpt`/`.pt`/`.pth`: read with `torch.load(weights_only=True)` only (no pickled code runs);
- a Hub repo id already in the local HF cache (`org/name`).
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

from lora_trainer.errors import ModelLoadError
from lora_trainer.models.base import AdapterInfo
from lora_trainer.models.detect import Detected, detect_checkpoint
from lora_trainer.models.tokenizers import PAD_TOKENS, clip_tokenizer_from, find_tokenizers

if TYPE_CHECKING:
    from lora_trainer.config import TrainConfig

CONFIG_ROOT = os.path.join(os.path.dirname(__file__), "configs")  # tests may point this elsewhere
from lora_trainer.config import BUILTIN_PREFIX  # noqa: E402 - one definition, in the schema

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")



def resolve_device(name: str | None) -> Any:
    """"auto" -> cuda, then mps, then cpu; anything else is passed to torch.device."""
    import torch

    if not name or name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(name)


def weight_dtype(mixed_precision: str | None, device: Any) -> Any:
    """Frozen base weights in half precision on accelerators when mixed precision is on, else fp32."""
    import torch

    if device.type == "cpu" or mixed_precision in (None, "", "no"):
        return torch.float32
    return torch.bfloat16 if mixed_precision == "bf16" else torch.float16


def load_adapter(cfg: TrainConfig):  # -> DiffusersAdapter
    """The adapter for `cfg.base_model`, on `cfg.device`, with base weights in the training dtype."""
    base = (cfg.base_model or "").strip()
    if not base:
        raise ModelLoadError("config 'base_model' is empty: give a .safetensors checkpoint, a diffusers folder "
                             "or builtin:tiny-sd1")
    if is_flux_model(cfg):
        return _load_flux(cfg)
    clip_skip = cfg.clip_skip
    max_tokens = cfg.max_token_length
    if base.startswith(BUILTIN_PREFIX):
        from lora_trainer.models.tiny import build_tiny_adapter

        adapter = build_tiny_adapter(base[len(BUILTIN_PREFIX):].removeprefix("tiny-"), clip_skip=clip_skip,
                                     max_token_length=max_tokens)
        _check_model_type(cfg, adapter.arch, base)
    else:
        adapter = _load_path(cfg, base, clip_skip, max_tokens)
    device = resolve_device(cfg.device)
    import torch

    adapter.to(device, weight_dtype(cfg.mixed_precision, device), vae_dtype=torch.float32)
    adapter.set_attention(cfg.attention)
    return adapter


def is_flux_model(cfg: TrainConfig) -> bool:
    """Whether `base_model` is a FLUX.1 / Chroma model (by model_type, builtin name, folder index or file
    header), so it loads through the flow family's adapter; SD models keep the path below."""
    if cfg.model_type in ("flux", "chroma"):
        return True
    if cfg.model_type != "auto":
        return False
    from lora_trainer.models.flux_loading import BUILTIN

    base = (cfg.base_model or "").strip()
    if base in BUILTIN:
        return True
    path = os.path.expanduser(base)
    if os.path.isdir(path):
        try:
            with open(os.path.join(path, "model_index.json"), encoding="utf-8") as fh:
                return json.load(fh).get("_class_name") in ("FluxPipeline", "ChromaPipeline")
        except (OSError, ValueError):
            return False
    if os.path.isfile(path) and path.lower().endswith(".safetensors"):
        from lora_trainer.models import flux_detect

        try:
            keys = set(flux_detect.read_header(path))
        except ModelLoadError:
            return False
        return flux_detect.describe_flux_keys(keys) is not None
    return path.lower().endswith(".gguf")


def flux_kind_of(cfg: TrainConfig) -> str | None:
    """"flux-dev" | "flux-schnell" | "chroma" for a FLUX.1 / Chroma base (from names and headers only, for
    the plan), else None."""
    if not is_flux_model(cfg):
        return None
    from lora_trainer.models import flux_detect
    from lora_trainer.models.flux_loading import BUILTIN
    from lora_trainer.models.flux_tiny import PART_KIND

    base = (cfg.base_model or "").strip()
    fallback = "chroma" if cfg.model_type == "chroma" else "flux-dev"
    if base in BUILTIN:
        return PART_KIND[BUILTIN[base]]
    path = os.path.expanduser(base)
    try:
        if os.path.isdir(path):
            with open(os.path.join(path, "model_index.json"), encoding="utf-8") as fh:
                if json.load(fh).get("_class_name") == "ChromaPipeline":
                    return "chroma"
            with open(os.path.join(path, "transformer", "config.json"), encoding="utf-8") as fh:
                return "flux-dev" if json.load(fh).get("guidance_embeds") else "flux-schnell"
        keys = set(flux_detect.read_header(path))
    except (OSError, ValueError, ModelLoadError):
        return fallback
    for prefix in flux_detect.BFL_PREFIXES:
        kind = flux_detect.kind_of_keys(keys, prefix)
        if kind:
            return kind
    return fallback


def _load_flux(cfg: TrainConfig):  # -> FluxAdapter
    import torch

    from lora_trainer.models.flux_adapter import load_flux_adapter

    kind = flux_kind_of(cfg)  # from the header: a wrong setting costs one line, not a model load
    if cfg.guidance_scale_train is not None and kind != "flux-dev":
        from lora_trainer.errors import ConfigError

        raise ConfigError("guidance_scale_train", f"only FLUX.1-dev has a guidance input; {cfg.base_model} is "
                                                  f"{kind}: leave guidance_scale_train empty")
    device = resolve_device(cfg.device)
    dtype = weight_dtype(cfg.mixed_precision, device)
    return load_flux_adapter(cfg, dtype).place(device, dtype, vae_dtype=torch.float32)


def _check_model_type(cfg: TrainConfig, detected: str, where: str) -> None:
    wanted = cfg.model_type
    if wanted != "auto" and wanted != detected:
        raise ModelLoadError(f"config 'model_type' is {wanted!r} but {where} is an {detected} model; "
                             f"set model_type: auto (or {detected})")


def _load_path(cfg: TrainConfig, base: str, clip_skip: int, max_tokens: int):  # -> DiffusersAdapter
    path = os.path.expanduser(base)
    if os.path.isdir(path):
        if os.path.exists(os.path.join(path, "model_index.json")):
            return load_diffusers_folder(cfg, path, clip_skip, max_tokens)
        raise ModelLoadError(f"base_model folder {path} has no model_index.json: give a diffusers model folder "
                             "or the checkpoint file itself (.safetensors)")
    if os.path.isfile(path):
        return load_single_file(cfg, path, clip_skip, max_tokens)
    if "/" in base and not os.path.isabs(base) and base.count("/") == 1 and not base.startswith("."):
        cached = _hub_snapshot(base, cfg.model_cache_dir)
        if cached:
            return load_diffusers_folder(cfg, cached, clip_skip, max_tokens)
    raise ModelLoadError(f"base_model not found: {base} (no such file or folder, and not in the local "
                         "Hugging Face cache). Put the checkpoint in models/Stable-diffusion/ and give its "
                         "path, or use builtin:tiny-sd1 to try the trainer")


def _hub_snapshot(repo_id: str, cache_dir: str | None) -> str | None:
    """Local snapshot folder of a Hub repo (offline), or None."""
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(repo_id, cache_dir=cache_dir, local_files_only=True)
    except Exception:  # noqa: BLE001 - any failure means "not cached"
        return None


# ---- diffusers folders -----------------------------------------------------------------------------
def load_diffusers_folder(cfg: TrainConfig, path: str, clip_skip: int = 1, max_tokens: int = 75):  # -> DiffusersAdapter
    """A diffusers pipeline folder: unet/, vae/, text_encoder[_2]/, tokenizer[_2]/, scheduler/."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from lora_trainer.models.diffusers_sd import DiffusersAdapter

    with open(os.path.join(path, "model_index.json"), encoding="utf-8") as f:
        index = json.load(f)
    missing = [p for p in ("unet", "vae", "text_encoder", "tokenizer") if not os.path.isdir(os.path.join(path, p))]
    if missing:
        raise ModelLoadError(f"diffusers folder {path} lacks {', '.join(missing)}/ — copy the whole model folder")
    try:
        unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet", local_files_only=True)
        tes = [CLIPTextModel.from_pretrained(path, subfolder="text_encoder", local_files_only=True)]
        if "text_encoder_2" in index:
            tes.append(CLIPTextModelWithProjection.from_pretrained(path, subfolder="text_encoder_2",
                                                                    local_files_only=True))
        arch = "sdxl" if len(tes) == 2 else ("sd2" if unet.config.cross_attention_dim == 1024 else "sd1")
        vae_path = cfg.vae_path
        vae = _load_vae(vae_path, arch) if vae_path else AutoencoderKL.from_pretrained(path, subfolder="vae",
                                                                                       local_files_only=True)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"cannot load diffusers folder {path}: {e}") from e
    _check_model_type(cfg, arch, path)
    tokenizers = [clip_tokenizer_from(os.path.join(path, sub), PAD_TOKENS[arch][i])
                  for i, sub in enumerate(["tokenizer", "tokenizer_2"][:len(tes)])]
    if any(t is None for t in tokenizers):
        raise ModelLoadError(f"diffusers folder {path}: tokenizer folder lacks vocab.json + merges.txt")
    pred = "epsilon"
    sched = os.path.join(path, "scheduler", "scheduler_config.json")
    if os.path.exists(sched):
        with open(sched, encoding="utf-8") as f:
            pred = json.load(f).get("prediction_type", "epsilon") or "epsilon"
    pred = _prediction_override(cfg, pred)
    info = AdapterInfo(arch=arch, prediction_type=pred, model_name=os.path.basename(os.path.normpath(path)))
    return DiffusersAdapter(unet, vae, tes, tokenizers, info, clip_skip=clip_skip, max_token_length=max_tokens)


def _prediction_override(cfg: TrainConfig, detected: str) -> str:
    v = cfg.v_parameterization
    if v is None:
        return detected
    return "v_prediction" if v else "epsilon"


def _load_vae(vae_path: str, arch: str):  # -> AutoencoderKL
    """`vae_path`: a diffusers VAE folder or a single-file VAE (.safetensors, LDM or diffusers keys),
    with `arch`'s VAE config (SD1/SD2 and SDXL VAEs share a shape but not a latent scale)."""
    from diffusers import AutoencoderKL

    if os.path.isdir(vae_path):
        return AutoencoderKL.from_pretrained(vae_path, local_files_only=True)
    if not os.path.isfile(vae_path):
        raise ModelLoadError(f"config 'vae_path': file not found: {vae_path}")
    sd = read_state_dict(vae_path)
    if any(k.startswith("encoder.down_blocks.") for k in sd):  # already diffusers keys
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(os.path.join(CONFIG_ROOT, arch, "vae")))
        missing, _ = vae.load_state_dict(sd, strict=False)
        if missing:
            raise ModelLoadError(f"config 'vae_path': {vae_path} lacks {len(missing)} VAE weights "
                                 f"({missing[0]}, ...); is it an {arch} VAE?")
        return vae.eval()
    if not any(k.startswith("first_stage_model.") for k in sd):
        sd = {"first_stage_model." + k: v for k, v in sd.items()}
    try:
        return AutoencoderKL.from_single_file(sd, config=os.path.join(CONFIG_ROOT, arch), subfolder="vae",
                                              local_files_only=True).eval()
    except (ValueError, KeyError, RuntimeError) as e:
        raise ModelLoadError(f"config 'vae_path': {vae_path} is not a usable {arch} VAE ({e})") from e


# ---- single files ----------------------------------------------------------------------------------
def read_state_dict(path: str) -> dict[str, Any]:
    """Tensors of a .safetensors file, or of a pickle checkpoint read with weights_only=True."""
    low = path.lower()
    if low.endswith(".safetensors"):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(path)
        except (SafetensorError, OSError, ValueError) as e:
            raise ModelLoadError(f"{path} is not a readable .safetensors file ({e}); re-download it") from e
    if low.endswith(PICKLE_SUFFIXES):
        import torch

        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - unpickling refused or broken file
            raise ModelLoadError(
                f"{path} is a pickle checkpoint that cannot be read safely (torch.load weights_only=True "
                f"refused it: {str(e).splitlines()[0][:200]}). Convert it to .safetensors on a machine "
                "you trust, e.g. `python -c \"import torch, safetensors.torch as s; "
                "sd=torch.load('model.ckpt', map_location='cpu', weights_only=False); "
                "sd=sd.get('state_dict', sd); s.save_file({k: v.contiguous() for k, v in sd.items() "
                "if hasattr(v, 'contiguous')}, 'model.safetensors')\"`, or download the .safetensors "
                "version of the model") from e
        if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
            obj = obj["state_dict"]
        if not isinstance(obj, dict):
            raise ModelLoadError(f"{path} does not hold a state dict")
        return {k: v for k, v in obj.items() if hasattr(v, "shape")}
    raise ModelLoadError(f"base_model {path}: unknown file type; use a .safetensors checkpoint")


def read_metadata(path: str) -> dict[str, str]:
    """The safetensors header's __metadata__ (empty for other files)."""
    if not path.lower().endswith(".safetensors"):
        return {}
    from safetensors import safe_open

    try:
        with safe_open(path, "pt") as f:
            return dict(f.metadata() or {})
    except Exception:  # noqa: BLE001 - unreadable header: read_state_dict reports it
        return {}


def load_single_file(cfg: TrainConfig, path: str, clip_skip: int = 1, max_tokens: int = 75):  # -> DiffusersAdapter
    """An original-layout (LDM/SGM) checkpoint file, converted with the shipped configs."""
    from lora_trainer.models.diffusers_sd import DiffusersAdapter

    sd = read_state_dict(path)
    det = detect_checkpoint(sd, read_metadata(path), path)
    _check_model_type(cfg, det.arch, path)
    tokenizers = find_tokenizers(det.arch, path, cfg.tokenizer_path, cfg.model_cache_dir)
    unet, vae, tes = convert_single_file(sd, det)
    if cfg.vae_path:
        vae = _load_vae(cfg.vae_path, det.arch)
    pred, evidence = det.prediction_type, det.prediction_evidence
    if cfg.v_parameterization is not None:
        pred, evidence = _prediction_override(cfg, pred), "config"
    elif det.arch == "sd2" and not evidence:
        from lora_trainer.models.detect import sd2_unet_predicts_v

        pred, evidence = ("v_prediction" if sd2_unet_predicts_v(unet) else "epsilon"), "unet test"
    info = AdapterInfo(arch=det.arch, prediction_type=pred, model_name=os.path.basename(path),
                       extra={"prediction_evidence": evidence or "default"})
    return DiffusersAdapter(unet, vae, tes, tokenizers, info, clip_skip=clip_skip, max_token_length=max_tokens)


def convert_single_file(sd: dict[str, Any], det: Detected) -> tuple[Any, Any, list[Any]]:
    """(unet, vae, text_encoders) from an LDM-layout state dict, via diffusers' converters."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import create_diffusers_clip_model_from_ldm
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    cfg_dir = os.path.join(CONFIG_ROOT, det.arch)
    if not os.path.isdir(cfg_dir):
        raise ModelLoadError(f"no shipped config for {det.arch} in {cfg_dir}; reinstall the extension")
    try:
        unet = UNet2DConditionModel.from_single_file(sd, config=cfg_dir, subfolder="unet", local_files_only=True)
        vae = AutoencoderKL.from_single_file(sd, config=cfg_dir, subfolder="vae", local_files_only=True)
        tes = [create_diffusers_clip_model_from_ldm(CLIPTextModel, sd, subfolder="text_encoder", config=cfg_dir,
                                                    local_files_only=True)]
        if det.arch == "sdxl":
            tes.append(create_diffusers_clip_model_from_ldm(CLIPTextModelWithProjection, sd,
                                                            subfolder="text_encoder_2", config=cfg_dir,
                                                            local_files_only=True))
    except (ValueError, KeyError, RuntimeError, OSError) as e:
        raise ModelLoadError(f"cannot convert the {det.arch} checkpoint {det.source}: {e}. Is it a complete "
                             "model (UNet + VAE + text encoder), not a LoRA, VAE or pruned UNet-only file?") from e
    for name, mod in (("unet", unet), ("vae", vae), *((f"text_encoder {i + 1}", t) for i, t in enumerate(tes))):
        meta = [n for n, p in [*mod.named_parameters(), *mod.named_buffers()] if p.is_meta]
        if meta:
            raise ModelLoadError(f"checkpoint {det.source} lacks {name} weights ({meta[0]}, ... {len(meta)} "
                                 "tensors); use a complete model file")
        mod.eval()
    return unet, vae, tes
