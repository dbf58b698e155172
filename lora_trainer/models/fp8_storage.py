"""Frozen Linear weights stored as float8, upcast layer by layer in forward (kohya's `--fp8_base`).

Why: a FLUX.1 transformer is about 24 GB in bf16 and 12 GB in float8; the frozen base of a LoRA run
needs no more precision than users already accept when they load `flux1-dev-fp8.safetensors` in
Forge or ComfyUI. Each wrapped Linear keeps its weight as a float8 Parameter (no gradient) and runs
`F.linear(x, weight.to(x.dtype), bias)`, so at most one layer's weight exists in the compute dtype at
a time. The wrapper is the instance's `forward`, which `LoRANetwork.attach()` then wraps in turn: the
LoRA path stays in its own dtype and sees the same input.

Call it after moving the model to its device and dtype: a later `.to(dtype)` would convert the float8
weights back.
"""

from __future__ import annotations

from collections.abc import Callable
from types import MethodType

import torch
import torch.nn.functional as F
from torch import nn

FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)


def _fp8_forward(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    bias = self.bias.to(x.dtype) if self.bias is not None else None
    return F.linear(x, self.weight.to(x.dtype), bias)


def store_fp8(module: nn.Module, *, select: Callable[[str], bool] | None = None,
              dtype: torch.dtype = torch.float8_e4m3fn) -> list[str]:
    """Store the weights of `module`'s Linear layers (those whose path `select` accepts) as `dtype`;
    returns the paths converted. Irreversible: meant for a base the run loaded itself, never for a host's."""
    if dtype not in FP8_DTYPES:
        raise ValueError(f"fp8 storage dtype must be one of {FP8_DTYPES}, got {dtype}")
    done = []
    for path, lin in module.named_modules():
        if not isinstance(lin, nn.Linear) or (select is not None and not select(path)):
            continue
        if lin.weight.dtype in FP8_DTYPES:
            continue
        lin.weight = nn.Parameter(lin.weight.detach().to(dtype), requires_grad=False)
        lin.forward = MethodType(_fp8_forward, lin)
        done.append(path)
    return done


def in_blocks(path: str) -> bool:
    """The transformer blocks of a diffusers or BFL FLUX.1 / Chroma model (where nearly all weights are);
    the small embedders and the final layer stay in the compute dtype, as in kohya."""
    return path.startswith(("transformer_blocks.", "single_transformer_blocks.", "double_blocks.", "single_blocks."))


def weight_bytes(module: nn.Module) -> int:
    """Bytes held by `module`'s parameters (to show what fp8 storage saves)."""
    return sum(p.numel() * p.element_size() for p in module.parameters())
