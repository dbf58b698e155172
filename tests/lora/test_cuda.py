"""The same guarantees on a GPU with a half-precision base (skipped where no CUDA device exists)."""

from __future__ import annotations

import pytest
import torch
from lora_test_models import OpenClipText, randomize_lora
from test_kinds_network import randomize
from test_network import module_fingerprint
from torch import nn

from lora_trainer.lora.discovery import open_clip_targets
from lora_trainer.lora.network import LoRANetwork
from lora_trainer.lora.spec import NetworkSpec
from lora_trainer.lora.target import LoraTarget

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 8, 3, padding=1)
        self.proj = nn.Conv2d(8, 32, 1)
        self.lin = nn.Linear(32, 32)
        self.text = OpenClipText(d=32, layers=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.proj(self.conv(x)).flatten(2).permute(2, 0, 1)  # [L, B, 32]
        return self.text(self.lin(h))


@pytest.mark.parametrize("ntype", ["lora", "loha", "lokr", "dora"])
@pytest.mark.parametrize("base_dtype, amp", [(torch.float16, torch.float16), (torch.bfloat16, torch.bfloat16),
                                             (torch.float32, torch.bfloat16)])
def test_gpu_half_base_train_step_and_exact_restore(base_dtype, amp, ntype):
    torch.manual_seed(0)
    model = Tiny().to("cuda", base_dtype).requires_grad_(False)
    targets = [LoraTarget("lora_unet_conv", model.conv, "conv"), LoraTarget("lora_unet_proj", model.proj, "conv1x1"),
               LoraTarget("lora_unet_lin", model.lin)] + open_clip_targets(model.text.transformer, "lora_te")
    x = torch.randn(2, 4, 6, 6, device="cuda", dtype=base_dtype)
    fp = module_fingerprint(model)
    with torch.no_grad():
        base = model(x)
    net = LoRANetwork.from_spec(targets, NetworkSpec(ntype, rank=4, alpha=4, conv_rank=2, dropout=0.1))
    assert all(p.device.type == "cuda" and p.dtype == torch.float32 for p in net.parameters())
    if ntype == "lora":
        randomize_lora(net)  # randn on CPU then copied: fine for any device
    else:
        randomize(net)
    net.attach()
    try:
        net.train()
        opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
        with torch.autocast("cuda", dtype=amp):
            out = model(x)
        loss = out.float().pow(2).mean()
        loss.backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())
        opt.step()
        net.eval()
        with torch.no_grad():
            net.multiplier = 0.0
            assert torch.equal(model(x), base)
            net.multiplier = 1.0
            assert not torch.equal(model(x), base)
    finally:
        net.detach()
    assert module_fingerprint(model) == fp
    assert not any(p.grad is not None for p in model.parameters())
    with torch.no_grad():
        assert torch.equal(model(x), base)
        net.merge_into_base()
        assert module_fingerprint(model) != fp
        net.unmerge()
    assert module_fingerprint(model) == fp
    sd = net.kohya_state_dict()
    assert all(t.device.type == "cpu" and t.dtype == torch.float16 for t in sd.values())
    assert len({k.split(".", 1)[1] for k in sd}) >= 3
