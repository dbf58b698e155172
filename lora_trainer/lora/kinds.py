"""The adapter kinds, in one ordered list with first-match dispatch (like A1111's `module_types`).

Two questions go through it: which module class a run builds for `NetworkSpec.algo`, and which
kind a file's key group is (its suffixes). Adding a kind is one entry here plus its module file.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lora_trainer.lora.modules_base import conv_kwargs
from lora_trainer.lora.modules_dora import DoRAModule
from lora_trainer.lora.modules_loha import LoHaModule
from lora_trainer.lora.modules_lokr import LoKrModule
from lora_trainer.lora.modules_lora import LoRAModule


@dataclass(frozen=True)
class Kind:
    algo: str
    cls: type[nn.Module]
    detect: Callable[[set[str]], bool]  # the suffixes of one file module (".hada_w1_a", ...)


def _has(*sufs: str) -> Callable[[set[str]], bool]:
    return lambda s: all(x in s for x in sufs)


def _lokr(s: set[str]) -> bool:
    return (".lokr_w1" in s or {".lokr_w1_a", ".lokr_w1_b"} <= s) and \
        (".lokr_w2" in s or {".lokr_w2_a", ".lokr_w2_b"} <= s)


KINDS: tuple[Kind, ...] = (
    Kind("lora", LoRAModule, _has(".lora_down.weight", ".lora_up.weight")),
    Kind("loha", LoHaModule, _has(".hada_w1_a", ".hada_w1_b", ".hada_w2_a", ".hada_w2_b")),
    Kind("lokr", LoKrModule, _lokr),
)
ALL_SUFFIXES: tuple[str, ...] = tuple(dict.fromkeys(
    s for k in KINDS for s in k.cls.suffixes)) + DoRAModule.suffixes  # type: ignore[attr-defined]
UNSUPPORTED = (".hada_t1", ".hada_t2", ".lokr_t1", ".lokr_t2", ".lora_mid.weight")


def kind_of(algo: str) -> Kind:
    for k in KINDS:
        if k.algo == algo:
            return k
    raise ValueError(f"unknown adapter kind {algo!r}")


def detect_kind(suffixes: Iterable[str]) -> str | None:
    """The first kind whose keys a file module has (None: not one of ours)."""
    s = set(suffixes)
    return next((k.algo for k in KINDS if k.detect(s)), None)


def split_key(key: str) -> tuple[str, str]:
    """`lora_unet_x.hada_w1_a` -> (`lora_unet_x`, `.hada_w1_a`); ('', '') if not an adapter key."""
    for suf in ALL_SUFFIXES + UNSUPPORTED:
        if key.endswith(suf):
            return key[: -len(suf)], suf
    return "", ""


def make_module(algo: str, name: str, base: nn.Module, rank: int, alpha: float, *, conv: bool,
                decompose: bool = False, dtype: torch.dtype = torch.float32, device: Any = None,
                in_out: tuple[int, int] | None = None, weight_fn: Callable[[], torch.Tensor] | None = None,
                **options: Any) -> nn.Module:
    """Build one module of `algo` for `base`; `decompose` wraps it in DoRA (needs `weight_fn`)."""
    cls = kind_of(algo).cls
    if cls is LoRAModule:
        m = LoRAModule(name, base, rank, alpha, conv=conv, dtype=dtype, device=device, in_out=in_out)
    else:
        m = cls(name, base, rank, alpha, dtype=dtype, device=device, in_out=in_out, **options)
    if not decompose:
        return m
    if weight_fn is None:
        raise ValueError(f"{name}: DoRA needs the base weight")
    return DoRAModule(m, weight_fn, conv_kwargs(base) if conv else {})
