"""One training config schema: YAML in/out, `--set` overrides, validation with field-named errors.

The dataclass below IS the schema: each field carries its default, help text, section, aliases and
allowed values in `metadata`, and its annotation string is its type. YAML loading, overrides,
validation, `to_yaml()`, `config_fields()` (UI form) and `docs/config.md` are all driven from it,
so adding a field means adding one line here.

Flat lora-scripts / kohya keys are canonical; nested `data:/model:/training:/output:/network:/
sample:/llm:` sections are flattened. `python -m lora_trainer.config --markdown [PATH]` writes
the reference (default `docs/config.md`).
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import os
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lora_trainer.errors import ConfigError

SECTIONS = ("task", "model", "data", "network", "training", "output", "sample", "llm")
# other names users give the nested sections
SECTION_ALIASES = {"dataset": "data", "train": "training", "optimizer_config": "training", "saving": "output",
                   "lora": "network", "samples": "sample", "sampling": "sample"}
BUILTIN_PREFIX = "builtin:"
MODEL_EXTENSIONS = (".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".gguf")


def _f(section: str, default: Any, help: str, *, aliases: tuple[str, ...] = (),
       choices: tuple[Any, ...] | None = None, min: float | None = None, max: float | None = None,
       gt: float | None = None, path: str | None = None) -> Any:
    """A schema entry. `path`: "dir" | "file" | "any" | "model" | "new" | "resume" (how it resolves and
    how existence is checked)."""
    meta = {"section": section, "help": help, "aliases": aliases, "choices": choices,
            "min": min, "max": max, "gt": gt, "path": path}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class TrainConfig:
    """A whole training run. Build with `load_config`; direct construction skips validation."""

    # task
    task_type: str = _f("task", "text-to-image", "What to train: an image LoRA (SD1/SD2/SDXL) or an LLM LoRA via PEFT.",
                        aliases=("task",), choices=("text-to-image", "text-generation"))
    # model
    base_model: str | None = _f("model", None, "Base model: a .safetensors/.ckpt file, a diffusers folder, a HuggingFace "
                                "id already in the cache, or `builtin:tiny-sd1` / `builtin:tiny-sdxl`. Empty inside "
                                "the WebUI = the loaded checkpoint.",
                                aliases=("pretrained_model_name_or_path", "pretrained_model", "model", "ckpt",
                                         "model_name_or_path"), path="model")
    model_type: str = _f("model", "auto", "Architecture of the base model; `auto` detects it from the weights.",
                         aliases=("model_arch", "arch"), choices=("auto", "sd1", "sd2", "sdxl"))
    v_parameterization: bool | None = _f("model", None, "Train with v-prediction (SD2-768 models). Empty = detect.")
    tokenizer_path: str | None = _f("model", None, "Tokenizer folder when it is not next to the model (mostly LLMs).",
                                    aliases=("tokenizer",), path="model")
    vae_path: str | None = _f("model", None, "A separate VAE file or folder to encode images with.",
                              aliases=("vae",), path="model")
    clip_skip: int = _f("model", 1, "Use the output of the N-th last text-encoder layer (2 for anime models).",
                        min=1, max=12)
    model_cache_dir: str | None = _f("model", None, "Where downloaded / converted models are cached.",
                                     aliases=("cache_dir",), path="new")
    # data
    train_data_dir: str | None = _f("data", None, "Dataset folder: images with captions, `N_name/` subfolders (N repeats), "
                                    "or, for text-generation, a `.jsonl` file or a folder of .jsonl files.",
                                    aliases=("data_dir", "dataset_dir", "image_dir", "dataset"), path="any")
    metadata_path: str | None = _f("data", None, "A `metadata.csv` (`filename,prompt`) giving captions. Empty = use "
                                   "`metadata.csv` in train_data_dir if there is one.",
                                   aliases=("metadata", "metadata_file", "metadata_csv"), path="file")
    resolution: int | tuple[int, int] = _f("data", 512, "Training size: one number (square) or `W,H`; the bucket area "
                                           "limit. Multiple of 64.", aliases=("reso", "size"))
    enable_bucket: bool = _f("data", True, "Group images into aspect-ratio buckets instead of square crops.",
                             aliases=("bucket", "enable_buckets"))
    min_bucket_reso: int = _f("data", 256, "Smallest bucket side in pixels.", min=64, max=4096)
    max_bucket_reso: int = _f("data", 1024, "Largest bucket side in pixels.", min=64, max=8192)
    bucket_reso_steps: int = _f("data", 64, "Bucket sides are multiples of this (multiple of 8; 64 is safest).",
                                min=8, max=512)
    random_crop: bool = _f("data", False, "Crop randomly instead of centred (needs cache_latents: false).")
    caption_extension: str = _f("data", ".txt", "Caption file extension next to each image (`.caption` is tried too).",
                                aliases=("caption_extention", "caption_ext"))
    shuffle_caption: bool = _f("data", False, "Shuffle comma-separated tags each time an image is seen.")
    keep_tokens: int = _f("data", 0, "Keep the first N tags in place when shuffling (e.g. 1 = trigger word).", min=0)
    caption_dropout_rate: float = _f("data", 0.0, "Probability of training an image with an empty caption.",
                                     min=0, max=1)
    flip_aug: bool = _f("data", False, "Randomly mirror images left-right (not for asymmetric subjects or text).",
                        aliases=("flip", "hflip"))
    num_repeats: int = _f("data", 1, "Repeats for folders without an `N_` prefix (and metadata.csv images).",
                          aliases=("repeats", "dataset_repeats"), min=1)
    trigger_word: str = _f("data", "", "Prepended to every caption that lacks it; saved as the LoRA's activation text.",
                           aliases=("trigger", "trigger_words", "activation_text", "instance_token"))
    cache_latents: bool = _f("data", True, "Encode each image with the VAE once and reuse the latents.")
    cache_latents_to_disk: bool = _f("data", False, "Keep cached latents in files so later runs reuse them.")
    cache_text_encoder_outputs: bool = _f("data", False, "Encode each caption once (needs train_text_encoder: false and "
                                          "shuffle_caption: false).")
    max_token_length: int = _f("data", 75, "Caption tokens per image: 75, or 150/225 to use several 77-token chunks.",
                               choices=(75, 150, 225))
    # network
    lora_rank: int = _f("network", 8, "LoRA rank (dim): capacity and file size. 8-32 for styles/characters.",
                        aliases=("network_dim", "rank", "r", "dim"), min=1, max=1024)
    lora_alpha: float = _f("network", 8.0, "Scale = alpha / rank. Use rank (or rank/2).",
                           aliases=("network_alpha", "alpha"), gt=0)
    lora_dropout: float = _f("network", 0.0, "Dropout on the LoRA path while training.",
                             aliases=("network_dropout", "dropout"), min=0, max=0.99)
    conv_dim: int = _f("network", 0, "Rank for 3x3 convolutions (LoCon); 0 = off.", aliases=("conv_rank",), min=0,
                       max=1024)
    conv_alpha: float | None = _f("network", None, "Alpha for conv layers; empty = conv_dim.", gt=0)
    train_unet: bool = _f("network", True, "Train LoRA on the UNet.")
    train_text_encoder: bool = _f("network", True, "Train LoRA on the text encoder(s).")
    network_weights: str | None = _f("network", None, "Start from an existing LoRA file (continue training); "
                                     "for text-generation a PEFT adapter folder or its adapter_model.safetensors.",
                                     aliases=("init_weights", "lora_weights"), path="any")
    # training
    batch_size: int = _f("training", 1, "Images per step (per GPU).", aliases=("train_batch_size",), min=1, max=1024)
    epochs: int = _f("training", 10, "Passes over the dataset (with repeats).",
                     aliases=("max_train_epochs", "num_train_epochs", "num_epochs", "epoch"), min=1)
    max_train_steps: int | None = _f("training", None, "Stop after this many optimizer steps (overrides epochs).",
                                     aliases=("max_steps", "train_steps"), min=1)
    learning_rate: float = _f("training", 1e-4, "Base learning rate (used where unet_lr / text_encoder_lr are empty).",
                              aliases=("lr",), gt=0, max=10)
    unet_lr: float | None = _f("training", None, "UNet learning rate; empty = learning_rate.", gt=0, max=10)
    text_encoder_lr: float | None = _f("training", None, "Text-encoder learning rate; empty = learning_rate.",
                                       aliases=("te_lr",), gt=0, max=10)
    optimizer: str = _f("training", "adamw", "Optimizer (adamw8bit needs bitsandbytes and a GPU).",
                        aliases=("optimizer_type", "optim"), choices=("adamw", "adamw8bit", "lion", "prodigy", "sgd"))
    optimizer_args: dict[str, Any] = _f("training", {}, "Extra optimizer keyword arguments, e.g. `{betas: [0.9, 0.99]}` "
                                        "or kohya's list of `key=value` strings.")
    weight_decay: float = _f("training", 0.01, "AdamW weight decay.", min=0, max=1)
    lr_scheduler: str = _f("training", "constant", "Learning-rate schedule.",
                           choices=("constant", "constant_with_warmup", "cosine", "linear"))
    lr_warmup_steps: int = _f("training", 0, "Steps of linear warm-up.", min=0)
    gradient_accumulation_steps: int = _f("training", 1, "Batches per optimizer step (bigger effective batch).",
                                          aliases=("grad_accum", "gradient_accumulation"), min=1, max=1024)
    max_grad_norm: float = _f("training", 1.0, "Clip gradients to this norm; 0 = off.", min=0)
    gradient_checkpointing: bool = _f("training", False, "Recompute activations: less memory, ~20% slower.")
    mixed_precision: str = _f("training", "no", "Compute precision (fp16 / bf16 need a GPU).",
                              aliases=("precision",), choices=("no", "fp16", "bf16"))
    attention: str = _f("training", "sdpa", "Attention kernel: torch scaled-dot-product (sdpa) or the model default.",
                        aliases=("attention_mode",), choices=("sdpa", "default"))
    seed: int = _f("training", 42, "Random seed: same seed, same data order, same result.", min=0)
    noise_offset: float = _f("training", 0.0, "Noise offset (0.05-0.1 helps very dark/bright images).", min=0, max=1)
    min_snr_gamma: float | None = _f("training", None, "Min-SNR loss weighting gamma (5 is common); empty = off.", gt=0)
    device: str = _f("training", "auto", "`auto`, `cpu`, `cuda`, `cuda:1`, `mps`.")
    num_workers: int = _f("training", 0, "Data-loading worker processes.",
                          aliases=("max_data_loader_n_workers", "dataloader_num_workers"), min=0, max=64)
    # output
    output_dir: str | None = _f("output", None, "Folder for the LoRA file, saves, state and logs.", path="new")
    output_name: str | None = _f("output", None, "File name of the LoRA (no extension); empty = output_dir's name.",
                                 aliases=("name",))
    save_precision: str = _f("output", "fp16", "Dtype of the saved LoRA weights.", choices=("fp16", "bf16", "fp32"))
    save_steps: int = _f("output", 0, "Also save every N steps as `<name>-<step>.safetensors`; 0 = off.",
                         aliases=("save_every_n_steps",), min=0)
    save_every_n_epochs: int = _f("output", 0, "Also save every N epochs; 0 = off.", min=0)
    save_last_n: int | None = _f("output", None, "Keep only the newest N intermediate saves; empty = keep all.",
                                 aliases=("save_last_n_saves",), min=1)
    save_state: bool = _f("output", True, "Write resumable training state with each save.")
    resume_from_checkpoint: str | None = _f("output", None, "State folder to resume from, or `latest` (the newest "
                                            "state in output_dir).", aliases=("resume",), path="resume")
    logging_dir: str | None = _f("output", None, "TensorBoard logs; empty = output_dir/logs.", path="new")
    preferred_weight: float = _f("output", 0.8, "Suggested weight written to the `.json` sidecar.", min=-10, max=10)
    description: str = _f("output", "", "Description written to the `.json` sidecar.")
    # sample
    sample_prompts: list[str] | str | None = _f("sample", None, "Prompts for sample images: a list, or a .txt file "
                                                "with one prompt per line.", aliases=("prompts",))
    sample_every_n_steps: int = _f("sample", 0, "Make samples every N steps; 0 = off.", min=0)
    sample_every_n_epochs: int = _f("sample", 0, "Make samples every N epochs; 0 = off.", min=0)
    sample_steps: int = _f("sample", 20, "Denoising steps per sample.", min=1, max=200)
    sample_seed: int = _f("sample", 42, "Seed for sample images.", min=0)
    sample_width: int | None = _f("sample", None, "Sample width; empty = resolution.", min=64, max=4096)
    sample_height: int | None = _f("sample", None, "Sample height; empty = resolution.", min=64, max=4096)
    sample_guidance: float = _f("sample", 7.0, "Classifier-free guidance scale for samples.",
                                aliases=("sample_cfg_scale", "guidance_scale"), min=0, max=50)
    # llm
    max_seq_length: int = _f("llm", 512, "Tokens per training sequence.", aliases=("max_length", "cutoff_len"),
                             min=1, max=1_000_000)
    target_modules: list[str] | None = _f("llm", None, "Module names to adapt; empty = the architecture's default.",
                                          aliases=("lora_target_modules", "lora_target"))
    packing: bool = _f("llm", False, "Pack several short texts into one sequence.")
    load_in_4bit: bool = _f("llm", False, "Load the base in 4 bit (QLoRA; needs bitsandbytes + GPU).")
    load_in_8bit: bool = _f("llm", False, "Load the base in 8 bit (needs bitsandbytes + GPU).")
    merge_output: bool = _f("llm", False, "Also write the base with the LoRA merged in.")
    gguf_output: bool = _f("llm", False, "Also write the LoRA as a GGUF adapter for llama.cpp (`--lora`); needs the "
                           "gguf package.")
    chat_template: str | None = _f("llm", None, "Chat template name or Jinja text for chat-style data.")
    trust_remote_code: bool = _f("llm", False, "Allow the base model folder's own Python code (needed by ChatGLM and "
                                 "other custom architectures); only for models you trust.")

    # not part of the schema: where the config came from and notes made while loading
    source_path: str | None = field(default=None, repr=False, compare=False, metadata={"internal": True})
    notes: list[str] = field(default_factory=list, repr=False, compare=False, metadata={"internal": True})
    spelled: dict[str, str] = field(default_factory=dict, repr=False, compare=False, metadata={"internal": True})

    # ---- derived values -------------------------------------------------------------------------
    @property
    def resolution_wh(self) -> tuple[int, int]:
        """(width, height) of the training resolution."""
        if isinstance(self.resolution, int):
            return self.resolution, self.resolution
        return int(self.resolution[0]), int(self.resolution[1])

    @property
    def effective_unet_lr(self) -> float:
        return self.unet_lr if self.unet_lr is not None else self.learning_rate

    @property
    def effective_text_encoder_lr(self) -> float:
        return self.text_encoder_lr if self.text_encoder_lr is not None else self.learning_rate

    @property
    def effective_conv_alpha(self) -> float:
        return self.conv_alpha if self.conv_alpha is not None else float(self.conv_dim)

    @property
    def effective_output_name(self) -> str:
        if self.output_name:
            return self.output_name
        return Path(self.output_dir).name if self.output_dir else "lora"

    @property
    def effective_logging_dir(self) -> str | None:
        if self.logging_dir:
            return self.logging_dir
        return os.path.join(self.output_dir, "logs") if self.output_dir else None

    def sample_prompt_list(self) -> list[str]:
        """Prompts as a list, reading a prompt file (one per line, `#` comments) when one is given."""
        if not self.sample_prompts:
            return []
        if isinstance(self.sample_prompts, list):
            return [p for p in self.sample_prompts if p.strip()]
        text = self.sample_prompts
        if os.path.isfile(text):
            with open(text, encoding="utf-8-sig") as fh:
                return [ln.strip() for ln in fh if ln.strip() and not ln.lstrip().startswith("#")]
        return [text]

    # ---- io -------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Canonical flat key → value (JSON/YAML-safe: tuples become "W,H")."""
        out: dict[str, Any] = {}
        for f in _schema_fields():
            out[f.name] = _plain(getattr(self, f.name))
        return out

    def to_yaml(self, only_changed: bool = False) -> str:
        """Flat YAML grouped by section; `load_config` of the text gives an equal config."""
        import yaml

        lines: list[str] = []
        data = self.to_dict()
        for section in SECTIONS:
            block = {f.name: data[f.name] for f in _schema_fields() if f.metadata["section"] == section
                     and not (only_changed and data[f.name] == _plain(_default_of(f)))}
            if not block:
                continue
            lines.append(f"# --- {section}")
            lines.append(yaml.safe_dump(block, sort_keys=False, allow_unicode=True, default_flow_style=False).rstrip())
        return "\n".join(lines) + "\n"

    def save_yaml(self, path: str | os.PathLike[str], only_changed: bool = False) -> None:
        """Write `to_yaml()` atomically."""
        from lora_trainer.atomic import atomic_write_text

        atomic_write_text(path, self.to_yaml(only_changed))

    def validate(self, *, check_paths: bool = True, require: Iterable[str] = ("train_data_dir", "base_model")) -> None:
        """Raise ConfigError for the first problem (see `validate_config`)."""
        validate_config(self, check_paths=check_paths, require=require)


# ------------------------------------------------------------------------------------------------
# schema access


@dataclass(frozen=True)
class FieldInfo:
    """One config key as docs and the UI form see it."""

    name: str
    type: str
    default: Any
    help: str
    section: str
    aliases: tuple[str, ...] = ()
    choices: tuple[Any, ...] | None = None
    min: float | None = None
    max: float | None = None
    gt: float | None = None
    path: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["default"] = _plain(self.default)
        return d


def _schema_fields() -> list[dataclasses.Field[Any]]:
    return [f for f in dataclasses.fields(TrainConfig) if not f.metadata.get("internal")]


def _default_of(f: dataclasses.Field[Any]) -> Any:
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return f.default


def config_fields() -> list[FieldInfo]:
    """Every key in schema order, for docs and the UI form."""
    return [FieldInfo(f.name, str(f.type), _default_of(f), f.metadata["help"], f.metadata["section"],
                      f.metadata["aliases"], f.metadata["choices"], f.metadata["min"], f.metadata["max"],
                      f.metadata["gt"], f.metadata["path"]) for f in _schema_fields()]


_FIELDS = {f.name: f for f in _schema_fields()}
_ALIASES = {a: f.name for f in _schema_fields() for a in f.metadata["aliases"]}


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    return copy.deepcopy(value)


# ------------------------------------------------------------------------------------------------
# kohya / lora-scripts keys that are not plain renames


def _kohya_flag(target: str, value_if_true: Any) -> Any:
    def apply(raw: Any, out: dict[str, Any], key: str) -> None:
        if _coerce_bool(raw, key):
            out[target] = value_if_true
    return apply


def _model_train_type(raw: Any, out: dict[str, Any], key: str) -> None:
    text = str(raw).lower()
    arch = "sdxl" if "sdxl" in text else "sd2" if "sd2" in text else "sd1" if "sd" in text else None
    if arch is None:
        raise ConfigError(key, f"unknown model_train_type {raw!r}; use model_type: sd1 | sd2 | sdxl")
    out["model_type"] = arch


def _must_equal(expected: tuple[str, ...], hint: str) -> Any:
    def apply(raw: Any, out: dict[str, Any], key: str) -> None:  # noqa: ARG001
        if str(raw).lower() not in expected:
            raise ConfigError(key, f"{raw!r} is not supported; {hint}")
    return apply


def _must_be_empty(hint: str) -> Any:
    def apply(raw: Any, out: dict[str, Any], key: str) -> None:  # noqa: ARG001
        if raw not in (None, "", [], {}):
            raise ConfigError(key, hint)
    return apply


def _network_args(raw: Any, out: dict[str, Any], key: str) -> None:
    """kohya `network_args = ["conv_dim=4", "conv_alpha=1"]`: the LoCon ranks map to fields."""
    known = {"conv_dim": "conv_dim", "conv_rank": "conv_dim", "conv_alpha": "conv_alpha", "dropout": "lora_dropout"}
    for name, value in _coerce_dict(raw, key).items():
        if name not in known:
            raise ConfigError(f"{key}.{name}", f"unsupported network argument; supported: {', '.join(known)}")
        out[known[name]] = _coerce(known[name], value, f"{key}.{name}")


def _ignored(raw: Any, out: dict[str, Any], key: str) -> None:  # noqa: ARG001
    out.setdefault("__notes__", []).append(f"'{key}' is a kohya option this trainer does not need; ignored")


SPECIAL_KEYS = {
    "network_train_unet_only": _kohya_flag("train_text_encoder", False),
    "network_train_text_encoder_only": _kohya_flag("train_unet", False),
    "v2": _kohya_flag("model_type", "sd2"),
    "sdxl": _kohya_flag("model_type", "sdxl"),
    "xformers": _kohya_flag("attention", "sdpa"),
    "sdpa": _kohya_flag("attention", "sdpa"),
    "model_train_type": _model_train_type,
    "network_args": _network_args,
    "save_model_as": _must_equal(("safetensors",), "LoRA files are always written as safetensors"),
    "network_module": _must_equal(("networks.lora", "lora"), "only kohya LoRA (networks.lora) is trained"),
    "reg_data_dir": _must_be_empty("regularization images are not supported yet; remove reg_data_dir"),
    "log_with": _ignored, "log_prefix": _ignored, "persistent_data_loader_workers": _ignored,
    "lowram": _ignored, "mem_eff_attn": _ignored, "prior_loss_weight": _ignored, "full_fp16": _ignored,
    "full_bf16": _ignored, "max_token_length_auto": _ignored, "lr_scheduler_num_cycles": _ignored,
    "caption_separator": _ignored, "bucket_no_upscale": _ignored,
}


# ------------------------------------------------------------------------------------------------
# typed parsing


_TRUE = {"true", "yes", "on", "1", "y"}
_FALSE = {"false", "no", "off", "0", "n"}


def _coerce_bool(value: Any, key: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ConfigError(key, f"expected true or false, got {value!r}")


def _coerce_int(value: Any, key: str) -> int:
    if isinstance(value, bool):
        raise ConfigError(key, f"expected a whole number, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            number = float(value.strip().replace("_", ""))
        except ValueError:
            number = None
        if number is not None and number.is_integer():
            return int(number)
    raise ConfigError(key, f"expected a whole number, got {value!r}")


def _coerce_float(value: Any, key: str) -> float:
    if isinstance(value, bool):
        raise ConfigError(key, f"expected a number, got {value!r}")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:  # YAML 1.1 reads "2e-4" as a string; accept it as the number users meant
            return float(value.strip().replace("_", ""))
        except ValueError:
            pass
    raise ConfigError(key, f"expected a number, got {value!r}")


def _coerce_str(value: Any, key: str) -> str:
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, bool):  # YAML 1.1 reads yes/no/on/off as booleans
        raise ConfigError(key, f"expected text, got {value!r}; put the text in quotes, e.g. \"yes\"")
    raise ConfigError(key, f"expected text, got {value!r}")


def _coerce_resolution(value: Any, key: str) -> int | tuple[int, int]:
    parts: list[Any]
    if isinstance(value, (list, tuple)):
        parts = list(value)
    elif isinstance(value, str):
        parts = [p for p in re.split(r"[,x× ]+", value.strip()) if p]
    else:
        parts = [value]
    if len(parts) not in (1, 2):
        raise ConfigError(key, f"expected one size or 'W,H', got {value!r}")
    nums = [_coerce_int(p, key) for p in parts]
    if len(nums) == 1 or nums[0] == nums[1]:
        return nums[0]
    return nums[0], nums[1]


def _coerce_str_list(value: Any, key: str) -> list[str]:
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, (list, tuple)):
        return [_coerce_str(v, key) for v in value]
    raise ConfigError(key, f"expected a list of names, got {value!r}")


def _coerce_prompts(value: Any, key: str) -> list[str] | str:
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)):
        return [_coerce_str(v, key) for v in value]
    raise ConfigError(key, f"expected a list of prompts or a prompt file, got {value!r}")


def _coerce_dict(value: Any, key: str) -> dict[str, Any]:
    if isinstance(value, dict):
        return {str(k): v for k, v in value.items()}
    if isinstance(value, str):
        value = [v for v in re.split(r"[\s;]+", value) if v]
    if isinstance(value, (list, tuple)):  # kohya: ["weight_decay=0.1", "betas=0.9,0.99"]
        import yaml

        out: dict[str, Any] = {}
        for item in value:
            if not isinstance(item, str) or "=" not in item:
                raise ConfigError(key, f"expected key=value, got {item!r}")
            k, v = item.split("=", 1)
            parsed = yaml.safe_load(v) if v.strip() else ""
            if isinstance(parsed, str) and "," in parsed:
                parsed = [yaml.safe_load(x) for x in parsed.split(",")]
            out[k.strip()] = parsed
        return out
    raise ConfigError(key, f"expected a mapping, got {value!r}")


_COERCERS = {
    "bool": _coerce_bool, "int": _coerce_int, "float": _coerce_float, "str": _coerce_str,
    "int | tuple[int, int]": _coerce_resolution, "list[str]": _coerce_str_list,
    "list[str] | str": _coerce_prompts, "dict[str, Any]": _coerce_dict,
}


def _coerce(name: str, value: Any, key: str) -> Any:
    """Parse `value` for field `name`; `key` is how the user spelled it (for the error)."""
    type_ = str(_FIELDS[name].type)
    nullable = type_.endswith(" | None")
    base = type_[: -len(" | None")] if nullable else type_
    if value is None or (nullable and isinstance(value, str) and value.strip().lower() in ("", "none", "null")):
        if nullable:
            return None
        if base == "str":
            return ""
        raise ConfigError(key, "a value is required here")
    out = _COERCERS[base](value, key)
    if name == "caption_extension" and out and not out.startswith("."):
        out = "." + out
    if name in ("optimizer", "lr_scheduler", "mixed_precision", "model_type", "task_type", "save_precision"):
        out = out.strip().lower()
        if name == "optimizer":
            out = {"adamw_8bit": "adamw8bit", "adam8bit": "adamw8bit", "adamw8": "adamw8bit"}.get(out, out)
        if name == "mixed_precision":
            out = {"fp32": "no", "none": "no", "float32": "no"}.get(out, out)
    return out


# ------------------------------------------------------------------------------------------------
# loading


def _suggest(key: str) -> str:
    names = list(_FIELDS) + list(_ALIASES) + list(SPECIAL_KEYS)
    close = difflib.get_close_matches(key, names, n=2, cutoff=0.6)
    canonical = []
    for c in close:
        c = _ALIASES.get(c, c)
        if c not in canonical:
            canonical.append(c)
    return f"; did you mean {' or '.join(repr(c) for c in canonical)}?" if canonical else \
        "; see docs/config.md for the keys"


def _flatten(raw: Mapping[str, Any], prefix: str = "") -> list[tuple[str, str, Any]]:
    """(dotted key as written, key, value) for every leaf; section dicts are unpacked."""
    out: list[tuple[str, str, Any]] = []
    for key, value in raw.items():
        key = str(key)
        dotted = f"{prefix}{key}"
        section = SECTION_ALIASES.get(key, key)
        if section in SECTIONS and isinstance(value, Mapping):
            out.extend(_flatten(value, f"{dotted}."))
        else:
            out.append((dotted, key, value))
    return out


def _resolve_path(value: str, base_dir: str, kind: str) -> str:
    if kind == "resume" and value.strip().lower() == "latest":
        return "latest"
    if kind == "model" and (value.startswith(BUILTIN_PREFIX) or _looks_like_hub_id(value, base_dir)):
        return value
    expanded = os.path.expanduser(value)
    if not os.path.isabs(expanded):
        expanded = os.path.join(base_dir, expanded)
    return os.path.normpath(expanded)


def _looks_like_hub_id(value: str, base_dir: str) -> bool:
    """`org/name` that is not an existing relative path and has no model-file extension."""
    if not re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", value) or value.lower().endswith(MODEL_EXTENSIONS):
        return False
    return not os.path.exists(os.path.join(base_dir, value))


def _apply(values: dict[str, Any], raw: Mapping[str, Any], base_dir: str, seen: dict[str, str]) -> list[str]:
    notes: list[str] = []
    here: dict[str, str] = {}
    for dotted, key, value in _flatten(raw):
        if key in SPECIAL_KEYS:
            extra: dict[str, Any] = {}
            SPECIAL_KEYS[key](value, extra, dotted)
            notes.extend(extra.pop("__notes__", []))
            values.update(extra)
            continue
        name = key if key in _FIELDS else _ALIASES.get(key)
        if name is None:
            raise ConfigError(dotted, f"unknown key{_suggest(key)}")
        parsed = _coerce(name, value, dotted)
        if name in here and values.get(name) != parsed:
            notes.append(f"'{here[name]}' and '{dotted}' both set {name}; using '{dotted}'")
        here[name] = seen[name] = dotted
        path_kind = _FIELDS[name].metadata["path"]
        if path_kind and isinstance(parsed, str) and parsed:
            parsed = _resolve_path(parsed, base_dir, path_kind)
        if name == "sample_prompts" and isinstance(parsed, str) and parsed.lower().endswith(".txt"):
            parsed = _resolve_path(parsed, base_dir, "file")
        values[name] = parsed
    return notes


def parse_override(text: str) -> dict[str, Any]:
    """`key=value` (key may be dotted or an alias) → {key: value}; the value is read as YAML so
    lists and numbers work (`sample_prompts=[a cat, a dog]`), text fields keep the raw text."""
    import yaml

    if "=" not in text:
        raise ConfigError(text.strip() or "--set", "an override must look like key=value")
    key, value = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError("--set", f"no key in {text!r}")
    name = _FIELDS.get(key.split(".")[-1]) or _FIELDS.get(_ALIASES.get(key.split(".")[-1], ""))
    if name is not None and str(name.type) in ("str", "str | None") and value.strip().lower() not in ("null", "none"):
        parsed: Any = value
    else:
        try:
            parsed = yaml.safe_load(value) if value.strip() else ""
        except yaml.YAMLError:
            parsed = value
    node: dict[str, Any] = {}
    cur = node
    parts = key.split(".")
    for p in parts[:-1]:
        cur = cur.setdefault(p, {})
    cur[parts[-1]] = parsed
    return node


def _read_file(path: str) -> Any:
    """YAML (also JSON) or, for lora-scripts users, TOML (Python 3.11+ stdlib tomllib)."""
    import yaml

    try:
        with open(path, "rb") as fh:
            data = fh.read().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError("config", f"{path} is not UTF-8 text") from exc
    if path.lower().endswith(".toml"):
        try:
            import tomllib
        except ImportError:  # Python 3.10 (A1111): no TOML reader in the stdlib
            raise ConfigError("config", f"{path}: TOML needs Python 3.11+; save the config as YAML") from None
        try:
            return tomllib.loads(data)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError("config", f"{path} is not valid TOML: {exc}") from exc
    try:
        return yaml.safe_load(data)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError("config", f"{path}{where} is not valid YAML: {getattr(exc, 'problem', exc)}") from exc


def load_config(source: str | os.PathLike[str] | Mapping[str, Any] | TrainConfig | None = None,
                overrides: Iterable[str] = (), *, base_dir: str | None = None, check_paths: bool = True,
                require: Iterable[str] = ("train_data_dir", "base_model")) -> TrainConfig:
    """Read a YAML/TOML file (or a dict, or a TrainConfig), apply `--set key=value` overrides, validate.

    Relative paths in a file resolve against the file's folder; in a dict against `base_dir`
    (default: cwd); in overrides against cwd. `check_paths=False` skips existence and `require`
    checks (UI editing, templates). Raises ConfigError naming the field.
    """
    raw: Mapping[str, Any] = {}
    source_path = None
    file_dir = os.path.abspath(base_dir or os.getcwd())
    if isinstance(source, TrainConfig):
        source_path = source.source_path
        raw = {k: v for k, v in source.to_dict().items() if k in source.spelled or v != _plain(_default_of(_FIELDS[k]))}
    elif isinstance(source, Mapping):
        raw = source
    elif source is not None:
        source_path = os.path.abspath(os.fspath(source))
        if not os.path.isfile(source_path):
            raise ConfigError("config", f"file not found: {source_path}")
        loaded = _read_file(source_path)
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, Mapping):
            raise ConfigError("config", f"{source_path} must be a mapping of key: value")
        raw = loaded
        file_dir = os.path.dirname(source_path)

    values: dict[str, Any] = {}
    seen: dict[str, str] = {}
    notes = _apply(values, raw, file_dir, seen)
    for text in overrides:
        notes += _apply(values, parse_override(text), os.getcwd(), seen)
    cfg = TrainConfig(**values)
    cfg.source_path = source_path
    cfg.notes = notes
    cfg.spelled = seen
    validate_config(cfg, check_paths=check_paths, require=require)
    return cfg


# ------------------------------------------------------------------------------------------------
# validation


def _err(cfg: TrainConfig, name: str, message: str) -> ConfigError:
    """ConfigError under the key as the user spelled it (alias, dotted section), else the canonical name."""
    return ConfigError(cfg.spelled.get(name, name), message)


def _check_ranges(cfg: TrainConfig) -> None:
    for f in _schema_fields():
        value = getattr(cfg, f.name)
        meta = f.metadata
        if value is None:
            continue
        if meta["choices"] is not None and value not in meta["choices"]:
            options = ", ".join(str(c) for c in meta["choices"])
            close = difflib.get_close_matches(str(value), [str(c) for c in meta["choices"]], n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise _err(cfg, f.name, f"{value!r} is not one of: {options}{hint}")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if meta["gt"] is not None and not value > meta["gt"]:
            raise _err(cfg, f.name, f"must be greater than {meta['gt']:g}, got {value:g}")
        if meta["min"] is not None and value < meta["min"]:
            raise _err(cfg, f.name, f"must be at least {meta['min']:g}, got {value:g}")
        if meta["max"] is not None and value > meta["max"]:
            raise _err(cfg, f.name, f"must be at most {meta['max']:g}, got {value:g}")


def _check_resolution(cfg: TrainConfig) -> None:
    # Sides must be multiples of 64: the SD1/SD2 UNet halves the 1/8-size latent three times, so
    # 64 keeps every skip connection exact, and every standard SD/SDXL size satisfies it. Buckets
    # are finer-grained only where the user asks (bucket_reso_steps, multiple of 8 = one latent pixel).
    for side in cfg.resolution_wh:
        if side < 64 or side % 64:
            raise _err(cfg, "resolution", f"{side} is not a multiple of 64 (use e.g. 512, 768, 1024 or '832,1216')")
    if cfg.bucket_reso_steps % 8:
        raise _err(cfg, "bucket_reso_steps", f"{cfg.bucket_reso_steps} is not a multiple of 8 (latents are 1/8 size)")
    if not cfg.enable_bucket:
        return
    step = cfg.bucket_reso_steps
    for name in ("min_bucket_reso", "max_bucket_reso"):
        if getattr(cfg, name) % step:
            raise _err(cfg, name, f"{getattr(cfg, name)} is not a multiple of bucket_reso_steps ({step})")
    if cfg.min_bucket_reso > cfg.max_bucket_reso:
        raise _err(cfg, "min_bucket_reso", f"{cfg.min_bucket_reso} is larger than max_bucket_reso "
                          f"({cfg.max_bucket_reso})")
    w, h = cfg.resolution_wh
    if min(w, h) < cfg.min_bucket_reso:
        raise _err(cfg, "min_bucket_reso", f"{cfg.min_bucket_reso} is larger than the resolution side {min(w, h)}")
    if max(w, h) > cfg.max_bucket_reso:
        raise _err(cfg, "max_bucket_reso", f"{cfg.max_bucket_reso} is smaller than the resolution side {max(w, h)}")


def _check_combinations(cfg: TrainConfig) -> None:
    if cfg.task_type == "text-to-image" and not (cfg.train_unet or cfg.train_text_encoder):
        raise _err(cfg, "train_unet", "both train_unet and train_text_encoder are false: nothing to train")
    if cfg.cache_text_encoder_outputs and cfg.train_text_encoder:
        raise _err(cfg, "cache_text_encoder_outputs", "cannot cache text-encoder outputs while training the text "
                          "encoder; set train_text_encoder: false")
    if cfg.cache_text_encoder_outputs and (cfg.shuffle_caption or cfg.caption_dropout_rate > 0):
        raise _err(cfg, "cache_text_encoder_outputs", "cached outputs would freeze shuffled/dropped captions; set "
                          "shuffle_caption: false and caption_dropout_rate: 0, or cache_text_encoder_outputs: false")
    if cfg.random_crop and cfg.cache_latents:
        raise _err(cfg, "random_crop", "a random crop changes each epoch and cannot be cached; set cache_latents: "
                          "false or random_crop: false")
    if cfg.cache_latents_to_disk and not cfg.cache_latents:
        raise _err(cfg, "cache_latents_to_disk", "needs cache_latents: true")
    if cfg.keep_tokens and not cfg.shuffle_caption:
        cfg.notes.append("keep_tokens only matters with shuffle_caption: true")
    if cfg.load_in_4bit and cfg.load_in_8bit:
        raise _err(cfg, "load_in_4bit", "choose one of load_in_4bit and load_in_8bit")
    if cfg.max_train_steps is not None and cfg.lr_warmup_steps > cfg.max_train_steps:
        raise _err(cfg, "lr_warmup_steps", f"{cfg.lr_warmup_steps} warm-up steps exceed max_train_steps "
                          f"({cfg.max_train_steps})")
    if cfg.output_name and re.search(r'[\\/:*?"<>|]', cfg.output_name):
        raise _err(cfg, "output_name", f"{cfg.output_name!r} contains characters not allowed in file names")
    if not cfg.caption_extension or cfg.caption_extension in (".", ".png", ".jpg", ".jpeg", ".webp", ".bmp"):
        raise _err(cfg, "caption_extension", f"{cfg.caption_extension!r} cannot be a caption file extension")


def _check_paths(cfg: TrainConfig, require: Iterable[str]) -> None:
    for name in require:
        if not getattr(cfg, name):
            raise _err(cfg, name, "is required; set it in the config or with --set "
                              f"{name}=...")
    for f in _schema_fields():
        kind = f.metadata["path"]
        value = getattr(cfg, f.name)
        if not kind or not value or kind == "new":
            continue
        if kind == "model" and (value.startswith(BUILTIN_PREFIX) or not os.path.isabs(value)):
            continue  # builtin:… or a hub id (left relative by _resolve_path)
        if kind == "resume" and value == "latest":
            continue
        if kind == "dir" and not os.path.isdir(value):
            raise _err(cfg, f.name, f"folder not found: {value}")
        if kind == "file" and not os.path.isfile(value):
            raise _err(cfg, f.name, f"file not found: {value}")
        if kind in ("any", "model", "resume") and not os.path.exists(value):
            raise _err(cfg, f.name, f"path not found: {value}")
    if cfg.task_type == "text-to-image" and cfg.train_data_dir and not os.path.isdir(cfg.train_data_dir):
        raise _err(cfg, "train_data_dir", f"must be a folder of images: {cfg.train_data_dir}")
    if cfg.output_dir and os.path.isfile(cfg.output_dir):
        raise _err(cfg, "output_dir", f"is a file, not a folder: {cfg.output_dir}")


def _fit_bucket_defaults(cfg: TrainConfig) -> None:
    """Bucket limits the user did not set follow the resolution (a 64 px test run or a 1536 px
    SDXL run must not fail on defaults); limits the user set are checked as written."""
    step = cfg.bucket_reso_steps
    if step <= 0 or not cfg.enable_bucket:
        return
    w, h = cfg.resolution_wh
    if "min_bucket_reso" not in cfg.spelled and cfg.min_bucket_reso > min(w, h):
        cfg.min_bucket_reso = max(step, min(w, h) // step * step)
    if "max_bucket_reso" not in cfg.spelled and cfg.max_bucket_reso < max(w, h):
        cfg.max_bucket_reso = -(-max(w, h) // step) * step


def validate_config(cfg: TrainConfig, *, check_paths: bool = True,
                    require: Iterable[str] = ("train_data_dir", "base_model")) -> None:
    """Fail fast, before any data or model loads, with the field that is wrong."""
    _check_ranges(cfg)
    _fit_bucket_defaults(cfg)
    _check_resolution(cfg)
    _check_combinations(cfg)
    if check_paths:
        _check_paths(cfg, require)


# ------------------------------------------------------------------------------------------------
# docs


def markdown_reference() -> str:
    """docs/config.md, generated from the schema."""
    lines = ["# Config reference", "",
             "Generated by `python -m lora_trainer.config --markdown` from `lora_trainer/config.py`; do not edit.",
             "",
             "A config is YAML. Keys are flat (as below) or grouped under `data:`, `model:`, `training:`, `output:`, "
             "`network:`, `sample:`, `llm:` sections. kohya / lora-scripts names in *aliases* are accepted. Relative "
             "paths resolve against the config file's folder. Override any key on the command line with "
             "`--set key=value` (e.g. `--set training.learning_rate=5e-5`).",
             "",
             "Checks made before anything loads: unknown keys (with a suggestion), types, ranges, allowed values, "
             "that paths exist (`builtin:` models and `org/name` hub ids excepted), that `resolution` sides are "
             "multiples of 64 (the SD UNet halves the 1/8-size latent three times), that bucket sizes are "
             "multiples of `bucket_reso_steps` (itself a multiple of 8) and bracket the resolution, and option "
             "combinations that cannot work together.", ""]
    for section in SECTIONS:
        lines += [f"## {section}", "", "| key | type | default | meaning | aliases / allowed |", "|---|---|---|---|---|"]
        for info in config_fields():
            if info.section != section:
                continue
            default = _plain(info.default)
            default_text = "empty" if default in (None, "", [], {}) else f"`{default}`"
            extra = []
            if info.choices:
                extra.append("one of " + ", ".join(f"`{c}`" for c in info.choices))
            bounds = []
            if info.gt is not None:
                bounds.append(f"> {info.gt:g}")
            if info.min is not None:
                bounds.append(f"≥ {info.min:g}")
            if info.max is not None:
                bounds.append(f"≤ {info.max:g}")
            if bounds:
                extra.append(" and ".join(bounds))
            if info.aliases:
                extra.append("aliases " + ", ".join(f"`{a}`" for a in info.aliases))
            type_text = info.type.replace("|", "or")
            lines.append(f"| `{info.name}` | {type_text} | {default_text} | {info.help} | {'; '.join(extra)} |")
        lines.append("")
    lines += ["## kohya keys with special handling", "",
              "`network_train_unet_only: true` → `train_text_encoder: false`; `network_train_text_encoder_only: "
              "true` → `train_unet: false`; `v2: true` → `model_type: sd2`; `sdxl: true` → `model_type: sdxl`; "
              "`model_train_type` (lora-scripts) → `model_type`; `xformers`/`sdpa: true` → `attention: sdpa`; "
              "`save_model_as` must be `safetensors`; `network_module` must be `networks.lora`; `reg_data_dir` "
              "is refused (not supported yet); ignored with a note: "
              + ", ".join(f"`{k}`" for k, v in SPECIAL_KEYS.items() if v is _ignored) + ".", ""]
    return "\n".join(lines)


def _main(argv: list[str]) -> int:
    if not argv or argv[0] != "--markdown":
        print("usage: python -m lora_trainer.config --markdown [PATH]", file=sys.stderr)
        return 2
    target = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parents[1] / "docs" / "config.md"
    from lora_trainer.atomic import atomic_write_text

    atomic_write_text(target, markdown_reference())
    print(target)
    return 0


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
