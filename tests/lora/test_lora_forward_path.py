"""LoRAModule.lora_out calls its layers' ops directly; it must equal the layers' own forward."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lora_trainer.lora.modules_lora import LoRAModule


@pytest.mark.parametrize("alpha", [4.0, 2.0])
@pytest.mark.parametrize("conv", [False, True])
def test_lora_out_equals_module_forward(conv: bool, alpha: float) -> None:
    torch.manual_seed(0)
    base = nn.Conv2d(6, 10, 3, stride=2, padding=1) if conv else nn.Linear(6, 10)
    mod = LoRAModule("m", base, rank=4, alpha=alpha, conv=conv)
    nn.init.normal_(mod.lora_up.weight)
    x = torch.randn(2, 6, 9, 9) if conv else torch.randn(3, 5, 6)
    want = mod.lora_up(mod.lora_down(x)) * (alpha / 4)
    assert torch.equal(mod.lora_out(x), want)
    assert mod.lora_out(x).shape == base(x).shape
