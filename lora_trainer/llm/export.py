"""Writing results: the PEFT adapter folder, and optionally a merged full model.

Folders are written into a temp folder and renamed into place (lora_trainer.atomic.atomic_dir),
so a crash never leaves a half adapter that a later `PeftModel.from_pretrained` would half-load.
"""

from __future__ import annotations

import copy
import os
from typing import Any

from lora_trainer.atomic import atomic_dir

SAVE_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def adapter_state(model: Any, precision: str = "fp32") -> dict[str, Any]:
    """The adapter tensors under PEFT's file keys (`...q_proj.lora_A.weight`), cast for saving."""
    import torch
    from peft import get_peft_model_state_dict

    dtype = getattr(torch, SAVE_DTYPES.get(precision, "float32"))
    state = get_peft_model_state_dict(model)
    return {k: v.detach().to("cpu", dtype).contiguous() for k, v in state.items()}


def save_adapter(model: Any, tokenizer: Any, path: str, precision: str = "fp32",
                 metadata: dict[str, str] | None = None) -> str:
    """`adapter_model.safetensors` + `adapter_config.json` (+ tokenizer files) that PeftModel loads."""
    from safetensors.torch import save_file

    state = adapter_state(model, precision)
    config = copy.deepcopy(model.peft_config["default"])
    config.inference_mode = True

    def write(tmp: str) -> None:
        save_file(state, os.path.join(tmp, "adapter_model.safetensors"),
                  metadata={"format": "pt", **(metadata or {})})
        config.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)  # keeps the chat template used in training with the adapter

    atomic_dir(path, write)
    return path


def save_merged(model: Any, tokenizer: Any, path: str, precision: str = "fp16") -> str:
    """The base with the LoRA folded into its weights, as a plain Transformers folder.

    Call last: merging changes the in-memory model. A quantised base cannot be merged in place, so
    that case reloads the base in float and applies the saved adapter (see `merge_from_files`)."""
    import torch

    merged = model.merge_and_unload()
    merged = merged.to(getattr(torch, SAVE_DTYPES.get(precision, "float16")))
    _write_model(merged, tokenizer, path)
    return path


def merge_from_files(base: str, adapter_dir: str, path: str, precision: str = "fp16", **load_kwargs: Any) -> str:
    """Load base + saved adapter on the CPU in float, merge, write (for quantised training runs)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lora_trainer.llm.model import hf_quiet

    dtype = getattr(torch, SAVE_DTYPES.get(precision, "float16"))
    with hf_quiet():
        model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype, local_files_only=True, **load_kwargs)
    model = PeftModel.from_pretrained(model, adapter_dir)
    tokenizer = AutoTokenizer.from_pretrained(adapter_dir, local_files_only=True)
    _write_model(model.merge_and_unload(), tokenizer, path)
    return path


def _write_model(model: Any, tokenizer: Any, path: str) -> None:
    from lora_trainer.llm.model import hf_quiet

    def write(tmp: str) -> None:
        with hf_quiet():
            model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)

    atomic_dir(path, write)
