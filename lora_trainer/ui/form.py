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
NAME_RE = re.compile(r"^[\w\-. ]{1,100}$")


@dataclass
class FormField:
    info: FieldInfo
    component: Any
    kind: str  # "bool" | "choice" | "int" | "float" | "text" | "yaml"


def _kind(info: FieldInfo) -> str:
    t = info.type.replace(" ", "")
    if info.choices:
        return "choice"
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


def _display(value: Any, kind: str) -> Any:
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


def build_fields(gr: Any, make: Any, names: list[str], hidden: tuple[str, ...] = (),
                 values: dict[str, Any] | None = None) -> list[FormField]:
    """Create components for `names` (in the current layout context); `values` overrides defaults."""
    infos = {f.name: f for f in config_fields()}
    out = []
    for name in names:
        info = infos[name]
        kind = _kind(info)
        label = name.replace("_", " ")
        value = _display((values or {}).get(name, info.default), kind)
        common = {"label": label, "elem_id": f"lt_{name}", "visible": name not in hidden}
        if kind == "bool":
            comp = make(gr.Checkbox, value=value, info=info.help, **common)
        elif kind == "choice":
            comp = make(gr.Dropdown, choices=[str(c) for c in info.choices], value=str(value), info=info.help,
                        **common)
        elif kind in ("int", "float"):
            comp = make(gr.Number, value=value, info=info.help, precision=0 if kind == "int" else None, **common)
        elif kind in ("opt_int", "opt_float"):
            comp = make(gr.Textbox, value=value, info=info.help, placeholder="empty = not set", lines=1, **common)
        else:
            lines = 3 if kind == "yaml" or name == "sample_prompts" else 1
            comp = make(gr.Textbox, value=value, info=info.help, lines=lines, **common)
        out.append(FormField(info, comp, kind))
    return out


def all_field_names() -> tuple[list[str], list[str]]:
    """(basic, advanced) field names for the image-LoRA form."""
    names = [f.name for f in config_fields() if f.name not in HOST_FIELDS and f.section != "llm"]
    basic = [n for n in BASIC if n in names]
    return basic, [n for n in names if n not in basic]


def _parse(value: Any, kind: str, name: str) -> Any:
    if kind == "bool":
        return bool(value)
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
        if name == "sample_prompts":
            return [line.strip() for line in text.splitlines() if line.strip()]
        parsed = yaml.safe_load(text)
        return parsed
    return text


def values_to_dict(fields: list[FormField], values: list[Any]) -> dict[str, Any]:
    """Form values -> config mapping, leaving out keys still at their default."""
    out: dict[str, Any] = {}
    for field, value in zip(fields, values, strict=False):
        parsed = _parse(value, field.kind, field.info.name)
        default = field.info.default
        if parsed is None and default in (None, "", [], {}):
            continue
        if parsed == default or (parsed is None and field.kind in ("int", "float")):
            continue
        out[field.info.name] = parsed
    return out


def dict_to_updates(fields: list[FormField], data: dict[str, Any], update: Any) -> list[Any]:
    """Updates that show `data` (a loaded YAML) in the form; keys not given go back to defaults."""
    return [update(value=_display(data.get(f.info.name, f.info.default), f.kind)) for f in fields]


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
    return {k: v for k, v in cfg.__dict__.items() if k in defaults and v != defaults[k]}


def check_output_name(name: str | None) -> str:
    from lora_trainer.errors import ConfigError

    name = (name or "").strip()
    if not name:
        raise ConfigError("output_name", "give the LoRA a name (it becomes <lora:name:0.8>)")
    if not NAME_RE.match(name) or name.startswith(".") or os.sep in name:
        raise ConfigError("output_name", f"'{name}' is not a usable file name: use letters, digits, - _ . and spaces")
    return name
