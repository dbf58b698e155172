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

Prefetch: while block i runs, block i+1's copy is already on its way (kohya's offloader does the same).
On CUDA the copy is issued on a side stream from pinned memory and an event is recorded; block i+1's
forward makes the compute stream wait for that event (and marks the copies as used on it, so the
allocator does not hand their memory out early). On the CPU the "copy" is the tensor itself, so the
prefetch costs nothing; the order logic is the same and is what the CPU tests check (`events`). The
next block is predicted from the visiting order: upward in a forward; downward when the order turns
(the recomputation of checkpointed blocks in backward runs from the last block to the first); a visit
to the first block starts upward again. At most one block's prefetched copy is pending; a wrong guess
costs one transfer and the visited block is copied synchronously, so results never depend on it.

Invariants: attach after the LoRA network is built (LoRA modules are created beside the base weights);
only frozen parameters are swapped; `detach()` restores the forwards and moves the parameters back to
where they were.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

Slots = list[tuple[nn.Module, str]]
EVENTS = 4096


class _Copies:
    """Device copies of one block's parameters, and the event that says they have arrived (CUDA only)."""

    def __init__(self, tensors: list[torch.Tensor], event: Any = None):
        self.tensors = tensors
        self.event = event

    def ready(self) -> list[torch.Tensor]:
        """The tensors, usable on the current stream."""
        if self.event is not None:
            stream = torch.cuda.current_stream(self.tensors[0].device)
            stream.wait_event(self.event)
            for t in self.tensors:
                t.record_stream(stream)
        return self.tensors


class BlockSwap:
    """Run `blocks` on `device` while their weights live in CPU memory (`prefetch`: the next block's copy
    is issued while the current one runs)."""

    def __init__(self, blocks: Sequence[nn.Module], device: torch.device | str, *, prefetch: bool = True):
        self.blocks = list(blocks)
        self.device = torch.device(device)
        self.prefetch = prefetch
        self.copies = 0  # block forwards that ran on device copies (tests and logs)
        # ("prefetch", i), ("prefetched", i) or ("copied", i): the order, the last EVENTS of it (tests, logs)
        self.events: deque[tuple[str, int]] = deque(maxlen=EVENTS)
        self._entries: list[tuple[nn.Module, Slots, torch.device, Any]] = []
        self._pending: dict[int, _Copies] = {}
        self._last: int | None = None
        self._stream: Any = None

    def attach(self) -> BlockSwap:
        if self._entries:
            return self
        pin = self.device.type == "cuda"
        if pin and self.prefetch:
            self._stream = torch.cuda.Stream(self.device)
        for i, block in enumerate(self.blocks):
            slots = [(mod, name) for mod in block.modules() for name, p in mod._parameters.items() if p is not None]
            if any(mod._parameters[name].requires_grad for mod, name in slots):
                raise ValueError("block swap keeps frozen base weights in CPU memory; freeze the base first")
            home = next((mod._parameters[name].device for mod, name in slots), torch.device("cpu"))
            for mod, name in slots:
                p = mod._parameters[name]
                p.data = p.data.to("cpu").pin_memory() if pin else p.data.to("cpu")
            had = block.__dict__.get("forward")
            block.forward = self._wrap(i, slots, block.forward)
            self._entries.append((block, slots, home, had))
        return self

    def _issue(self, i: int) -> _Copies:
        """Start copying block i's parameters to the device: on the side stream when there is one."""
        params = [mod._parameters[name].detach() for mod, name in self._entries[i][1]]
        if self._stream is None:
            return _Copies([p.to(self.device, non_blocking=True) for p in params])
        with torch.cuda.stream(self._stream):
            tensors = [p.to(self.device, non_blocking=True) for p in params]
            event = torch.cuda.Event()
            event.record(self._stream)
        return _Copies(tensors, event)

    def _next(self, i: int) -> int | None:
        """The swapped block expected after block i (see the module docstring), or None."""
        up = self._last is None or i == 0 or i > self._last
        j = i + 1 if up else i - 1
        return j if 0 <= j < len(self._entries) else None

    def _arrive(self, i: int) -> list[torch.Tensor]:
        """Block i's device copies (prefetched, or copied now), after issuing the next block's prefetch."""
        pending = self._pending.pop(i, None)
        self.events.append(("prefetched" if pending is not None else "copied", i))
        copies = pending if pending is not None else self._issue(i)
        nxt = self._next(i) if self.prefetch else None
        self._last = i
        if nxt is not None and nxt not in self._pending:
            self._pending = {nxt: self._issue(nxt)}  # one block in flight; a stale guess is dropped
            self.events.append(("prefetch", nxt))
        return copies.ready()

    def _wrap(self, i: int, slots: Slots, orig: Any) -> Any:
        def forward(*args: Any, **kwargs: Any) -> Any:
            saved = [(mod, name, mod._parameters[name]) for mod, name in slots]
            for (mod, name, _), t in zip(saved, self._arrive(i), strict=True):
                mod._parameters[name] = t
            self.copies += 1
            try:
                return orig(*args, **kwargs)
            finally:
                for mod, name, p in saved:
                    mod._parameters[name] = p
        return forward

    def detach(self) -> None:
        """Original forwards back, parameters back on the device they had before `attach()`."""
        if self._stream is not None:
            self._stream.synchronize()
        self._pending = {}
        self._last = None
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
    # kohya keeps 2 of each kind resident for its prefetch; here a block the prefetch did not guess is
    # copied synchronously, so any count up to all of them works (the tiny models have 2 + 2 blocks)
    if blocks_to_swap < 0 or n_double > len(doubles) or n_single > len(singles):
        raise ValueError(f"blocks_to_swap {blocks_to_swap} is too many for {len(doubles)} double and "
                         f"{len(singles)} single blocks ({blocks_to_swap // 2} double and "
                         f"{(blocks_to_swap - blocks_to_swap // 2) * 2} single ones would be swapped)")
    return doubles[len(doubles) - n_double:] + singles[len(singles) - n_single:]
