"""Block swap: keep N transformer blocks' frozen weights in CPU memory, copied to the device per forward.

Why: with fp8 storage a FLUX.1 transformer still needs about 11 GB on the GPU; swapping 16 of its
blocks is how kohya trains it in 12 GB (docs/flux_train_network.md). A swapped block's parameters stay
in CPU memory (pinned when the device is CUDA). Its `forward` is wrapped: for the duration of the call
each parameter slot holds a device copy (the trick `LoRANetwork` uses for fused attention weights), and
the original Parameter is put back afterwards. Autograd then holds only those copies, so they are
freed when nothing needs them: right after the forward under gradient checkpointing (the forward runs
again, with fresh copies, when backward reaches the block), or after backward without it (correct, but
little memory saved). Moving `.data` in and out instead would corrupt backward: ops such as RMSNorm
save the Parameter object itself.

Invariants: attach after the LoRA network is built (LoRA modules are created beside the base weights);
only frozen parameters are swapped; `detach()` restores the forwards and moves the parameters back to
where they were. Copies are synchronous here; prefetching the next block on a side CUDA stream is the
GPU optimisation still to add.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn


class BlockSwap:
    """Run `blocks` on `device` while their weights live in CPU memory."""

    def __init__(self, blocks: Sequence[nn.Module], device: torch.device | str):
        self.blocks = list(blocks)
        self.device = torch.device(device)
        self.copies = 0  # block forwards that copied weights in (tests and logs)
        self._entries: list[tuple[nn.Module, list[tuple[nn.Module, str]], torch.device, Any]] = []

    def attach(self) -> BlockSwap:
        if self._entries:
            return self
        pin = self.device.type == "cuda"
        for block in self.blocks:
            slots = [(mod, name) for mod in block.modules() for name, p in mod._parameters.items() if p is not None]
            if any(mod._parameters[name].requires_grad for mod, name in slots):
                raise ValueError("block swap keeps frozen base weights in CPU memory; freeze the base first")
            home = next((mod._parameters[name].device for mod, name in slots), torch.device("cpu"))
            for mod, name in slots:
                p = mod._parameters[name]
                p.data = p.data.to("cpu").pin_memory() if pin else p.data.to("cpu")
            had = block.__dict__.get("forward")
            block.forward = self._wrap(block, slots, block.forward)
            self._entries.append((block, slots, home, had))
        return self

    def _wrap(self, block: nn.Module, slots: list[tuple[nn.Module, str]], orig: Any) -> Any:
        def forward(*args: Any, **kwargs: Any) -> Any:
            saved = [(mod, name, mod._parameters[name]) for mod, name in slots]
            for mod, name, p in saved:
                mod._parameters[name] = p.detach().to(self.device, non_blocking=True)
            self.copies += 1
            try:
                return orig(*args, **kwargs)
            finally:
                for mod, name, p in saved:
                    mod._parameters[name] = p
        return forward

    def detach(self) -> None:
        """Original forwards back, parameters back on the device they had before `attach()`."""
        for block, slots, home, had in self._entries:
            if had is None:
                block.__dict__.pop("forward", None)
            else:
                block.forward = had
            for mod, name in slots:
                p = mod._parameters[name]
                p.data = p.data.to(home)
        self._entries = []


def flux_swap_blocks(transformer: nn.Module, blocks_to_swap: int) -> list[nn.Module]:
    """The blocks kohya's `--blocks_to_swap N` keeps in CPU memory, counted as it does (N // 2 double and
    (N - N // 2) * 2 single blocks, see `flux_memory.swap_split`), taken from the end of each stack."""
    doubles = list(getattr(transformer, "transformer_blocks", None) or getattr(transformer, "double_blocks", []))
    singles = list(getattr(transformer, "single_transformer_blocks", None) or getattr(transformer, "single_blocks", []))
    n_double = blocks_to_swap // 2
    n_single = (blocks_to_swap - n_double) * 2
    # kohya keeps 2 of each kind resident for its prefetch; the synchronous copy here needs none, so any
    # count up to all of them works (the tiny models have 2 + 2 blocks)
    if blocks_to_swap < 0 or n_double > len(doubles) or n_single > len(singles):
        raise ValueError(f"blocks_to_swap {blocks_to_swap} is too many for {len(doubles)} double and "
                         f"{len(singles)} single blocks ({blocks_to_swap // 2} double and "
                         f"{(blocks_to_swap - blocks_to_swap // 2) * 2} single ones would be swapped)")
    return doubles[len(doubles) - n_double:] + singles[len(singles) - n_single:]
