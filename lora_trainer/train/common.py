"""Small pure helpers every training task shares: seeding, autocast, the device check.

Why here and not in the loop: the image and LLM tasks, the data pre-pass and the tests all need
the same seed derivation (resume equality depends on it), and none of them should import the loop.
"""

from __future__ import annotations

import hashlib
import random
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import numpy as np
import torch

from lora_trainer.errors import ConfigError


def seed_all(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and every GPU) at once."""
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def derive_seed(*parts: Any) -> int:
    """A well-mixed 63-bit seed from (seed, epoch, position, rank, ...) for per-batch determinism."""
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def autocast_context(device: torch.device, mixed_precision: str) -> AbstractContextManager[Any]:
    """torch.autocast in fp16/bf16 on `device`, or nothing for "no"."""
    if mixed_precision in ("fp16", "bf16"):
        dtype = torch.float16 if mixed_precision == "fp16" else torch.bfloat16
        return torch.autocast(device_type=device.type, dtype=dtype)
    return nullcontext()


def check_device(requested: str) -> None:
    """The config's `device` exists on this machine (the config check only knows its spelling)."""
    name = requested.strip().lower()
    if name in ("auto", "cpu"):
        return
    dev = torch.device(name)
    if dev.type == "cuda":
        count = torch.cuda.device_count()
        if count == 0:
            raise ConfigError("device", f"{requested!r}: this machine has no CUDA GPU; use auto or cpu")
        if dev.index is not None and dev.index >= count:
            raise ConfigError("device", f"{requested!r}: this machine has {count} CUDA GPU(s) "
                                        f"(cuda:0..cuda:{count - 1})")
    elif dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError("device", f"{requested!r}: Apple MPS is not available here; use auto or cpu")
    elif dev.type == "xpu" and not (hasattr(torch, "xpu") and torch.xpu.is_available()):
        raise ConfigError("device", f"{requested!r}: no Intel XPU here; use auto or cpu")
