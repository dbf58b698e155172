"""The training form: every config key as a component, and the conversions form <-> config.

Built from `config.config_fields()`, so a new config key shows up in the UI by itself. No training
logic: `values_to_config` only turns what the user typed into a validated `TrainConfig`.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

import yaml

from lora_trainer.config import FieldInfo, config_fields, load_config

# shown outside the "Advanced" accordion, in this order
BASIC = ("output_name", "trigger_word", "train_data_dir", "base_model", "resolution", "lora_rank",
         "lora_alpha", "epochs", "batch_size", "learning_rate", "save_every_n_epochs", "sample_prompts")
# decided by the host, not the user
HOST_FIELDS = ("output_dir", "logging_dir", "task_type")
# meaningless inside the WebUI, which trains the checkpoint it has loaded: its files, and (Forge, FLUX.1 /
# Chroma) the base's storage and block swap, which Forge's own "Diffusion in Low Bits" and GPU-weights
# settings decide
WEBUI_HIDDEN = ("base_model", "model_type", "tokenizer_path", "vae_path", "model_cache_dir", "device",
                "clip_l_path", "t5xxl_path", "fp8_base", "blocks_to_swap")
NAME_RE = re.compile(r"^[\w\-. ]{1,100}$")
# an optional yes/no: "not set" is a third answer (e.g. v-prediction: detect from the model)
AUTO, YES, NO = "auto", "yes", "no"
TRI_STATE = {AUTO: None, YES: True, NO: False}
SECTION_TITLES = {"model": "Model", "data": "Dataset and captions", "network": "Network (LoRA shape)",
                  "training": "Training", "output": "Saving and resuming", "sample": "Sample images",
                  "task": "Task", "llm": "Language models"}
# human labels; a key not listed gets its name in words
LABELS = {
    "output_name": "LoRA name", "trigger_word": "Trigger word", "train_data_dir": "Dataset folder",
    "base_model": "Base model", "resolution": "Resolution (px)", "lora_rank": "Rank (dim)",
    "lora_alpha": "Alpha", "epochs": "Epochs", "batch_size": "Batch size", "learning_rate": "Learning rate",
    "save_every_n_epochs": "Save a copy every N epochs (0 = only at the end)",
    "sample_prompts": "Sample prompts (one per line)", "model_type": "Architecture",
    "v_parameterization": "V-prediction", "tokenizer_path": "Tokenizer folder", "vae_path": "Separate VAE",
    "clip_skip": "CLIP skip", "model_cache_dir": "Model cache folder", "metadata_path": "Captions CSV (metadata.csv)",
    "enable_bucket": "Aspect-ratio buckets", "min_bucket_reso": "Smallest bucket side",
    "max_bucket_reso": "Largest bucket side", "bucket_reso_steps": "Bucket side step",
    "caption_extension": "Caption file extension", "caption_dropout_rate": "Caption dropout rate",
    "flip_aug": "Mirror images (flip)", "num_repeats": "Repeats per image",
    "cache_latents": "Cache latents", "cache_latents_to_disk": "Cache latents on disk",
    "cache_text_encoder_outputs": "Cache text-encoder outputs",
    "cache_text_encoder_outputs_to_disk": "Cache text-encoder outputs on disk", "max_token_length": "Caption tokens",
    "lora_dropout": "LoRA dropout", "conv_dim": "Conv rank (LoCon)", "conv_alpha": "Conv alpha",
    "train_unet": "Train the UNet", "train_text_encoder": "Train the text encoder",
    "network_weights": "Start from a LoRA file", "max_train_steps": "Stop after N steps",
    "unet_lr": "UNet learning rate", "text_encoder_lr": "Text-encoder learning rate",
    "optimizer_args": "Optimizer arguments", "lr_scheduler": "LR schedule", "lr_warmup_steps": "Warm-up steps",
    "gradient_accumulation_steps": "Gradient accumulation steps", "max_grad_norm": "Clip gradient norm",
    "gradient_checkpointing": "Gradient checkpointing", "mixed_precision": "Mixed precision",
    "min_snr_gamma": "Min-SNR gamma", "num_workers": "Data-loading workers",
    "save_precision": "Saved weights dtype", "save_steps": "Save a copy every N steps",
    "save_last_n": "Keep the newest N copies", "save_state": "Save resumable state",
    "resume_from_checkpoint": "Resume from state", "preferred_weight": "Preferred weight",
    "sample_every_n_steps": "Sample every N steps", "sample_every_n_epochs": "Sample every N epochs",
    "sample_steps": "Sample denoising steps", "sample_seed": "Sample seed", "sample_width": "Sample width",
    "sample_height": "Sample height", "sample_guidance": "Sample guidance (CFG)",
    # FLUX.1 / Chroma
    "clip_l_path": "CLIP-L file (FLUX.1)", "t5xxl_path": "T5-XXL file (FLUX.1 / Chroma)",
    "t5_max_token_length": "T5 caption tokens", "fp8_base": "Store the base in fp8",
    "blocks_to_swap": "Blocks kept in CPU memory (block swap)", "flux_layers": "FLUX.1 layers to train",
    "flux_double_blocks": "Double blocks to train", "flux_single_blocks": "Single blocks to train",
    "lora_layout": "File layout (kohya / PEFT)", "timestep_sampling": "Timestep sampling",
    "discrete_flow_shift": "Flow shift", "sigmoid_scale": "Sigmoid scale",
    "guidance_scale_train": "Guidance input while training (FLUX.1-dev)",
    # data
    "random_crop": "Random crop", "shuffle_caption": "Shuffle caption tags",
    "keep_tokens": "Keep the first N tags in place", "masked_loss": "Masked loss (mask images)",
    "alpha_mask": "Use the image's alpha as the loss mask", "validation_split": "Validation share of the dataset",
    "validation_data_dir": "Validation folder", "validation_every_n_steps": "Validation loss every N steps",
    "reg_data_dir": "Regularisation folder", "prior_loss_weight": "Regularisation loss weight",
    # network
    "network_type": "Network type (LoRA / LoCon / LoHa / LoKr / DoRA)", "lokr_factor": "LoKr factor",
    "lokr_full_rank": "LoKr full rank", "dora_wd": "DoRA weight decomposition",
    "network_include": "Only modules matching", "network_exclude": "Skip modules matching",
    "network_blocks": "Blocks to train", "block_dims": "Rank per block", "block_alphas": "Alpha per block",
    "conv_block_dims": "Conv rank per block", "conv_block_alphas": "Conv alpha per block",
    "block_lr_weight": "Learning-rate weight per block",
    # training
    "optimizer": "Optimizer", "weight_decay": "Weight decay", "attention": "Attention kernel",
    "seed": "Seed", "noise_offset": "Noise offset", "ema_decay": "EMA decay (0 = off)",
    "ema_on_cpu": "Keep the EMA copy in CPU memory", "device": "Device", "save_ema": "Save the EMA weights",
    "description": "Description (saved in the file)",
    # language models
    "max_seq_length": "Longest sequence (tokens)", "target_modules": "Target modules",
    "packing": "Pack short samples together", "load_in_4bit": "Load the base in 4 bits (QLoRA)",
    "load_in_8bit": "Load the base in 8 bits", "merge_output": "Also save a merged model",
    "gguf_output": "Also save as GGUF", "chat_template": "Chat template",
    "trust_remote_code": "Run the model's own code (trust_remote_code)",
}
# the three answers of an optional yes/no, in words (per field where the generic ones say too little)
TRI_STATE_WORDS = {"v_parameterization": ("detect from the model", "yes (v-prediction)", "no (epsilon)")}


@dataclass
class FormField:
    info: FieldInfo
    component: Any
    kind: str  # "bool" | "opt_bool" | "choice" | "int" | "float" | "opt_int" | "opt_float" | "text" | "yaml"


def label_of(name: str) -> str:
    return LABELS.get(name) or name.replace("_", " ").capitalize()


def help_of(info: FieldInfo) -> str:
    """The schema's help as the form shows it: plain text (the `code` marks are for the docs)."""
    return re.sub(r"`([^`]*)`", r"\1", info.help)


def tri_state_choices(name: str) -> list[str]:
    """The three answers of an optional yes/no, as shown (auto first)."""
    words = TRI_STATE_WORDS.get(name, ("auto", "yes", "no"))
    return [f"{AUTO}: {words[0]}" if words[0] != AUTO else AUTO,
            words[1] if words[1].startswith(YES) else f"{YES}: {words[1]}",
            words[2] if words[2].startswith(NO) else f"{NO}: {words[2]}"]


def _tri_state_value(text: Any) -> bool | None:
    """A shown answer ("yes (v-prediction)", "auto: detect ...", True, None) -> True/False/None."""
    if text is None or isinstance(text, bool):
        return text
    word = re.split(r"[\s:(]", str(text).strip().lower(), maxsplit=1)[0]
    if word not in TRI_STATE:
        from lora_trainer.errors import ConfigError
        raise ConfigError("form", f"'{text}' is not one of auto / yes / no")
    return TRI_STATE[word]


def _kind(info: FieldInfo) -> str:
    t = info.type.replace(" ", "")
    if info.choices:
        return "choice"
    if t == "bool|None":
        return "opt_bool"
    if t.startswith("bool"):
        return "bool"
    # optional numbers are text boxes: a gr.Number can not be empty (browsers send 0 for None),
    # and 0 is wrong for every optional number here (max_train_steps, unet_lr, conv_alpha, ...)
    if t in ("int|None", "float|None"):
        return "opt_int" if t.startswith("int") else "opt_float"
    if t == "int":
        return "int"
    if t == "float":
        return "float"
    if t.startswith("list") or t.startswith("dict"):
        return "yaml"
    return "text"


def _display(value: Any, kind: str, name: str = "") -> Any:
    if kind == "opt_bool":
        wanted = _tri_state_value(value)
        return next(c for c, v in zip(tri_state_choices(name), TRI_STATE.values(), strict=True) if v is wanted)
    if kind == "yaml":
        if value in (None, "", [], {}):
            return ""
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return "\n".join(value)
        if isinstance(value, (list, dict)):
            return yaml.safe_dump(value, default_flow_style=True).strip()
        return str(value)
    if kind == "bool":
        return bool(value)
    if kind in ("int", "float"):
        return value
    return "" if value is None else str(value)


def display(field: FormField, value: Any) -> Any:
    """`value` (a config value) as `field`'s component shows it."""
    return _display(value, field.kind, field.info.name)


def build_fields(gr: Any, make: Any, names: list[str], hidden: tuple[str, ...] = (),
                 values: dict[str, Any] | None = None, lists: dict[str, list[str]] | None = None) -> list[FormField]:
    """Create components for `names` (in the current layout context); `values` overrides defaults;
    `lists` offers choices for path keys (a dropdown that still takes a typed value)."""
    infos = {f.name: f for f in config_fields()}
    out = []
    for name in names:
        info = infos[name]
        kind = _kind(info)
        value = _display((values or {}).get(name, info.default), kind, name)
        common = {"label": label_of(name), "elem_id": f"lt_{name}", "visible": name not in hidden,
                  "info": help_of(info)}
        if kind == "bool":
            comp = make(gr.Checkbox, value=value, **common)
        elif kind == "opt_bool":
            comp = make(gr.Radio, choices=tri_state_choices(name), value=value, **common)
        elif kind == "choice":
            comp = make(gr.Dropdown, choices=[str(c) for c in info.choices], value=str(value), **common)
        elif kind in ("int", "float"):
            comp = make(gr.Number, value=value, precision=0 if kind == "int" else None, **common)
        elif kind in ("opt_int", "opt_float"):
            comp = make(gr.Textbox, value=value, placeholder="empty = not set", lines=1, **common)
        elif kind == "text" and (lists or {}).get(name):
            options = list((lists or {})[name])
            comp = make(gr.Dropdown, choices=options, value=value or None, allow_custom_value=True, **common)
        else:
            lines = 3 if kind == "yaml" or name == "sample_prompts" else 1
            comp = make(gr.Textbox, value=value, lines=lines, **common)
        out.append(FormField(info, comp, kind))
    return out


def advanced_sections(names: list[str]) -> list[tuple[str, list[str]]]:
    """Advanced field names grouped by config section, in schema order: [(title, names)]."""
    infos = {f.name: f for f in config_fields()}
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(infos[name].section, []).append(name)
    return [(SECTION_TITLES.get(sec, sec.capitalize()), group) for sec, group in groups.items()]


def all_field_names() -> tuple[list[str], list[str]]:
    """(basic, advanced) field names for the image-LoRA form."""
    names = [f.name for f in config_fields() if f.name not in HOST_FIELDS and f.section != "llm"]
    basic = [n for n in BASIC if n in names]
    return basic, [n for n in names if n not in basic]


def _is_name_list(name: str) -> bool:
    """A list-of-names key (flux_layers, network_include, ...): typed one per line, not as YAML."""
    info = next((f for f in config_fields() if f.name == name), None)
    return info is not None and info.type.replace(" ", "") in ("list[str]", "list[str]|None")


def _parse(value: Any, kind: str, name: str) -> Any:
    if kind == "bool":
        return bool(value)
    if kind == "opt_bool":
        return _tri_state_value(value if value not in ("", None) else None)
    if kind == "choice":  # back to the schema's own value (max_token_length 75, not "75")
        info = next(f for f in config_fields() if f.name == name)
        return next((c for c in info.choices or () if str(c) == str(value)), value)
    if kind in ("int", "float"):
        if value is None or value == "":
            return None
        return int(value) if kind == "int" and float(value).is_integer() else value
    if kind in ("opt_int", "opt_float"):
        text = "" if value is None else str(value).strip()
        if not text:
            return None
        try:
            number = float(text)
        except ValueError:
            return text  # load_config names the field and says what it expects
        return int(number) if kind == "opt_int" and number.is_integer() else number
    text = "" if value is None else str(value).strip()
    if not text:
        return None
    if kind == "yaml":
        if name == "sample_prompts":  # one prompt per line (prompts hold commas)
            return [line.strip() for line in text.splitlines() if line.strip()]
        if _is_name_list(name) and not text.startswith(("[", "- ")):  # shown one per line by `_display`
            return [item.strip() for line in text.splitlines() for item in line.split(",") if item.strip()]
        parsed = yaml.safe_load(text)
        return parsed
    return text


def values_to_dict(fields: list[FormField], values: list[Any]) -> dict[str, Any]:
    """Form values -> config mapping, leaving out keys still at their default (an optional yes/no or
    number left at "not set" is never sent: `false`/`0` would switch off detection or defaults)."""
    out: dict[str, Any] = {}
    for field, value in zip(fields, values, strict=False):
        parsed = _parse(value, field.kind, field.info.name)
        default = field.info.default
        if parsed is None and default in (None, "", [], {}):
            continue
        if parsed == default or (parsed is None and field.kind in ("int", "float")):
            continue
        if field.kind == "text" and default is not None and str(parsed) == str(default):
            continue  # resolution "512" typed as text
        out[field.info.name] = parsed
    return out


def dict_to_updates(fields: list[FormField], data: dict[str, Any], update: Any) -> list[Any]:
    """Updates that show `data` (a loaded YAML) in the form; keys not given go back to defaults."""
    return [update(value=display(f, data.get(f.info.name, f.info.default))) for f in fields]


def form_to_yaml(fields: list[FormField], values: list[Any]) -> str:
    return yaml.safe_dump(values_to_dict(fields, values), sort_keys=False, allow_unicode=True)


def yaml_to_dict(text: str) -> dict[str, Any]:
    """A YAML config as flat canonical keys (nested sections and aliases accepted)."""
    from lora_trainer.errors import ConfigError

    try:
        raw = yaml.safe_load(text or "") or {}
    except yaml.YAMLError as exc:
        raise ConfigError("config", f"not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError("config", "must be a mapping of key: value")
    cfg = load_config(raw, check_paths=False, require=())
    defaults = {f.name: f.default for f in config_fields()}
    values = {name: getattr(cfg, name) for name in defaults}
    return {k: v for k, v in values.items() if v != defaults[k]}


def check_output_name(name: str | None) -> str:
    from lora_trainer.errors import ConfigError

    name = (name or "").strip()
    if not name:
        raise ConfigError("output_name", "give the LoRA a name (it becomes <lora:name:0.8>)")
    if not NAME_RE.match(name) or name.startswith(".") or os.sep in name:
        raise ConfigError("output_name", f"'{name}' is not a usable file name: use letters, digits, - _ . and spaces")
    return name
