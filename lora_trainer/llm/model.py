"""Base model, tokenizer and LoRA wrapping for causal language models (PEFT + Transformers).

Everything is loaded offline (`local_files_only`): a Transformers folder, or a hub id already in the
local cache. Quantised llama.cpp files are refused up front with what to use instead.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lora_trainer.errors import ConfigError, ModelLoadError

if TYPE_CHECKING:
    from lora_trainer.config import TrainConfig

GGUF_MAGIC = b"GGUF"
GGML_MAGICS = (b"lmgg", b"fmgg", b"tjgg", b"ggml", b"ggmf", b"ggjt")  # legacy llama.cpp containers

ATTENTION = ["q_proj", "k_proj", "v_proj", "o_proj"]
LLAMA_MLP = ["gate_proj", "up_proj", "down_proj"]
# HF `config.model_type` -> (attention targets, MLP targets) for the families this tool documents.
DEFAULT_TARGETS: dict[str, tuple[list[str], list[str]]] = {
    **{t: (ATTENTION, LLAMA_MLP) for t in (
        "llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "gemma", "gemma2",
        "gemma3_text", "phi3", "olmo", "olmo2", "granite", "internlm2", "deepseek_v2", "yi", "baichuan",
        "starcoder2", "cohere")},
    "chatglm": (["query_key_value"], ["dense_h_to_4h", "dense_4h_to_h"]),
    "glm": (["query_key_value"], ["dense_h_to_4h", "dense_4h_to_h"]),
    "gpt2": (["c_attn"], ["c_fc", "c_proj"]),
    "gpt_neox": (["query_key_value"], ["dense_h_to_4h", "dense_4h_to_h"]),
    "falcon": (["query_key_value"], ["dense_h_to_4h", "dense_4h_to_h"]),
    "phi": (["q_proj", "k_proj", "v_proj", "dense"], ["fc1", "fc2"]),
}


@contextlib.contextmanager
def hf_quiet() -> Iterator[None]:
    """Silence Transformers' own progress bars and deprecation chatter: our events report progress."""
    from transformers.utils import logging as hf_logging

    was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        if was_on:
            hf_logging.enable_progress_bar()


def _looks_quantised_file(path: Path) -> bool:
    if path.suffix.lower() in (".gguf", ".ggml"):
        return True
    try:
        with path.open("rb") as fh:
            head = fh.read(4)
    except OSError:
        return False
    return head == GGUF_MAGIC or head in GGML_MAGICS


def check_base_model(base_model: str | None) -> str:
    """Refuse what cannot be trained (GGUF/GGML files, single checkpoints) before anything loads."""
    if not base_model:
        raise ConfigError("base_model", "is empty; give a Transformers model folder (with config.json) "
                          "or a hub id already in the local Hugging Face cache")
    p = Path(base_model).expanduser()
    quantised = [p] if p.is_file() and _looks_quantised_file(p) else []
    if p.is_dir() and not (p / "config.json").is_file():
        quantised = sorted(p.glob("*.gguf"))
        if not quantised and (p / "adapter_config.json").is_file():
            raise ConfigError("base_model", f"{p} is a LoRA adapter folder, not a base model; set base_model to "
                              "the model it was trained on and network_weights to this folder")
    if quantised:
        raise ConfigError("base_model", f"{quantised[0]} is a GGUF/GGML file (llama.cpp's quantised format); "
                          "it cannot be trained. Use the original Transformers model it was converted from "
                          "(a folder with config.json + *.safetensors, or its hub id). After training, "
                          "`gguf_output: true` writes a GGUF LoRA that llama.cpp loads on top of your GGUF "
                          "with --lora.")
    if p.is_file():
        raise ConfigError("base_model", f"{p} is a single file; text-generation needs a Transformers model "
                          "folder (config.json, tokenizer files, *.safetensors) or a hub id")
    if p.is_dir():
        return str(p)
    if base_model.count("/") == 1 and not base_model.startswith((".", "/", "~")):
        return base_model  # a hub id: resolved from the local cache only
    raise ConfigError("base_model", f"{base_model} does not exist; give a Transformers model folder or a hub "
                      "id (e.g. Qwen/Qwen2.5-0.5B) that is already downloaded to the Hugging Face cache")


def _load_hint(name: str, exc: Exception, incomplete: str) -> str:
    """What to do about a failed offline load: remote code, missing cache entry, or a broken folder."""
    if "trust_remote_code" in str(exc):
        return "this model ships its own Python code; set trust_remote_code: true if you trust it"
    if not Path(name).exists():
        return (f"it is not in the local Hugging Face cache; download it first (e.g. `hf download {name}`) "
                "or give a model folder")
    return incomplete


def load_tokenizer(cfg: TrainConfig, source: str) -> Any:
    """The tokenizer (from `tokenizer_path` when set); gets a pad token if it has none."""
    from transformers import AutoTokenizer

    name = cfg.tokenizer_path or source
    try:
        tok = AutoTokenizer.from_pretrained(name, local_files_only=True, cache_dir=cfg.model_cache_dir,
                                            trust_remote_code=cfg.trust_remote_code)
    except (OSError, ValueError) as exc:
        hint = _load_hint(name, exc, "the folder needs tokenizer.json or tokenizer.model + tokenizer_config.json")
        raise ModelLoadError(f"tokenizer for {name} could not be loaded offline: {hint} ({exc})") from exc
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def quantization_config(cfg: TrainConfig, compute_dtype: Any) -> Any:
    """BitsAndBytesConfig for QLoRA, or None. Needs bitsandbytes and a CUDA GPU."""
    four, eight = cfg.load_in_4bit, cfg.load_in_8bit
    if not (four or eight):
        return None
    field = "load_in_4bit" if four else "load_in_8bit"
    if four and eight:
        raise ConfigError("load_in_4bit", "set only one of load_in_4bit and load_in_8bit")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as exc:
        raise ConfigError(field, "needs the bitsandbytes package (pip install bitsandbytes) and a CUDA GPU; "
                          "turn it off to train on a float base") from exc
    import torch
    from transformers import BitsAndBytesConfig

    if not torch.cuda.is_available():
        raise ConfigError(field, "4-/8-bit (QLoRA) bases need a CUDA GPU; turn it off on this machine")
    if four:
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=compute_dtype)
    return BitsAndBytesConfig(load_in_8bit=True)


def load_base_model(cfg: TrainConfig, source: str, dtype: Any, device: Any) -> Any:
    """The causal LM on `device` in `dtype` (or quantised), frozen, with caching off for training."""
    from transformers import AutoModelForCausalLM

    quant = quantization_config(cfg, dtype)
    kwargs: dict[str, Any] = {"local_files_only": True, "cache_dir": cfg.model_cache_dir,
                              "dtype": dtype, "trust_remote_code": cfg.trust_remote_code}
    if quant is not None:
        kwargs["quantization_config"] = quant
        kwargs["device_map"] = {"": device}
    try:
        with hf_quiet():
            model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as exc:
        hint = _load_hint(source, exc, "the folder is incomplete (config.json + *.safetensors needed)")
        raise ModelLoadError(f"base_model {source} could not be loaded: {hint} ({exc})") from exc
    if quant is None:
        model.to(device)
    model.requires_grad_(False)
    model.config.use_cache = False
    if quant is not None:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def _linear_leaf_names(model: Any) -> set[str]:
    import torch

    names = set()
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) or type(module).__name__ in ("Linear4bit", "Linear8bitLt",
                                                                             "Conv1D"):
            names.add(name.rsplit(".", 1)[-1])
    names.discard("lm_head")
    return names


def resolve_target_modules(value: Any, model: Any) -> list[str] | str:
    """Target module names from the config (list, comma string, "attention", "attention+mlp", "all-linear")."""
    model_type = str(getattr(model.config, "model_type", ""))
    attention, mlp = DEFAULT_TARGETS.get(model_type, ([], []))
    if isinstance(value, (list, tuple)) and len(value) == 1:
        value = str(value[0])  # the config loader turns a lone keyword into a one-item list
    if isinstance(value, str):
        value = value.strip()
        if value == "all-linear":
            return "all-linear"
        if value in ("", "attention", "attention+mlp"):
            wanted = attention + (mlp if value == "attention+mlp" else [])
        else:
            wanted = [v.strip() for v in value.split(",") if v.strip()]
    elif value:
        wanted = [str(v) for v in value]
    else:
        wanted = list(attention)
    available = _linear_leaf_names(model)
    if not wanted:
        raise ConfigError("target_modules", f"no default for model type '{model_type}'; list its layers, e.g. "
                          f"target_modules: [{', '.join(sorted(available)[:4])}] (or all-linear)")
    missing = [w for w in wanted if w not in available]
    if missing:
        raise ConfigError("target_modules", f"{', '.join(missing)} not found in this {model_type or 'model'}; "
                          f"its linear layers are: {', '.join(sorted(available))}")
    return wanted


def wrap_lora(model: Any, cfg: TrainConfig) -> Any:
    """PEFT LoRA around the frozen base, with the config's rank, alpha, dropout and targets."""
    from peft import LoraConfig, get_peft_model

    targets = resolve_target_modules(cfg.target_modules, model)
    lora = LoraConfig(r=cfg.lora_rank, lora_alpha=float(cfg.lora_alpha), lora_dropout=float(cfg.lora_dropout),
                      target_modules=targets, bias="none", task_type="CAUSAL_LM")
    with hf_quiet():
        return get_peft_model(model, lora)
