"""Several processes (DDP) with torch.distributed directly, as `accelerate launch` / torchrun start them.

The LoRA parameters are tiny and the model is an adapter (not one nn.Module), so instead of wrapping a
module in DistributedDataParallel we all-reduce the flattened LoRA gradients once per optimizer step.
Ranks read disjoint data shards; only rank 0 writes files, logs and samples.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    initialized_here: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, requested: str = "auto") -> torch.device:
        """The device this rank trains on (its own GPU under multi-GPU runs)."""
        if requested not in ("auto", "", None):
            dev = torch.device(requested)
            if dev.type == "cuda" and dev.index is None and self.enabled:
                dev = torch.device("cuda", self.local_rank)
            return dev
        if torch.cuda.is_available():
            return torch.device("cuda", self.local_rank if self.enabled else torch.cuda.current_device())
        return torch.device("cpu")

    def all_reduce_grads(self, params: list[torch.nn.Parameter]) -> None:
        """Average gradients over ranks in one flat buffer (one collective per step)."""
        if not self.enabled:
            return
        import torch.distributed as dist

        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1).float() for g in grads])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat /= self.world_size
        offset = 0
        for p, g in zip(params, grads, strict=False):
            n = g.numel()
            p.grad = flat[offset:offset + n].view_as(g).to(g.dtype)
            offset += n

    def broadcast_params(self, params: list[torch.nn.Parameter]) -> None:
        """Start every rank from rank 0's LoRA initialisation."""
        if not self.enabled:
            return
        import torch.distributed as dist

        with torch.no_grad():
            for p in params:
                dist.broadcast(p.data, src=0)

    def any_true(self, flag: bool, device: torch.device) -> bool:
        """True on every rank when any rank says so (stop requests, NaN losses)."""
        if not self.enabled:
            return flag
        import torch.distributed as dist

        t = torch.tensor([1.0 if flag else 0.0], device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def mean(self, value: float, device: torch.device) -> float:
        if not self.enabled:
            return value
        import torch.distributed as dist

        t = torch.tensor([value], dtype=torch.float64 if device.type == "cpu" else torch.float32, device=device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return float(t.item()) / self.world_size

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            dist.barrier()

    def shutdown(self, *, finished: bool) -> None:
        """Leave the process group. `finished` (the run ended normally on every rank): wait for every rank
        first, so none tears its connections down while a peer is still leaving (a rank whose peer has
        gone can abort in gloo's teardown); after an error, leave at once (a peer may never arrive)."""
        if self.initialized_here:
            import torch.distributed as dist

            if dist.is_initialized():
                if finished:
                    dist.barrier()
                dist.destroy_process_group()
            self.initialized_here = False


def init_from_env(device_request: str = "auto") -> DistContext:
    """Join the process group described by RANK/WORLD_SIZE/MASTER_ADDR (set by accelerate or torchrun).

    A single process (no WORLD_SIZE, or 1) gets a context that does nothing."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return DistContext()
    import torch.distributed as dist

    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    ctx = DistContext(rank=rank, world_size=world, local_rank=local)
    if dist.is_initialized():
        return ctx
    dev = ctx.device(device_request)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    dist.init_process_group(backend=backend, rank=rank, world_size=world,
                            timeout=datetime.timedelta(minutes=30))
    ctx.initialized_here = True
    return ctx


@contextlib.contextmanager
def process_group(device_request: str = "auto") -> Iterator[DistContext]:
    """`init_from_env` for the length of one run, left as `DistContext.shutdown` says: after a normal end
    every rank waits for the others first; after an error the process leaves at once."""
    ctx = init_from_env(device_request)
    try:
        yield ctx
    except BaseException:
        ctx.shutdown(finished=False)
        raise
    ctx.shutdown(finished=True)
