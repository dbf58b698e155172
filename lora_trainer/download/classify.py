"""What a .safetensors file is, from its header keys and shapes: LoRA/LyCORIS, checkpoint, VAE, embedding."""

from __future__ import annotations

from dataclasses import dataclass

_LORA_MARKS = ("lora_down", "lora_up", "lora_A", "lora_B", "lora.down", "lora.up")
_LYCO_MARKS = ("hada_w1", "hada_w2", "lokr_w1", "lokr_w2", "oft_blocks", "oft_diag", ".diff_b", "lokr_t")
_XATTN_K = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"


@dataclass
class Kind:
    kind: str  # "lora" | "checkpoint" | "vae" | "embedding" | "other"
    detail: str = ""  # "lycoris", "sd1", "sd2", "sdxl", ...
    sd_version: str = ""  # A1111 sidecar "sd version": SD1 | SD2 | SDXL | ""


def classify_header(header: dict) -> Kind:
    """Decide from tensor names (and the cross-attention width for checkpoints)."""
    keys = [k for k in header if k != "__metadata__"]
    meta = header.get("__metadata__") or {}
    if any(m in k for k in keys for m in _LORA_MARKS):
        return Kind("lora", "lora", _lora_version(keys, meta))
    if any(m in k for k in keys for m in _LYCO_MARKS):
        return Kind("lora", "lycoris", _lora_version(keys, meta))
    if any(k.startswith("model.diffusion_model.") for k in keys):
        width = 0
        info = header.get(_XATTN_K)
        if isinstance(info, dict) and len(info.get("shape", [])) == 2:
            width = info["shape"][1]
        sdxl = any(k.startswith("conditioner.embedders.1") for k in keys) or width == 2048
        if sdxl:
            return Kind("checkpoint", "sdxl", "SDXL")
        sd2 = width == 1024 or any(k.startswith("cond_stage_model.model.") for k in keys)
        return Kind("checkpoint", "sd2" if sd2 else "sd1", "SD2" if sd2 else "SD1")
    if keys and all(k.split(".")[0] in ("encoder", "decoder", "quant_conv", "post_quant_conv") for k in keys):
        return Kind("vae", "vae")
    if keys and len(keys) <= 4 and (set(keys) <= {"emb_params", "clip_l", "clip_g", "string_to_param.*"}
                                    or all(len(header[k].get("shape", [])) == 2 for k in keys)):
        sd = "SDXL" if {"clip_l", "clip_g"} <= set(keys) else ""
        if not sd and "emb_params" in keys:
            width = (header["emb_params"].get("shape") or [0, 0])[-1]
            sd = {768: "SD1", 1024: "SD2"}.get(width, "")
        return Kind("embedding", "textual-inversion", sd)
    return Kind("other")


def _lora_version(keys: list[str], meta: dict) -> str:
    base = str(meta.get("ss_base_model_version", "")).lower()
    if base.startswith("sdxl") or any(k.startswith(("lora_te1_", "lora_te2_")) for k in keys):
        return "SDXL"
    if base.startswith("sd_v2") or meta.get("ss_v2") == "True":
        return "SD2"
    if base.startswith("sd_v1") or any(k.startswith("lora_te_") for k in keys):
        return "SD1"
    return ""
