"""A parameter the model's own forward swaps for a cast copy comes back as the very object it was."""

from __future__ import annotations

import torch

from lora_trainer.models.snapshot import ModelSnapshot


class LazyCastNorm(torch.nn.Module):
    """As Forge's RMSNorm: the first forward in another dtype replaces `scale` by a cast copy."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(4, dtype=torch.float16))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.scale.dtype != x.dtype:
            self.scale = torch.nn.Parameter(self.scale.to(x.dtype), requires_grad=False)
        return x * self.scale


def test_a_parameter_replaced_by_the_models_forward_is_put_back():
    model = torch.nn.Sequential(LazyCastNorm())
    original = model[0].scale
    snap = ModelSnapshot.take(model)
    model(torch.ones(2, 4))
    assert model[0].scale is not original and model[0].scale.dtype == torch.float32
    assert any("0.scale" in d for d in snap.differences(model))
    snap.restore(model)
    assert model[0].scale is original and original.dtype == torch.float16 and original.requires_grad
    assert snap.differences(model) == []
