"""Backward through Forge's frozen UNet without changing it (gradients reach only the LoRA).

Forge loads every weight under `torch.inference_mode()`, and its UNet adds residuals in place
(`x += n`). Autograd refuses both: an inference tensor "cannot be saved for backward", and an
in-place add on a tensor an earlier op saved fails the version check in backward. Instead of
copying weights or editing Forge's code, the training forward runs inside `FrozenBaseMode`, a
`TorchFunctionMode` that, for each torch call made by Forge's own modules (its dequantising
fp8/GGUF/NF4 forwards included):

- hands the call a plain-tensor *alias* of every inference tensor argument: the same storage (no
  copy, no new memory), a version counter, `requires_grad=False`. The host's tensors are never
  modified or replaced;
- turns an augmented assignment on a tensor that takes part in autograd (`x += n`, `h *= s`, ...)
  into its out-of-place form. Python rebinds the name to the returned tensor, so the result is the
  same value; only statement-form calls such as `x.add_(n)` are left in place (autograd then fails
  loudly rather than silently computing something else).

The mode is entered around each forward of the UNet (and around each recomputed block under
gradient checkpointing); backward runs in autograd's engine and needs nothing from it.
"""

from __future__ import annotations

import contextlib
import dis
import sys
import threading
from collections.abc import Iterator
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

# in-place method -> out-of-place equivalent (what `a op= b` dispatches to on a tensor)
_INPLACE = {
    torch.Tensor.add_: torch.Tensor.add, torch.Tensor.sub_: torch.Tensor.sub,
    torch.Tensor.mul_: torch.Tensor.mul, torch.Tensor.div_: torch.Tensor.div,
    torch.Tensor.__iadd__: torch.Tensor.__add__, torch.Tensor.__isub__: torch.Tensor.__sub__,
    torch.Tensor.__imul__: torch.Tensor.__mul__, torch.Tensor.__itruediv__: torch.Tensor.__truediv__,
}
_PLAIN = (torch.Tensor, torch.nn.Parameter)
_AUGMENTED_OPS = frozenset({"BINARY_OP", "INPLACE_ADD", "INPLACE_SUBTRACT", "INPLACE_MULTIPLY",
                            "INPLACE_TRUE_DIVIDE"})


def plain_alias(t: torch.Tensor) -> torch.Tensor:
    """A normal tensor viewing the same memory as inference tensor `t` (no copy)."""
    alias = torch.empty(0, dtype=t.dtype, device=t.device)
    with torch.no_grad():
        alias.set_(t.untyped_storage(), t.storage_offset(), t.size(), t.stride())
    return alias


def _unwrap(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        # quantised tensor subclasses (GGUF, bnb 4-bit) pass through: their own code dequantises them
        return plain_alias(value) if value.is_inference() and type(value) in _PLAIN else value
    if isinstance(value, (list, tuple)) and any(isinstance(v, torch.Tensor) and v.is_inference() for v in value):
        return type(value)(_unwrap(v) for v in value)
    return value


def _called_as_augmented_assignment() -> bool:
    """True when the Python line that dispatched here is `a op= b` (the name is rebound to our result)."""
    frame = sys._getframe(2)  # 0: here, 1: __torch_function__, 2: the caller's line
    code = frame.f_code.co_code
    i = frame.f_lasti
    if not 0 <= i < len(code):
        return False
    return dis.opname[code[i]] in _AUGMENTED_OPS


def _in_graph(args: tuple) -> bool:
    return any(isinstance(a, torch.Tensor) and a.requires_grad for a in args[:2])


class FrozenBaseMode(TorchFunctionMode):
    """See the module docstring. Cheap to enter; reentrant-safe (nested entries are harmless)."""

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        out_of_place = _INPLACE.get(func)
        if out_of_place is not None and torch.is_grad_enabled() and _in_graph(args) \
                and _called_as_augmented_assignment():
            func = out_of_place
        args = tuple(_unwrap(a) for a in args)
        if kwargs:
            kwargs = {k: _unwrap(v) for k, v in kwargs.items()}
        return func(*args, **kwargs)


_active = threading.local()


@contextlib.contextmanager
def frozen_base() -> Iterator[None]:
    """Run Forge's modules under `FrozenBaseMode` (once per thread: nested uses add nothing)."""
    if getattr(_active, "depth", 0):
        _active.depth += 1
        try:
            yield
        finally:
            _active.depth -= 1
        return
    _active.depth = 1
    try:
        with FrozenBaseMode():
            yield
    finally:
        _active.depth = 0
