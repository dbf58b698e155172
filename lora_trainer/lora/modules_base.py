"""What every adapter module (LoRA, LoHa, LoKr, with or without DoRA) offers the network.

Why one small interface: the network wraps a base module's `forward` and adds `lora_out(x)`;
saving, loading, merging and the fused q/k/v path only need `delta_weight()` and the module's
file tensors (`suffix -> tensor`, LyCORIS key layout). So a new kind is one file, not a branch
in every method of `LoRANetwork`.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn


class WeightsMismatch(ValueError):
    """A file tensor does not fit the module (other rank, factor or kind); carries the suffix."""

    def __init__(self, suffix: str, got: tuple[int, ...], want: tuple[int, ...]):
        self.suffix, self.got, self.want = suffix, got, want
        super().__init__(f"{suffix}: shape {got}, this run needs {want}")


def conv_kwargs(base: nn.Module) -> dict[str, Any]:
    """The functional-conv arguments of a Conv2d base (empty for Linear / fused q/k/v)."""
    if isinstance(base, nn.Conv2d):
        if base.groups != 1:
            raise ValueError("grouped convolutions are not supported")
        return {"stride": base.stride, "padding": base.padding, "dilation": base.dilation}
    return {}


def base_shape(base: nn.Module, in_out: tuple[int, int] | None) -> tuple[int, ...]:
    """The weight shape the delta must have: (out, in) or (out, in, kh, kw)."""
    if in_out is not None:
        return in_out[1], in_out[0]
    if isinstance(base, nn.Conv2d):
        return (base.out_channels, base.in_channels, *base.kernel_size)
    return base.out_features, base.in_features


class AdapterModule(nn.Module):
    """Base of the modules whose delta is a weight (LoHa, LoKr, DoRA): out = op(x, delta_weight())."""

    suffixes: ClassVar[tuple[str, ...]] = ()
    lora_name: str
    rank: int
    alpha: float
    dropout: float
    is_conv: bool

    def _setup(self, name: str, base: nn.Module, in_out: tuple[int, int] | None) -> None:
        self.lora_name = name
        self.dropout = 0.0
        self.shape = base_shape(base, in_out)
        self.is_conv = len(self.shape) == 4
        self._conv = conv_kwargs(base)

    def delta_weight(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        raise NotImplementedError

    def delta_rows(self, lo: int, hi: int) -> torch.Tensor:
        """Rows lo:hi of `delta_weight()` (a "rows" target's part: q, k, v of BFL's fused qkv). Kinds whose
        factors can be cut by rows override it, so a part never builds the whole fused delta."""
        return self.delta_weight()[lo:hi]

    def _op(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, w, None, **self._conv) if self.is_conv else F.linear(x, w)

    def lora_out(self, x: torch.Tensor) -> torch.Tensor:
        """The adapter path for input `x` (scaled by alpha/rank, not by the multiplier)."""
        w = self.delta_weight()
        h = x.to(w.dtype)
        if self.dropout > 0 and self.training:
            h = F.dropout(h, self.dropout)
        return self._op(h, w)

    def file_tensors(self, dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def load_file_tensors(self, tensors: dict[str, torch.Tensor]) -> list[str]:
        raise NotImplementedError

    def probe(self) -> nn.Parameter:
        """The parameter that gets a gradient whenever the adapter path is differentiated."""
        raise NotImplementedError


def copy_param(p: torch.Tensor, t: torch.Tensor, suffix: str) -> None:
    """Copy a file tensor into a parameter, refusing any shape difference."""
    if tuple(p.shape) != tuple(t.shape):
        raise WeightsMismatch(suffix, tuple(t.shape), tuple(p.shape))
    with torch.no_grad():
        p.copy_(t.to(p.device, p.dtype))


def alpha_tensor(alpha: float, dtype: torch.dtype) -> torch.Tensor:
    return torch.tensor(float(alpha), dtype=dtype)
