"""The kohya LoRA / LoCon module: delta W = up @ down * (alpha / rank).

Its forward is two small layers (never the full delta), which is why plain LoRA stays the cheapest
kind; the other kinds build their delta weight (see modules_base).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from lora_trainer.lora.modules_base import alpha_tensor, copy_param


class LoRAModule(nn.Module):
    """One low-rank pair for one base weight: delta W = up @ down * (alpha / rank).

    `down`/`up` are Linear for a Linear base, Conv2d (down k x k with the base's stride/padding,
    up 1x1) for a conv base, so the kohya tensor shapes fall out of `state_dict()` directly.
    """

    suffixes: ClassVar[tuple[str, ...]] = (".lora_down.weight", ".lora_up.weight", ".alpha")

    def __init__(self, name: str, base: nn.Module, rank: int, alpha: float, *, conv: bool,
                 dtype: torch.dtype = torch.float32, device: torch.device | None = None,
                 in_out: tuple[int, int] | None = None):
        super().__init__()
        self.lora_name = name
        self.rank = int(rank)
        self.alpha = float(alpha)
        self.dropout = 0.0
        kw: dict[str, Any] = {"bias": False, "dtype": dtype, "device": device}
        if conv:
            if base.groups != 1:
                raise ValueError(f"{name}: grouped convolutions are not supported")
            self.lora_down = nn.Conv2d(base.in_channels, rank, base.kernel_size, base.stride, base.padding,
                                       base.dilation, **kw)
            self.lora_up = nn.Conv2d(rank, base.out_channels, 1, 1, 0, **kw)
        else:
            fin, fout = in_out if in_out is not None else (base.in_features, base.out_features)
            self.lora_down = nn.Linear(fin, rank, **kw)
            self.lora_up = nn.Linear(rank, fout, **kw)
        self.is_conv = conv
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """kohya/PEFT init: down kaiming-uniform(a=sqrt 5), up zeros (the LoRA starts as a no-op)."""
        if self.lora_down.weight.device.type == "meta":
            return
        nn.init.kaiming_uniform_(self.lora_down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_up.weight)

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def lora_out(self, x: torch.Tensor) -> torch.Tensor:
        """The LoRA path for input `x`, scaled by alpha/rank (not by the multiplier)."""
        # the layers' own ops, without two nn.Module calls (hooks, dispatch) per module per step; a
        # scale of 1 (alpha == rank) skips its multiply (bit-identical, one kernel less each way)
        down, up = self.lora_down, self.lora_up
        h = x.to(down.weight.dtype)
        if self.dropout > 0 and self.training:
            h = F.dropout(h, self.dropout)
        if self.is_conv:
            out = up._conv_forward(down._conv_forward(h, down.weight, None), up.weight, None)
        else:
            out = F.linear(F.linear(h, down.weight), up.weight)
        scale = self.scale
        return out if scale == 1.0 else out * scale

    def delta_weight(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Effective weight delta (without multiplier) in the base weight's shape."""
        down, up = self.lora_down.weight, self.lora_up.weight
        if dtype is not None:
            down, up = down.to(dtype), up.to(dtype)
        d = torch.einsum("or,rikl->oikl", up.flatten(1), down) if self.is_conv else up @ down
        return d * self.scale

    def file_tensors(self, dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
        """`.lora_down.weight`, `.lora_up.weight`, `.alpha` (0-dim, always) on CPU."""
        dt = dtype or self.lora_down.weight.dtype
        return {".lora_down.weight": self.lora_down.weight.detach().to("cpu", dt).contiguous(),
                ".lora_up.weight": self.lora_up.weight.detach().to("cpu", dt).contiguous(),
                ".alpha": alpha_tensor(self.alpha, dt)}

    def load_file_tensors(self, tensors: dict[str, torch.Tensor]) -> list[str]:
        """Copy `.lora_down/.lora_up.weight` (+ `.alpha`); returns the suffixes the file lacked."""
        missing = []
        for suf, p in ((".lora_down.weight", self.lora_down.weight), (".lora_up.weight", self.lora_up.weight)):
            if suf in tensors:
                copy_param(p, tensors[suf], suf)
            else:
                missing.append(suf)
        if ".alpha" in tensors:
            self.alpha = float(tensors[".alpha"].item())
        elif ".lora_down.weight" in tensors:
            self.alpha = float(self.rank)  # consumers read a missing alpha as scale 1.0
        return missing

    def probe(self) -> nn.Parameter:
        return self.lora_up.weight
