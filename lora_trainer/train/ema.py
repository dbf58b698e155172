"""An exponential moving average of the trainable weights (`ema_decay`), kept beside the run.

The average smooths the step-to-step noise of a small-batch LoRA run; with `save_ema` it is what the
LoRA files hold. The shadow copy is float32 (on the training device, or on the CPU with
`ema_on_cpu`), updated after every optimizer step as `shadow += (1 - decay) * (weight - shadow)`, and
saved in the resumable state so a resumed run averages exactly as an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


class WeightEMA:
    """The EMA of `params` (the optimizer's parameters, in their fixed order)."""

    def __init__(self, params: list[torch.nn.Parameter], decay: float, on_cpu: bool = False):
        self.params, self.decay = params, float(decay)
        self.shadow = [p.detach().to("cpu" if on_cpu else p.device, torch.float32, copy=True) for p in params]

    @torch.no_grad()
    def update(self) -> None:
        weight = 1.0 - self.decay
        for s, p in zip(self.shadow, self.params, strict=True):
            s.lerp_(p.detach().to(s.device, torch.float32), weight)

    def state(self) -> dict[str, torch.Tensor]:
        """Tensors for the resumable state (`ema.NNNN`, in parameter order)."""
        return {f"ema.{i:04d}": s for i, s in enumerate(self.shadow)}

    def load_state(self, saved: dict[str, torch.Tensor], path: str) -> None:
        from lora_trainer.errors import ConfigError

        mine = self.state()
        if saved.keys() != mine.keys() or any(saved[k].shape != s.shape for k, s in mine.items()):
            raise ConfigError("resume_from_checkpoint", f"{path}: the saved EMA weights do not fit this network "
                                                        "(other network settings?)")
        for key, s in mine.items():
            s.copy_(saved[key])

    @contextmanager
    def swapped(self) -> Iterator[None]:
        """The parameters hold the EMA weights inside the block (to save them), their own values after."""
        kept = [p.detach().clone() for p in self.params]
        with torch.no_grad():
            for p, s in zip(self.params, self.shadow, strict=True):
                p.copy_(s.to(p.device, p.dtype))
        try:
            yield
        finally:
            with torch.no_grad():
                for p, k in zip(self.params, kept, strict=True):
                    p.copy_(k)
