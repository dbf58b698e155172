"""GGUF LoRA adapter export, for llama.cpp's `--lora` on top of a GGUF of the same base.

Facts from llama.cpp (convert_lora_to_gguf.py, src/llama-adapter.cpp): the file has
`general.type = "adapter"`, `general.architecture` equal to the base GGUF's, `adapter.type = "lora"`
and `adapter.lora.alpha` (f32); tensors are `<base tensor name>.lora_a` [rank, in] and `.lora_b`
[out, rank] (numpy order) for base tensors such as `blk.N.attn_q.weight`; llama.cpp scales by
alpha / rank. For the `llama` architecture the HF->GGUF conversion permutes the rows of q/k for its
rotary layout, so lora_b of q_proj/k_proj gets the same row permutation (lora_a is unchanged).
"""

from __future__ import annotations

from typing import Any

from lora_trainer.atomic import atomic_path
from lora_trainer.errors import ConfigError

# HF model_type -> (GGUF architecture, whether q/k rows are permuted like convert_hf_to_gguf does)
GGUF_ARCHS = {"llama": ("llama", True), "mistral": ("llama", True), "qwen2": ("qwen2", False),
              "qwen3": ("qwen3", False)}
PEFT_PREFIX = "base_model.model."


def rope_permute(rows: Any, n_head: int) -> Any:
    """Reorder output rows from HF's half-split rotary layout to GGUF's interleaved one."""
    return (rows.reshape(n_head, 2, rows.shape[0] // n_head // 2, *rows.shape[1:])
            .swapaxes(1, 2).reshape(rows.shape))


def _pairs(state: dict[str, Any]) -> dict[str, dict[str, Any]]:
    pairs: dict[str, dict[str, Any]] = {}
    for key, tensor in state.items():
        for part in ("lora_A", "lora_B"):
            suffix = f".{part}.weight"
            if key.endswith(suffix):
                base = key[: -len(suffix)]
                base = base[len(PEFT_PREFIX):] if base.startswith(PEFT_PREFIX) else base
                pairs.setdefault(base, {})[part] = tensor
                break
        else:
            raise ConfigError("gguf_output", f"adapter tensor {key} is not a LoRA A/B weight; GGUF export "
                              "supports plain LoRA on linear layers only")
    return pairs


def export_gguf_lora(path: str, state: dict[str, Any], hf_config: Any, alpha: float, precision: str = "fp16",
                     name: str = "") -> str:
    """Write `state` (PEFT adapter tensors) as a llama.cpp GGUF LoRA at `path` (atomic)."""
    try:
        import gguf
    except ImportError as exc:
        raise ConfigError("gguf_output", "needs the gguf package (pip install gguf)") from exc
    import numpy as np

    model_type = str(getattr(hf_config, "model_type", ""))
    if model_type not in GGUF_ARCHS:
        raise ConfigError("gguf_output", f"GGUF LoRA export supports {', '.join(sorted(GGUF_ARCHS))} models, "
                          f"not '{model_type}'; use the PEFT adapter folder (or merge_output) instead")
    arch_name, permute = GGUF_ARCHS[model_type]
    arch = next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == arch_name)
    n_layers = int(hf_config.num_hidden_layers)
    names = gguf.get_tensor_name_map(arch, n_layers)
    n_head = int(hf_config.num_attention_heads)
    n_kv = int(getattr(hf_config, "num_key_value_heads", None) or n_head)
    np_dtype = np.float32 if precision == "fp32" else np.float16

    tensors: list[tuple[str, Any]] = []
    for hf_name, ab in sorted(_pairs(state).items()):
        target = names.get_name(hf_name + ".weight", try_suffixes=(".weight",))
        if target is None or "lora_A" not in ab or "lora_B" not in ab:
            raise ConfigError("gguf_output", f"no GGUF tensor for {hf_name} in {arch_name}; target only "
                              "attention/MLP projections for GGUF export")
        a = ab["lora_A"].float().cpu().numpy()
        b = ab["lora_B"].float().cpu().numpy()
        if permute and hf_name.endswith("q_proj"):
            b = rope_permute(b, n_head)
        elif permute and hf_name.endswith("k_proj"):
            b = rope_permute(b, n_kv)
        tensors += [(target + ".lora_a", a.astype(np_dtype)), (target + ".lora_b", b.astype(np_dtype))]

    with atomic_path(path) as tmp:
        writer = gguf.GGUFWriter(tmp, arch_name)
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(alpha))
        if name:
            writer.add_name(name)
        for tensor_name, data in tensors:
            writer.add_tensor(tensor_name, np.ascontiguousarray(data))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return path
