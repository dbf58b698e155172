"""Tiny SD1 / SDXL checkpoints loaded by Forge's own loader (`backend.loader.forge_loader`).

Forge picks a model class with huggingface_guess from the UNet's key shapes, then builds each
component from the config folder `backend/huggingface/<class.huggingface_repo>/`. The real classes
only match full-size models, so each tiny model gets a subclass of the real one (Forge's engines
accept it through `matched_guesses`) whose `huggingface_repo` is an absolute path to a copy of the
real config folder with the text encoders and VAE shrunk (tokenizers and scheduler unchanged). The
checkpoint is written in the usual single-file layout with Forge's own UNet/VAE classes and
transformers' CLIP, then loaded exactly as Forge loads a user's checkpoint: under inference mode,
with its operations (manual cast, fp8 storage) and its patchers.
"""

from __future__ import annotations

import json
import os
import shutil
import types
from typing import Any

import torch
from safetensors.torch import save_file

TINY_CLIP = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2,
             "projection_dim": 64}
TINY_VAE = {"block_out_channels": [32, 64, 64, 64], "layers_per_block": 1, "norm_num_groups": 32}

UNETS = {
    # SD1's real topology (kohya's SD1 names count its blocks), 32 instead of 320 channels
    "sd1": dict(in_channels=4, out_channels=4, model_channels=32, num_res_blocks=[2, 2, 2, 2], channel_mult=[1, 2, 4, 4],
                transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0], transformer_depth_output=[1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
                transformer_depth_middle=1,
                num_heads=4, num_head_channels=-1, use_spatial_transformer=True, use_linear_in_transformer=False,
                context_dim=64, adm_in_channels=None, use_checkpoint=False, legacy=False),
    # SD2: SD1's layout with linear projections and 32-channel heads (64 in the real one)
    "sd2": dict(in_channels=4, out_channels=4, model_channels=32, num_res_blocks=[2, 2, 2, 2], channel_mult=[1, 2, 4, 4],
                transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0], transformer_depth_output=[1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
                transformer_depth_middle=1, num_heads=-1, num_head_channels=32, use_spatial_transformer=True,
                use_linear_in_transformer=True, context_dim=64, adm_in_channels=None, use_checkpoint=False,
                legacy=False),
    # SDXL's block layout (attention from the second level on), 1 transformer per block, 32 channels
    "sdxl": dict(in_channels=4, out_channels=4, model_channels=32, num_res_blocks=[2, 2, 2], channel_mult=[1, 2, 4],
                 transformer_depth=[0, 0, 1, 1, 1, 1], transformer_depth_output=[0, 0, 0, 1, 1, 1, 1, 1, 1],
                 transformer_depth_middle=1,
                 num_heads=-1, num_head_channels=64, use_spatial_transformer=True, use_linear_in_transformer=True,
                 context_dim=128, adm_in_channels=64 + 6 * 256, num_classes="sequential", use_checkpoint=False,
                 legacy=False),
}
REPOS = {"sd1": ("runwayml/stable-diffusion-v1-5", ("text_encoder",)),
         "sd2": ("stabilityai/stable-diffusion-2-1", ("text_encoder",)),
         "sdxl": ("stabilityai/stable-diffusion-xl-base-1.0", ("text_encoder", "text_encoder_2"))}
GUESS_KEYS = ("context_dim", "model_channels", "use_linear_in_transformer", "adm_in_channels",
              "transformer_depth", "use_temporal_attention")


def shrunk_config_folder(forge_root: str, src: str, dst: str, updates: list[tuple[str, dict]]) -> str:
    """A copy of Forge's config folder `src` with each component's config.json updated (the tiny sizes)."""
    shutil.copytree(os.path.join(forge_root, "backend", "huggingface", src), dst, dirs_exist_ok=True)
    for comp, upd in updates:
        path = os.path.join(dst, comp, "config.json")
        with open(path) as f:
            cfg = json.load(f)
        cfg.update(upd)
        with open(path, "w") as f:
            json.dump(cfg, f)
    return dst


def write_repo(forge_root: str, arch: str, dst: str) -> str:
    """A copy of Forge's config folder for `arch` with the text encoders and the VAE shrunk."""
    src, encoders = REPOS[arch]
    return shrunk_config_folder(forge_root, src, dst, [(e, TINY_CLIP) for e in encoders] + [("vae", TINY_VAE)])


def guess_class(arch: str, repo: str) -> type:
    """A huggingface_guess class for the tiny UNet, subclassing the real SD15 / SDXL one."""
    from huggingface_guess import model_list

    base = {"sd1": model_list.SD15, "sd2": model_list.SD20, "sdxl": model_list.SDXL}[arch]
    unet = UNETS[arch]
    cfg = {k: unet[k] for k in GUESS_KEYS if k in unet}
    cfg["use_temporal_attention"] = False
    if arch != "sdxl":
        cfg.pop("transformer_depth")
    extra = dict(base.unet_extra_config, num_heads=unet["num_heads"], num_head_channels=unet["num_head_channels"])
    return type(f"Tiny{base.__name__}", (base,), {"huggingface_repo": repo, "unet_config": cfg,
                                                 "unet_extra_config": extra})


def _randomise(model: torch.nn.Module, seed: int) -> None:
    """Every parameter redrawn (no zero-initialised output layers, so a LoRA anywhere changes the output)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if p.dim() >= 2:
                v = torch.randn(p.shape, generator=g) / (p[0].numel() ** 0.5)
            elif name.endswith("weight"):
                v = 1 + 0.1 * torch.randn(p.shape, generator=g)
            else:
                v = 0.1 * torch.randn(p.shape, generator=g)
            p.copy_(v.to(p.dtype))


def _clip(repo: str, comp: str, seed: int, projection: bool = False) -> dict[str, torch.Tensor]:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfg = CLIPTextConfig.from_pretrained(os.path.join(repo, comp))
    model = (CLIPTextModelWithProjection if projection else CLIPTextModel)(cfg)
    _randomise(model, seed)
    return model.state_dict()


def write_checkpoint(arch: str, repo: str, path: str) -> str:
    """The single-file checkpoint (SD1: ldm keys; SDXL: sgm keys with HF-layout text encoders)."""
    from backend.nn.unet import IntegratedUNet2DConditionModel
    from backend.nn.vae import IntegratedAutoencoderKL

    unet = IntegratedUNet2DConditionModel.from_config(dict(UNETS[arch]))
    _randomise(unet, 11)
    vae = IntegratedAutoencoderKL.from_config(IntegratedAutoencoderKL.load_config(os.path.join(repo, "vae")))
    _randomise(vae, 12)
    sd = {"model.diffusion_model." + k: v for k, v in unet.state_dict().items()}
    sd.update({"first_stage_model." + k: v for k, v in vae.state_dict().items()})
    if arch == "sd1":
        sd.update({"cond_stage_model.transformer." + k: v for k, v in _clip(repo, "text_encoder", 13).items()})
    elif arch == "sd2":  # OpenCLIP-H's place, in the HF layout Forge converts it to
        sd.update({"cond_stage_model.model.transformer." + k: v for k, v in _clip(repo, "text_encoder", 13).items()})
    else:
        sd.update({"conditioner.embedders.0.transformer." + k: v for k, v in _clip(repo, "text_encoder", 13).items()})
        for k, v in _clip(repo, "text_encoder_2", 14, projection=True).items():
            key = k if k.startswith("text_model.") else "text_projection.weight"
            sd["conditioner.embedders.1.model.transformer." + key] = v
    sd = {k: v.detach().float().contiguous().clone() for k, v in sd.items() if not k.endswith("position_ids")}
    save_file(dict(sorted(sd.items())), path)
    return path


def load(path: str, *, storage_dtype: Any = None) -> Any:
    """Forge's engine for the checkpoint, with the attributes `modules.sd_models` sets on it."""
    from backend.args import dynamic_args
    from backend.loader import forge_loader

    dynamic_args["forge_unet_storage_dtype"] = storage_dtype
    try:
        sd_model = forge_loader(path)
    finally:
        dynamic_args["forge_unet_storage_dtype"] = None
    name = os.path.splitext(os.path.basename(path))[0]
    sd_model.sd_checkpoint_info = types.SimpleNamespace(title=f"{name}.safetensors", name_for_extra=name,
                                                        filename=path)
    sd_model.filename, sd_model.sd_model_hash = path, "0123abcd"
    return sd_model



def write_gguf_unet(safetensors_path: str, path: str) -> str:
    """The checkpoint's UNet as a GGUF file (how GGUF models ship: the UNet alone), as `write_gguf` writes it."""
    from safetensors.torch import load_file

    prefix = "model.diffusion_model."
    return write_gguf({k: v for k, v in load_file(safetensors_path).items() if k.startswith(prefix)}, path)


def write_gguf(state_dict: dict[str, torch.Tensor], path: str, quant: str = "Q8_0") -> str:
    """A GGUF file of the tensors, the 2-D Linear weights quantised to `quant` (Q8_0, Q4_0, ...: the
    blocks of 32 Forge's GGUF layers dequantise) with Forge's bundled `gguf` package, the rest in fp32."""
    import gguf

    qtype = gguf.GGMLQuantizationType[quant]
    writer = gguf.GGUFWriter(path, arch="tiny")
    for key, t in sorted(state_dict.items()):
        arr = t.float().numpy()
        if t.dim() == 2 and t.shape[1] % 32 == 0:
            q = gguf.quants.quantize(arr, qtype)
            writer.add_tensor(key, q, raw_shape=q.shape, raw_dtype=qtype)
        else:
            writer.add_tensor(key, arr)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def swap_in_gguf_unet(sd_model: Any, gguf_path: str, repo: str, component: str = "unet",
                      cls_name: str = "UNet2DConditionModel") -> Any:
    """Replace the engine's UNet with one Forge builds from the GGUF file: its own reader
    (`load_torch_file`), its per-component loader (GGUF storage -> its GGUF operations) and a new
    `UnetPatcher`, under inference mode - the steps `forge_loader` takes for a GGUF UNet."""
    from backend.loader import load_huggingface_component
    from backend.patcher.unet import UnetPatcher
    from backend.utils import load_torch_file

    prefix = "model.diffusion_model."
    with torch.inference_mode():
        sd = {k[len(prefix):]: v for k, v in load_torch_file(gguf_path).items()}
        unet = load_huggingface_component(sd_model.model_config, component, "diffusers", cls_name, repo, sd)
        old = sd_model.forge_objects.unet
        patcher = UnetPatcher.from_model(unet, diffusers_scheduler=None, config=sd_model.model_config,
                                         k_predictor=old.model.predictor)
    for objects in (sd_model.forge_objects, sd_model.forge_objects_original, sd_model.forge_objects_after_applying_lora):
        objects.unet = patcher
    return sd_model


def first_load(sd_model: Any) -> Any:
    """Have Forge's memory manager load the UNet as a first generation does (it also bakes GGUF
    weights into their compute layout there), so tests start from the state a user's Forge is in."""
    from backend import memory_management

    with torch.inference_mode():
        memory_management.load_models_gpu([sd_model.forge_objects.unet])
    return sd_model
