"""DoRA: weight decomposition on top of any adapter kind (LoRA -> DoRA, LoHa/LoKr -> LyCORIS dora_wd).

    W' = (W + dW) * dora_scale / ||W + dW||,  delta = W' - W,  output += multiplier * op(x, delta)

The magnitude `dora_scale` has one value per *input* channel, shape (1, in[, 1, 1]) — LyCORIS's
`wd_on_output=False` — because that is the only axis AUTOMATIC1111 1.10's builtin Lora extension
computes (`NetworkModule.apply_weight_decompose`, norm over `transpose(0, 1)`); Forge and ComfyUI
detect the axis from the shape. The multiplier scales W' - W, as all three hosts do. The base
weight is read (through `weight_fn`, never stored in this module's state) and never written.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import torch
from torch import nn

from lora_trainer.lora.modules_base import AdapterModule, copy_param


def column_norm(w: torch.Tensor) -> torch.Tensor:
    """||w|| per input channel, shaped (1, in, 1...) to broadcast over w (A1111's axis)."""
    n = w.transpose(0, 1).reshape(w.shape[1], -1).norm(dim=1)
    return n.reshape(1, w.shape[1], *[1] * (w.dim() - 2))


class DoRAModule(AdapterModule):
    suffixes: ClassVar[tuple[str, ...]] = (".dora_scale",)

    def __init__(self, inner: nn.Module, weight_fn: Callable[[], torch.Tensor], conv: dict):
        super().__init__()
        self.inner = inner
        self.lora_name = inner.lora_name
        self.dropout = 0.0
        self.is_conv = bool(conv)
        self._conv = conv
        self.__dict__["_weight_fn"] = weight_fn  # a plain attribute: the base is not our state
        p = inner.probe()
        w = weight_fn().detach().to(p.device, p.dtype)  # the dtype delta_weight computes in: an exact no-op start
        self.shape = tuple(w.shape)
        self.dora_scale = nn.Parameter(column_norm(w))

    @property
    def rank(self) -> int:
        return self.inner.rank

    @property
    def alpha(self) -> float:
        return self.inner.alpha

    @property
    def scale(self) -> float:
        return self.inner.scale

    def delta_weight(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        dt = dtype or self.dora_scale.dtype
        w0 = self.__dict__["_weight_fn"]().detach().to(self.dora_scale.device, dt)
        merged = w0 + self.inner.delta_weight(dt).reshape(w0.shape)
        norm = column_norm(merged).clamp_min(torch.finfo(dt).tiny)  # not + eps: a fresh DoRA is exactly 0
        return merged * (self.dora_scale.to(dt) / norm) - w0

    def file_tensors(self, dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
        out = self.inner.file_tensors(dtype)
        out[".dora_scale"] = self.dora_scale.detach().to("cpu", dtype or self.dora_scale.dtype).contiguous()
        return out

    def load_file_tensors(self, tensors: dict[str, torch.Tensor]) -> list[str]:
        missing = self.inner.load_file_tensors(tensors)
        if ".dora_scale" in tensors:
            copy_param(self.dora_scale, tensors[".dora_scale"], ".dora_scale")
        else:
            missing.append(".dora_scale")
        return missing

    def probe(self) -> nn.Parameter:
        return self.inner.probe()
