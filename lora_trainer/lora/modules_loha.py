"""LoHa (LyCORIS `algo=loha`): delta W = (w1_a @ w1_b) * (w2_a @ w2_b) * alpha / rank.

The Hadamard product of two rank-r products reaches rank r^2 for the parameters of a rank-2r
LoRA. Keys, shapes and initialisation are LyCORIS's (`hada_w1_a` (out, r), `hada_w1_b`
(r, in*kh*kw), same for w2; w2_a starts at zero so the module starts as a no-op), which is what
A1111's `network_hada.py`, Forge and ComfyUI read. Tucker (`hada_t1/t2`) is not trained.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import nn

from lora_trainer.lora.modules_base import AdapterModule, alpha_tensor, copy_param

_KEYS = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")


class LoHaModule(AdapterModule):
    suffixes: ClassVar[tuple[str, ...]] = tuple(f".{k}" for k in _KEYS) + (".alpha",)

    def __init__(self, name: str, base: nn.Module, rank: int, alpha: float, *,
                 dtype: torch.dtype = torch.float32, device: torch.device | None = None,
                 in_out: tuple[int, int] | None = None, **_: object):
        super().__init__()
        self._setup(name, base, in_out)
        self.rank, self.alpha = int(rank), float(alpha)
        self._kw = {"dtype": dtype, "device": device}
        self._make(self.rank)
        if device is None or torch.device(device).type != "meta":
            nn.init.normal_(self.hada_w1_b, std=1.0)
            nn.init.normal_(self.hada_w1_a, std=0.1)
            nn.init.normal_(self.hada_w2_b, std=1.0)
            nn.init.zeros_(self.hada_w2_a)

    def _make(self, rank: int) -> None:
        old = next((p for p in self._parameters.values() if p is not None), None)
        if old is not None:  # a re-rank after the module moved keeps its device and dtype
            self._kw = {"dtype": old.dtype, "device": old.device}
        out, fan_in = self.shape[0], math.prod(self.shape[1:])
        for k in _KEYS:
            shape = (out, rank) if k.endswith("_a") else (rank, fan_in)
            self.register_parameter(k, nn.Parameter(torch.empty(shape, **self._kw)))
        self.rank = rank

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def delta_weight(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        w = [getattr(self, k) for k in _KEYS]
        if dtype is not None:
            w = [t.to(dtype) for t in w]
        return ((w[0] @ w[1]) * (w[2] @ w[3]) * self.scale).reshape(self.shape)

    def delta_rows(self, lo: int, hi: int) -> torch.Tensor:
        """Rows of the delta from the rows of the `_a` factors (Linear bases): no full-size product."""
        if len(self.shape) != 2:
            return super().delta_rows(lo, hi)
        w1a, w1b, w2a, w2b = (getattr(self, k) for k in _KEYS)
        return (w1a[lo:hi] @ w1b) * (w2a[lo:hi] @ w2b) * self.scale

    def file_tensors(self, dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
        dt = dtype or self.hada_w1_a.dtype
        out = {f".{k}": getattr(self, k).detach().to("cpu", dt).contiguous() for k in _KEYS}
        out[".alpha"] = alpha_tensor(self.alpha, dt)
        return out

    def load_file_tensors(self, tensors: dict[str, torch.Tensor]) -> list[str]:
        """Copy the four factors (adopting the file's rank when only the rank differs) and alpha."""
        a = tensors.get(".hada_w1_a")
        if a is not None and a.dim() == 2 and a.shape[1] != self.rank and a.shape[0] == self.shape[0]:
            b = tensors.get(".hada_w1_b")
            if b is not None and b.shape[1] == self.hada_w1_b.shape[1]:
                self._make(int(a.shape[1]))
        missing = []
        for k in _KEYS:
            if f".{k}" in tensors:
                copy_param(getattr(self, k), tensors[f".{k}"], f".{k}")
            else:
                missing.append(f".{k}")
        self.alpha = float(tensors[".alpha"].item()) if ".alpha" in tensors else float(self.rank)
        return missing

    def probe(self) -> nn.Parameter:
        return self.hada_w2_a
