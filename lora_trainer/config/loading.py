"""Reading a config: YAML/TOML/dict → flat canonical keys → typed values → a `TrainConfig`.

Flat lora-scripts / kohya keys are canonical; nested `data:/model:/training:/output:/network:/
sample:/llm:` sections are flattened; aliases and the kohya keys that are not plain renames
(`SPECIAL_KEYS`) map onto schema fields. Everything a run needs is settled here (bucket limits
that follow the resolution, notes), so the returned config is never changed afterwards.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Iterable, Mapping
from typing import Any

from lora_trainer.config.schema import (
    ALIASES,
    BUILTIN_PREFIX,
    FIELDS,
    MODEL_EXTENSIONS,
    SECTION_ALIASES,
    SECTIONS,
    TrainConfig,
    default_of,
    plain,
)
from lora_trainer.config.validation import validate_config
from lora_trainer.errors import ConfigError

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


_NETWORK_ARGS = {"conv_dim": "conv_dim", "conv_rank": "conv_dim", "conv_alpha": "conv_alpha", "dropout": "lora_dropout",
                 "algo": "network_type", "factor": "lokr_factor", "full_matrix": "lokr_full_rank", "dora_wd": "dora_wd",
                 "block_dims": "block_dims", "block_alphas": "block_alphas", "conv_block_dims": "conv_block_dims",
                 "conv_block_alphas": "conv_block_alphas", "block_lr_weight": "block_lr_weight"}
_LR_PARTS = (("down_lr_weight", 12), ("mid_lr_weight", 1), ("up_lr_weight", 12))


def _network_args(raw: Any, out: dict[str, Any], key: str) -> None:
    """kohya / LyCORIS `network_args = ["conv_dim=4", "algo=loha", "block_dims=2,4,..."]` → fields.

    `algo=lora|locon` with `dora_wd=True` is DoRA; kohya's down/mid/up_lr_weight (12 + 1 + 12 values)
    become the 25 `block_lr_weight`s; Tucker (`use_tucker`) is refused, `wd_on_output` noted."""
    args = _coerce_dict(raw, key)
    lr_parts: dict[str, list[float]] = {}
    for name, value in args.items():
        where = f"{key}.{name}"
        if name in ("use_tucker", "use_cp", "use_conv_cp"):
            if _coerce_bool(value, where):
                raise ConfigError(where, "Tucker-decomposed convs are not supported; remove it or set it to false")
            continue
        if name == "wd_on_output":
            out.setdefault("__notes__", []).append(
                f"'{where}' ignored: the DoRA magnitude is kept per input channel (what A1111 1.10 reads)")
            continue
        if name in dict(_LR_PARTS):
            lr_parts[name] = _coerce_float_list(value, where)
            continue
        if name not in _NETWORK_ARGS:
            raise ConfigError(where, f"unsupported network argument; supported: {', '.join(_NETWORK_ARGS)}, "
                                     f"{', '.join(n for n, _ in _LR_PARTS)}, use_tucker=false, wd_on_output")
        field = _NETWORK_ARGS[name]
        value = _coerce(field, value, where)
        if field == "network_type" and value not in FIELDS["network_type"].metadata["choices"]:
            raise ConfigError(where, f"LyCORIS algo {value!r} is not trained here; use lora, locon, loha, lokr or dora")
        out[field] = value
    if out.get("dora_wd") and out.get("network_type") in ("lora", "locon"):
        out["network_type"], out["dora_wd"] = "dora", False
    if lr_parts:
        weights: list[float] = []
        for name, count in _LR_PARTS:
            part = lr_parts.get(name, [1.0] * count)
            if len(part) != count:
                raise ConfigError(f"{key}.{name}", f"has {len(part)} values; kohya's layout needs {count}")
            weights += part
        out["block_lr_weight"] = weights


LYCORIS_CONV = "__lycoris_conv__"


def _lycoris_conv_default(values: dict[str, Any], notes: list[str]) -> None:
    """`network_module: lycoris.kohya` without conv_dim: convs at the linear rank/alpha, as LyCORIS does."""
    if not values.pop(LYCORIS_CONV, False) or "conv_dim" in values:
        return
    values["conv_dim"] = values.get("lora_rank", default_of(FIELDS["lora_rank"]))
    values.setdefault("conv_alpha", values.get("lora_alpha", default_of(FIELDS["lora_alpha"])))
    notes.append(f"network_module lycoris.kohya: conv_dim {values['conv_dim']} (LyCORIS's default: network_dim)")


def _network_module(raw: Any, out: dict[str, Any], key: str) -> None:
    """kohya `networks.lora` is LoRA/LoCon; `lycoris.kohya` without an `algo` argument is LoCon."""
    text = str(raw).strip().lower()
    if text in ("networks.lora", "lora"):
        return
    if text == "lycoris.kohya":  # LyCORIS trains the 3x3 convs at network_dim unless conv_dim says otherwise
        out["__defaults__"] = {"network_type": "locon", LYCORIS_CONV: True}
        return
    raise ConfigError(key, f"{raw!r} is not supported; use networks.lora or lycoris.kohya (with network_type / "
                           "network_args algo=lora|locon|loha|lokr)")


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
    "network_module": _network_module,
    "log_with": _ignored, "log_prefix": _ignored, "persistent_data_loader_workers": _ignored,
    "lowram": _ignored, "mem_eff_attn": _ignored, "full_fp16": _ignored,
    "full_bf16": _ignored, "max_token_length_auto": _ignored, "lr_scheduler_num_cycles": _ignored,
    "caption_separator": _ignored, "bucket_no_upscale": _ignored,
}
IGNORED_KEYS = tuple(k for k, v in SPECIAL_KEYS.items() if v is _ignored)


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


def _coerce_list(value: Any, key: str, item: Any) -> list[Any]:
    """A list, or kohya's comma-separated string (`"2,4,4,8"`)."""
    if isinstance(value, str):
        value = [v for v in re.split(r"[,\s]+", value.strip()) if v]
    elif isinstance(value, (int, float)) and not isinstance(value, bool):  # kohya's mid_lr_weight=0
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise ConfigError(key, f"expected a list of numbers, got {value!r}")
    return [item(v, key) for v in value]


def _coerce_int_list(value: Any, key: str) -> list[int]:
    return _coerce_list(value, key, _coerce_int)


def _coerce_float_list(value: Any, key: str) -> list[float]:
    return _coerce_list(value, key, _coerce_float)


def _coerce_rules(value: Any, key: str) -> list[dict[str, Any]]:
    """`network_blocks`: mappings `{pattern, rank, alpha, lr_weight, exclude}` (a plain string = exclude)."""
    if isinstance(value, (str, Mapping)):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise ConfigError(key, f"expected a list of rules, got {value!r}")
    out: list[dict[str, Any]] = []
    for i, item in enumerate(value):
        where = f"{key}[{i}]"
        if isinstance(item, str):
            item = {"pattern": item, "exclude": True}
        if not isinstance(item, Mapping):
            raise ConfigError(where, "must be a mapping with 'pattern' (and rank, alpha, lr_weight, exclude)")
        unknown = sorted(set(map(str, item)) - {"pattern", "rank", "alpha", "lr_weight", "exclude"})
        if unknown:
            raise ConfigError(f"{where}.{unknown[0]}", "unknown key; use pattern, rank, alpha, lr_weight, exclude")
        if not item.get("pattern"):
            raise ConfigError(f"{where}.pattern", "is required (an fnmatch pattern on kohya module names)")
        rule: dict[str, Any] = {"pattern": _coerce_str(item["pattern"], f"{where}.pattern")}
        for name, parse in (("rank", _coerce_int), ("alpha", _coerce_float), ("lr_weight", _coerce_float),
                            ("exclude", _coerce_bool)):
            if item.get(name) is not None:
                rule[name] = parse(item[name], f"{where}.{name}")
        out.append(rule)
    return out


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
    "list[str] | str": _coerce_prompts, "dict[str, Any]": _coerce_dict, "list[int]": _coerce_int_list,
    "list[float]": _coerce_float_list, "list[dict[str, Any]]": _coerce_rules,
}


def _coerce(name: str, value: Any, key: str) -> Any:
    """Parse `value` for field `name`; `key` is how the user spelled it (for the error)."""
    type_ = str(FIELDS[name].type)
    nullable = type_.endswith(" | None")
    base = type_[: -len(" | None")] if nullable else type_
    if value is None or (nullable and isinstance(value, str) and value.strip().lower() in ("", "none", "null")):
        if nullable:
            return None
        if base == "str":
            return ""
        raise ConfigError(key, "a value is required here")
    out = _COERCERS[base](value, key)
    if name in ("network_include", "network_exclude"):  # patterns hold no spaces: one per line or comma
        out = [p for v in out for p in re.split(r"[,\s]+", v) if p]
    if name == "caption_extension" and out and not out.startswith("."):
        out = "." + out
    if name in ("optimizer", "lr_scheduler", "mixed_precision", "model_type", "task_type", "save_precision",
                "network_type"):
        out = out.strip().lower()
        if name == "optimizer":
            out = {"adamw_8bit": "adamw8bit", "adam8bit": "adamw8bit", "adamw8": "adamw8bit"}.get(out, out)
        if name == "mixed_precision":
            out = {"fp32": "no", "none": "no", "float32": "no"}.get(out, out)
    return out


# ------------------------------------------------------------------------------------------------
# loading


def _suggest(key: str) -> str:
    names = list(FIELDS) + list(ALIASES) + list(SPECIAL_KEYS)
    close = difflib.get_close_matches(key, names, n=2, cutoff=0.6)
    canonical = []
    for c in close:
        c = ALIASES.get(c, c)
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
            for name, default in extra.pop("__defaults__", {}).items():  # unless the config sets it
                values.setdefault(name, default)
            values.update(extra)
            continue
        name = key if key in FIELDS else ALIASES.get(key)
        if name is None:
            raise ConfigError(dotted, f"unknown key{_suggest(key)}")
        parsed = _coerce(name, value, dotted)
        if name in here and values.get(name) != parsed:
            notes.append(f"'{here[name]}' and '{dotted}' both set {name}; using '{dotted}'")
        here[name] = seen[name] = dotted
        path_kind = FIELDS[name].metadata["path"]
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
    name = FIELDS.get(key.split(".")[-1]) or FIELDS.get(ALIASES.get(key.split(".")[-1], ""))
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
        raw = {k: v for k, v in source.to_dict().items() if k in source.spelled or v != plain(default_of(FIELDS[k]))}
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
    fit_bucket_defaults(values, seen)
    _lycoris_conv_default(values, notes)
    if values.get("keep_tokens") and not values.get("shuffle_caption"):
        notes.append("keep_tokens only matters with shuffle_caption: true")
    try:
        cfg = TrainConfig(**values, source_path=source_path, notes=notes, spelled=seen)
    except TypeError as exc:  # a SPECIAL_KEYS handler produced a name the schema lacks: a bug here
        raise ConfigError("config", f"internal key mapping error: {exc}") from exc
    validate_config(cfg, check_paths=check_paths, require=require)
    return cfg


def fit_bucket_defaults(values: dict[str, Any], spelled: Mapping[str, str]) -> None:
    """Bucket limits the user did not set follow the resolution (a 64 px test run or a 1536 px
    SDXL run must not fail on defaults); limits the user set are checked as written."""
    get = lambda name: values.get(name, default_of(FIELDS[name]))  # noqa: E731
    step, res = get("bucket_reso_steps"), get("resolution")
    if step <= 0 or not get("enable_bucket"):
        return
    w, h = (res, res) if isinstance(res, int) else (int(res[0]), int(res[1]))
    if "min_bucket_reso" not in spelled and get("min_bucket_reso") > min(w, h):
        values["min_bucket_reso"] = max(step, min(w, h) // step * step)
    if "max_bucket_reso" not in spelled and get("max_bucket_reso") < max(w, h):
        values["max_bucket_reso"] = -(-max(w, h) // step) * step


# ------------------------------------------------------------------------------------------------
