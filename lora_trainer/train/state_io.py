"""Nested state dicts (optimizer, scheduler, scaler) as `<stem>.safetensors` + `<stem>.json`, no pickle.

Why not torch.save: a pickle can run code when read, and the WebUI's safe unpickler refuses the files
a recent torch writes. The tensors go to safetensors under generated keys; everything else (param
groups, step counts, betas, scheduler counters) goes to JSON, with a few tagged forms so that reading
gives back exactly the Python values written:
  {"$tensor": key}   a tensor (dtype and shape come from safetensors)
  {"$tuple": [...]}  a tuple (torch optimizers keep `betas` as one)
  {"$items": [[k, v], ...]}  a dict with non-string keys (an optimizer's state is keyed by param index)
  {"$float": "nan" | "inf" | "-inf"}  the floats plain JSON cannot hold
  {"$dtype": "float32"}  a torch dtype
Python floats survive JSON exactly (repr round-trips), so resuming from these files is bit-exact.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import torch

_TAGS = ("$tensor", "$tuple", "$items", "$float", "$dtype")


class StateFormatError(ValueError):
    """A state file cannot be read back (truncated, edited, or not written by this module)."""


def encode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """JSON-able form of `obj`; tensors are moved into `tensors` (CPU, contiguous)."""
    if isinstance(obj, torch.Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = obj.detach().cpu().contiguous()
        return {"$tensor": key}
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return float(obj) if math.isfinite(obj) else {"$float": repr(float(obj))}
    if isinstance(obj, tuple):
        return {"$tuple": [encode(v, tensors) for v in obj]}
    if isinstance(obj, list):
        return [encode(v, tensors) for v in obj]
    if isinstance(obj, dict):
        if all(isinstance(k, str) and k not in _TAGS for k in obj):
            return {k: encode(v, tensors) for k, v in obj.items()}
        return {"$items": [[encode(k, tensors), encode(v, tensors)] for k, v in obj.items()]}
    if isinstance(obj, torch.dtype):
        return {"$dtype": str(obj).removeprefix("torch.")}
    if hasattr(obj, "item") and hasattr(obj, "dtype"):  # numpy scalar
        return encode(obj.item(), tensors)
    raise TypeError(f"cannot store a {type(obj).__name__} in a training state (tensors, numbers, strings, "
                    "lists, tuples and dicts only)")


def decode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of `encode`."""
    if isinstance(obj, list):
        return [decode(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if len(obj) == 1:
        (tag, value), = obj.items()
        if tag == "$tensor":
            if value not in tensors:
                raise StateFormatError(f"tensor {value!r} is missing from the .safetensors file")
            return tensors[value]
        if tag == "$tuple":
            return tuple(decode(v, tensors) for v in value)
        if tag == "$items":
            return {_hashable(decode(k, tensors)): decode(v, tensors) for k, v in value}
        if tag == "$float":
            return float(value)
        if tag == "$dtype":
            return getattr(torch, value)
    return {k: decode(v, tensors) for k, v in obj.items()}


def _hashable(key: Any) -> Any:
    return tuple(key) if isinstance(key, list) else key


def write_tree(folder: str, stem: str, obj: Any) -> None:
    """Write `obj` as `folder/stem.safetensors` + `folder/stem.json` (the caller makes it atomic)."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    tree = encode(obj, tensors)
    seen: set[int] = set()
    for key, t in tensors.items():  # safetensors refuses entries sharing memory: copy a repeat
        ptr = t.untyped_storage().data_ptr()
        if t.numel() and ptr in seen:
            tensors[key] = t.clone()
        seen.add(ptr)
    save_file(tensors, os.path.join(folder, stem + ".safetensors"))
    with open(os.path.join(folder, stem + ".json"), "w", encoding="utf-8") as f:
        json.dump(tree, f, indent=1, allow_nan=False)


def read_tree(folder: str, stem: str) -> Any:
    """Read what `write_tree` wrote; any problem raises StateFormatError whose message starts with
    the path of the file at fault."""
    from safetensors.torch import load_file

    st_path, json_path = (os.path.join(folder, stem + ext) for ext in (".safetensors", ".json"))
    for path in (st_path, json_path):
        if not os.path.isfile(path):
            raise StateFormatError(f"{path} is missing")
    try:
        tensors = load_file(st_path)
    except Exception as exc:  # SafetensorError, OSError: a truncated or foreign file
        raise StateFormatError(f"{st_path} is corrupt ({short_error(exc)})") from None
    try:
        with open(json_path, encoding="utf-8") as f:
            return decode(json.load(f), tensors)
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        raise StateFormatError(f"{json_path} is corrupt ({short_error(exc)})") from None


def short_error(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:160] or type(exc).__name__
