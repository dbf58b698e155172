"""Gradient checkpointing of a host's UNet blocks by wrapping their instances' `forward`.

Why our own: ldm's checkpointing ignores the LoRA parameters and Forge's raises NotImplementedError;
torch's non-reentrant checkpoint around each block works for both, and popping the instance attribute
afterwards leaves the host's modules exactly as they were.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import torch


def checkpoint_blocks(root: torch.nn.Module, block_names: tuple[str, ...],
                      around: Callable[[], AbstractContextManager[Any]] | None = None) -> list[torch.nn.Module]:
    """Checkpoint every module of `root` whose class name is in `block_names` (not already wrapped);
    `around` is a context the block runs in, first pass and recomputation alike (Forge: `frozen_base`).
    Returns the wrapped modules for `remove_checkpointing`."""
    from torch.utils.checkpoint import checkpoint

    wrapped_mods = []
    for mod in root.modules():
        if type(mod).__name__ not in block_names or "forward" in mod.__dict__:
            continue
        orig = mod.forward

        def run(*args: Any, _orig: Callable[..., Any] = orig, **kwargs: Any) -> Any:
            if around is None:
                return _orig(*args, **kwargs)
            with around():
                return _orig(*args, **kwargs)

        def wrapped(*args: Any, _run: Callable[..., Any] = run, **kwargs: Any) -> Any:
            if not torch.is_grad_enabled():
                return _run(*args, **kwargs)
            return checkpoint(_run, *args, use_reentrant=False, **kwargs)

        mod.forward = wrapped
        wrapped_mods.append(mod)
    return wrapped_mods


def remove_checkpointing(mods: list[torch.nn.Module]) -> None:
    """Put the classes' own `forward` back on modules `checkpoint_blocks` wrapped."""
    for mod in mods:
        mod.__dict__.pop("forward", None)
