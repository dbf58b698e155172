"""fp8 storage of the frozen base: the same outputs and LoRA gradients as a model whose weights were
rounded to fp8, at a quarter of the block weights' memory (CPU; the GPU memory check needs a device)."""

from __future__ import annotations

import copy

import torch
from flux_helpers import transformer_inputs

from lora_trainer.lora.discovery_flux import flux_transformer_targets
from lora_trainer.lora.network import LoRANetwork
from lora_trainer.models.fp8_storage import in_blocks, store_fp8, weight_bytes


def _rounded(parts):
    """The reference: float32 weights holding exactly the fp8-representable values."""
    ref = copy.deepcopy(parts["transformer"])
    with torch.no_grad():
        for path, m in ref.named_modules():
            if isinstance(m, torch.nn.Linear) and in_blocks(path):
                m.weight.copy_(m.weight.to(torch.float8_e4m3fn).float())
    return ref


def _loss_and_grads(transformer, parts, seed=0):
    torch.manual_seed(seed)  # the same LoRA init for both models
    net = LoRANetwork(flux_transformer_targets(transformer, chroma=parts["kind"] == "chroma"), rank=4, alpha=4)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.loras.values():
            m.lora_up.weight.copy_(torch.randn(m.lora_up.weight.shape, generator=g) * 0.05)
    net.attach()
    try:
        out = transformer(**transformer_inputs(parts)).sample
        loss = out.pow(2).mean()
        loss.backward()
    finally:
        net.detach()
    return loss.detach(), {n: m.lora_down.weight.grad.clone() for n, m in net.loras.items()}


def test_fp8_storage_equals_the_fp8_rounded_model(tiny_flux):
    parts = dict(tiny_flux)
    ref = _rounded(parts)
    fp8 = copy.deepcopy(parts["transformer"])
    before = weight_bytes(fp8)
    done = store_fp8(fp8, select=in_blocks)
    assert done and all(in_blocks(p) for p in done)
    block_linear_bytes = sum(m.weight.numel() * 4 for p, m in ref.named_modules()
                             if isinstance(m, torch.nn.Linear) and in_blocks(p))
    assert before - weight_bytes(fp8) == block_linear_bytes * 3 // 4
    assert fp8.transformer_blocks[0].attn.to_q.weight.dtype == torch.float8_e4m3fn
    assert not fp8.transformer_blocks[0].attn.to_q.weight.requires_grad
    ref_loss, ref_grads = _loss_and_grads(ref, {**parts, "transformer": ref})
    loss, grads = _loss_and_grads(fp8, {**parts, "transformer": fp8})
    assert torch.equal(loss, ref_loss)
    for n, gr in ref_grads.items():
        assert torch.equal(grads[n], gr), n
    assert store_fp8(fp8, select=in_blocks) == []  # idempotent
