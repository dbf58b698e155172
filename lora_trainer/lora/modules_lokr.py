"""LoKr (LyCORIS `algo=lokr`): delta W = kron(w1, w2) * scale, w2 optionally low rank.

Layout and initialisation follow LyCORIS exactly, so files are what A1111's `network_lokr.py`,
Forge and ComfyUI read: out = a*c and in = b*d split by `factorization(dim, factor)`; `lokr_w1`
(a, b) is a full matrix; `lokr_w2` (c, d[, kh, kw]) is full when `full_rank` is asked or the rank
is at least half its size, else `lokr_w2_a` (c, r) @ `lokr_w2_b` (r, d*kh*kw). With both halves
full the scale is 1 (alpha is written as the rank); otherwise alpha / rank. A file may also carry
`lokr_w1_a/lokr_w1_b` (LyCORIS decompose_both): loading adopts whatever layout the file has.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import nn

from lora_trainer.lora.modules_base import AdapterModule, WeightsMismatch, alpha_tensor, copy_param

_KEYS = ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b")


def factorization(dimension: int, factor: int = -1) -> tuple[int, int]:
    """(m, n), m <= n, m * n = dimension: `factor` itself when it divides, else the most square
    split with m <= factor (LyCORIS's rule, so our shapes equal its shapes)."""
    if factor > 0 and dimension % factor == 0:
        m, n = factor, dimension // factor
        return (n, m) if m > n else (m, n)
    if factor < 0:
        factor = dimension
    m, n = 1, dimension
    length = m + n
    while m < n:
        new_m = m + 1
        while dimension % new_m != 0:
            new_m += 1
        new_n = dimension // new_m
        if new_m + new_n > length or new_m > factor:
            break
        m, n = new_m, new_n
    return (n, m) if m > n else (m, n)


class LoKrModule(AdapterModule):
    suffixes: ClassVar[tuple[str, ...]] = tuple(f".{k}" for k in _KEYS) + (".alpha",)

    def __init__(self, name: str, base: nn.Module, rank: int, alpha: float, *, factor: int = -1,
                 full_rank: bool = False, dtype: torch.dtype = torch.float32,
                 device: torch.device | None = None, in_out: tuple[int, int] | None = None, **_: object):
        super().__init__()
        self._setup(name, base, in_out)
        self._kw = {"dtype": dtype, "device": device}
        out_l, out_k = factorization(self.shape[0], factor)
        in_m, in_n = factorization(self.shape[1], factor)
        k = self.shape[2:]
        self.rank = int(rank)
        shapes: dict[str, tuple[int, ...]] = {"lokr_w1": (out_l, in_m)}
        if full_rank or rank >= max(out_k, in_n) / 2:
            shapes["lokr_w2"] = (out_k, in_n, *k)
        else:
            shapes["lokr_w2_a"] = (out_k, rank)
            shapes["lokr_w2_b"] = (rank, in_n * math.prod(k))
        self._make(shapes)
        self.alpha = float(self.rank) if self.full else float(alpha)
        if device is None or torch.device(device).type != "meta":
            self.reset_parameters()

    def _make(self, shapes: dict[str, tuple[int, ...]]) -> None:
        old = next((p for p in self._parameters.values() if p is not None), None)
        if old is not None:  # a re-layout after the module moved keeps its device and dtype
            self._kw = {"dtype": old.dtype, "device": old.device}
        for key in _KEYS:
            if key in self._parameters:
                del self._parameters[key]
            if key in shapes:
                self.register_parameter(key, nn.Parameter(torch.empty(shapes[key], **self._kw)))
        self.keys = tuple(k for k in _KEYS if k in shapes)
        self.full = "lokr_w1" in shapes and "lokr_w2" in shapes

    def reset_parameters(self) -> None:
        """LyCORIS init: w1 (or w1_a/b) and w2_a kaiming-uniform, w2 / w2_b zero (a no-op start)."""
        for key in self.keys:
            p = getattr(self, key)
            if key in ("lokr_w2", "lokr_w2_b"):
                nn.init.zeros_(p)
            else:
                nn.init.kaiming_uniform_(p, a=math.sqrt(5))

    @property
    def scale(self) -> float:
        return 1.0 if self.full else self.alpha / self.rank

    def _half(self, n: str, dtype: torch.dtype | None) -> torch.Tensor:
        full = self._parameters.get(f"lokr_w{n}")
        if full is not None:
            return full if dtype is None else full.to(dtype)
        a, b = self._parameters[f"lokr_w{n}_a"], self._parameters[f"lokr_w{n}_b"]
        if dtype is not None:
            a, b = a.to(dtype), b.to(dtype)
        return a @ b

    def delta_weight(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        w1, w2 = self._half("1", dtype), self._half("2", dtype)
        if w2.dim() == 4:
            w1 = w1[:, :, None, None]
        return (torch.kron(w1, w2) * self.scale).reshape(self.shape)

    def delta_rows(self, lo: int, hi: int) -> torch.Tensor:
        """Rows of kron(w1, w2): whole row blocks of w2 (`lo`, `hi` multiples of its height) come from the
        rows of w1 alone; any other cut slices the full delta."""
        w2 = self._half("2", None)
        c = int(w2.shape[0])
        if w2.dim() != 2 or lo % c or hi % c:
            return super().delta_rows(lo, hi)
        return torch.kron(self._half("1", None)[lo // c:hi // c], w2) * self.scale

    def file_tensors(self, dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
        dt = dtype or self._parameters[self.keys[0]].dtype
        out = {f".{k}": getattr(self, k).detach().to("cpu", dt).contiguous() for k in self.keys}
        out[".alpha"] = alpha_tensor(self.alpha, dt)
        return out

    def _file_shapes(self, tensors: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
        """The layout a file uses, checked to rebuild this module's weight shape."""
        shapes = {k: tuple(tensors[f".{k}"].shape) for k in _KEYS if f".{k}" in tensors}
        w1 = shapes.get("lokr_w1") or (shapes["lokr_w1_a"][0], shapes["lokr_w1_b"][1])
        if "lokr_w2" in shapes:
            w2 = shapes["lokr_w2"]
            w2 = (w2[0], w2[1] * math.prod(w2[2:]))
        else:
            w2 = (shapes["lokr_w2_a"][0], shapes["lokr_w2_b"][1])
        fan_in = self.shape[1] * math.prod(self.shape[2:])
        if w1[0] * w2[0] != self.shape[0] or w1[1] * w2[1] != fan_in:
            raise WeightsMismatch(".lokr_w1", w1 + w2, self.shape)
        return shapes

    def load_file_tensors(self, tensors: dict[str, torch.Tensor]) -> list[str]:
        """Adopt the file's layout (factor, rank, full or factored halves), then copy."""
        has1 = ".lokr_w1" in tensors or (".lokr_w1_a" in tensors and ".lokr_w1_b" in tensors)
        has2 = ".lokr_w2" in tensors or (".lokr_w2_a" in tensors and ".lokr_w2_b" in tensors)
        if not (has1 and has2):
            return [s for s in (".lokr_w1", ".lokr_w2") if s not in tensors]
        shapes = self._file_shapes(tensors)
        if shapes != {k: tuple(getattr(self, k).shape) for k in self.keys}:
            self._make(shapes)
        for k in self.keys:
            copy_param(getattr(self, k), tensors[f".{k}"], f".{k}")
        ranks = [shapes[k][0] for k in ("lokr_w1_b", "lokr_w2_b") if k in shapes]
        self.rank = ranks[-1] if ranks else self.rank
        self.alpha = float(tensors[".alpha"].item()) if ".alpha" in tensors and not self.full else float(self.rank)
        return []

    def probe(self) -> nn.Parameter:
        return self._parameters["lokr_w2"] if "lokr_w2" in self.keys else self._parameters["lokr_w2_b"]
