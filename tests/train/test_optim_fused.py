"""The optimizer's kernel choice (fused AdamW where torch has it) keeps AdamW's results."""

from __future__ import annotations

import torch

from lora_trainer.config import load_config
from lora_trainer.train.optim import build_optimizer


def _cfg(**extra: object):
    return load_config({"base_model": "builtin:tiny-sd1", "train_data_dir": ".", "optimizer": "adamw",
                        "learning_rate": 1e-2, "weight_decay": 0.01, **extra})


def _params(seed: int) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(8, 4, generator=g)), torch.nn.Parameter(torch.randn(16, generator=g))]


def _run(opt: torch.optim.Optimizer, params: list[torch.nn.Parameter]) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        for p in params:
            p.grad = torch.randn(p.shape, generator=g)
        opt.step()
    return [p.detach().clone() for p in params]


def test_adamw_is_fused_on_cpu_and_matches_foreach() -> None:
    fused_params = _params(0)
    fused = build_optimizer([{"params": fused_params}], _cfg())
    assert fused.defaults.get("fused") is True
    foreach_params = _params(0)
    foreach = build_optimizer([{"params": foreach_params}], _cfg(optimizer_args={"foreach": True}))
    assert foreach.defaults.get("foreach") is True and not foreach.defaults.get("fused")
    for a, b in zip(_run(fused, fused_params), _run(foreach, foreach_params), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_adamw_not_fused_for_non_float_or_mixed_devices() -> None:
    meta = torch.nn.Parameter(torch.zeros(3, device="meta"))
    opt = build_optimizer([{"params": [meta]}], _cfg())
    assert not opt.defaults.get("fused") and opt.defaults.get("foreach") is True
