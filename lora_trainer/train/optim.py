"""Optimizers and learning-rate schedulers by name (shared with the LLM trainer).

`build_optimizer(param_groups, cfg)` reads `optimizer`, `learning_rate`, `weight_decay`,
`optimizer_args`; `build_scheduler(opt, cfg, total_steps)` reads `lr_scheduler`, `lr_warmup_steps`.
Optional optimizers (bitsandbytes, lion-pytorch, prodigyopt) are imported only when chosen.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch

from lora_trainer.errors import ConfigError

if TYPE_CHECKING:
    from lora_trainer.config import TrainConfig

OPTIMIZERS = ("adamw", "adamw8bit", "lion", "prodigy", "sgd")
SCHEDULERS = ("constant", "constant_with_warmup", "cosine", "linear")


class _Lion(torch.optim.Optimizer):
    """Lion (sign of an interpolated momentum); used only when lion-pytorch is missing."""

    def __init__(self, params: Any, lr: float = 1e-4, betas: tuple[float, float] = (0.9, 0.99),
                 weight_decay: float = 0.0):
        super().__init__(params, {"lr": lr, "betas": betas, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "exp_avg" not in state:
                    state["exp_avg"] = torch.zeros_like(p)
                exp_avg = state["exp_avg"]
                p.mul_(1 - group["lr"] * group["weight_decay"])
                update = exp_avg.mul(beta1).add(p.grad, alpha=1 - beta1).sign_()
                p.add_(update, alpha=-group["lr"])
                exp_avg.mul_(beta2).add_(p.grad, alpha=1 - beta2)
        return loss


def _fused_ok(groups: list[dict[str, Any]]) -> bool:
    """torch's fused AdamW takes floating-point tensors on one CPU or CUDA device."""
    params = [p for g in groups for p in g["params"]]
    devices = {p.device.type for p in params}
    return len(devices) == 1 and devices <= {"cpu", "cuda"} and all(p.is_floating_point() for p in params)


def build_optimizer(param_groups: list[dict[str, Any]], cfg: TrainConfig) -> torch.optim.Optimizer:
    """Optimizer named by `cfg.optimizer` over `param_groups` (each group may carry its own `lr`)."""
    name = cfg.optimizer.lower().replace("_", "").replace("-", "")
    lr, wd = float(cfg.learning_rate), float(cfg.weight_decay)
    extra = dict(cfg.optimizer_args)
    groups = [g for g in param_groups if any(p.requires_grad for p in g["params"])]
    if not groups:
        raise ConfigError("train_unet", "nothing to train: both train_unet and train_text_encoder are off "
                                        "(or the model has no LoRA targets)")
    kwargs: dict[str, Any] = {"lr": lr, "weight_decay": wd, **extra}
    if name == "adamw" and "foreach" not in extra and _fused_ok(groups):
        # hundreds of small LoRA tensors: the fused kernel does the whole update of a tensor in one
        # pass (CPU and CUDA); foreach on CPU still runs ~12 scalar ops per tensor (profiled: 10% of
        # the tiny model's step, and the 2,300 Python-scalar-to-tensor copies per step)
        kwargs.setdefault("fused", True)
    elif name in ("adamw", "sgd") and "fused" not in extra:
        # one multi-tensor kernel per op instead of one per tensor (torch picks this itself on CUDA only)
        kwargs.setdefault("foreach", True)
    if name == "adamw":
        return torch.optim.AdamW(groups, **kwargs)
    if name == "sgd":
        kwargs.setdefault("momentum", 0.9)
        return torch.optim.SGD(groups, **kwargs)
    if name == "adamw8bit":
        try:
            import bitsandbytes as bnb  # type: ignore[import-not-found]
        except ImportError as exc:
            raise ConfigError("optimizer", "adamw8bit needs bitsandbytes (pip install bitsandbytes, "
                                           "CUDA only); use optimizer: adamw instead") from exc
        return bnb.optim.AdamW8bit(groups, **kwargs)
    if name == "lion":
        try:
            from lion_pytorch import Lion  # type: ignore[import-not-found]
        except ImportError:
            return _Lion(groups, **kwargs)
        return Lion(groups, **kwargs)
    if name == "prodigy":
        try:
            from prodigyopt import Prodigy  # type: ignore[import-not-found]
        except ImportError as exc:
            raise ConfigError("optimizer", "prodigy needs the prodigyopt package (pip install prodigyopt)") from exc
        # Prodigy estimates the step size itself; the usual learning rate is 1.0
        return Prodigy(groups, **kwargs)
    raise ConfigError("optimizer", f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")


def lr_lambda(name: str, warmup: int, total_steps: int):
    """Multiplier of the base lr at a 0-based step (a plain function so it can be tested alone)."""
    total = max(1, int(total_steps))

    def fn(step: int) -> float:
        if name != "constant" and warmup > 0 and step < warmup:
            return (step + 1) / warmup
        if name in ("constant", "constant_with_warmup"):
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        if name == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return max(0.0, 1.0 - progress)  # linear

    return fn


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """LambdaLR for `cfg.lr_scheduler` with `cfg.lr_warmup_steps` (an int, or a float < 1 = fraction)."""
    name = cfg.lr_scheduler.lower()
    if name not in SCHEDULERS:
        raise ConfigError("lr_scheduler", f"unknown scheduler {name!r}; choose one of {', '.join(SCHEDULERS)}")
    warm = cfg.lr_warmup_steps
    warmup = int(warm * total_steps) if isinstance(warm, float) and 0 < warm < 1 else int(warm)
    if name == "constant" and warmup > 0:
        name = "constant_with_warmup"
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(name, warmup, total_steps))
