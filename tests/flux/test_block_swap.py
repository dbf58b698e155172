"""Block swap on CPU: every swapped block copies its weights in for its forward (and, under gradient
checkpointing, again for the recomputation in backward), the module keeps its own Parameters, and the loss
and LoRA gradients equal the plain run exactly. (The memory it saves is measured on a GPU.)"""

from __future__ import annotations

import copy

import pytest
import torch
from flux_helpers import transformer_inputs
from torch import nn

from lora_trainer.lora.discovery_flux import flux_transformer_targets
from lora_trainer.lora.network import LoRANetwork
from lora_trainer.models.block_swap import BlockSwap, flux_swap_blocks


def _run(parts, transformer, *, swap: bool, checkpointing: bool):
    if checkpointing:
        transformer.enable_gradient_checkpointing()
        transformer.train()  # diffusers < 0.32 checkpoints only in training mode (Flux has no dropout)
    torch.manual_seed(0)
    net = LoRANetwork(flux_transformer_targets(transformer, chroma=False), rank=4, alpha=4)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in net.loras.values():
            m.lora_up.weight.copy_(torch.randn(m.lora_up.weight.shape, generator=g) * 0.05)
    blocks = [*transformer.transformer_blocks, *transformer.single_transformer_blocks]
    params = {id(p) for b in blocks for p in b.parameters()}
    swapper = BlockSwap(blocks, "cpu").attach() if swap else None
    seen: list[bool] = []  # inside the block's forward: does the slot hold the Parameter, or a copy?
    probe = transformer.transformer_blocks[0].attn.to_q
    hook = probe.register_forward_pre_hook(lambda m, a: seen.append(isinstance(m._parameters["weight"], nn.Parameter)))
    net.attach()
    try:
        loss = transformer(**transformer_inputs(parts)).sample.pow(2).mean()
        loss.backward()
    finally:
        net.detach()
        hook.remove()
        copies = swapper.copies if swapper is not None else 0
        if swapper is not None:
            assert ("prefetched", 1) in swapper.events  # the prefetch path ran
            swapper.detach()
    assert {id(p) for b in blocks for p in b.parameters()} == params  # the module's own Parameters afterwards
    assert seen and all(s != swap for s in seen)  # swapped: every forward (and recomputation) ran on a copy
    return loss.detach(), {n: m.lora_down.weight.grad.clone() for n, m in net.loras.items()}, copies


@pytest.mark.parametrize("checkpointing", [True, False])
def test_block_swap_equals_the_plain_run(tiny_flux, checkpointing):
    parts = dict(tiny_flux)
    plain = copy.deepcopy(parts["transformer"]).requires_grad_(False)
    swapped = copy.deepcopy(parts["transformer"]).requires_grad_(False)
    before = {k: v.clone() for k, v in swapped.state_dict().items()}
    loss0, grads0, _ = _run(parts, plain, swap=False, checkpointing=checkpointing)
    loss1, grads1, copies = _run(parts, swapped, swap=True, checkpointing=checkpointing)
    assert torch.equal(loss0, loss1)
    assert all(torch.equal(grads0[n], grads1[n]) for n in grads0)
    assert copies == (8 if checkpointing else 4)  # 4 blocks; checkpointing runs each forward again in backward
    after = swapped.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert "forward" not in swapped.transformer_blocks[0].__dict__  # detach restored the class forward


def test_block_swap_refuses_trainable_weights_and_counts_like_kohya(tiny_flux):
    from accelerate import init_empty_weights

    from lora_trainer.models.flux_configs import shipped_config
    from lora_trainer.models.flux_tiny import transformer_class

    trainable = copy.deepcopy(tiny_flux["transformer"].transformer_blocks[0]).requires_grad_(True)
    with pytest.raises(ValueError, match="frozen"):
        BlockSwap([trainable], "cpu").attach()
    cfg = {k: v for k, v in shipped_config("transformer-flux-dev").items() if not k.startswith("_")}
    with init_empty_weights():
        real = transformer_class("flux-dev")(**cfg)
    chosen = flux_swap_blocks(real, 16)
    assert chosen[:8] == list(real.transformer_blocks[11:])
    assert chosen[8:] == list(real.single_transformer_blocks[22:])
    with pytest.raises(ValueError, match="too many"):
        flux_swap_blocks(real, 40)  # 20 double blocks; FLUX.1 has 19


# ---- prefetch: which block's copy is in flight when ------------------------------------------------------
class _Block(nn.Module):
    def __init__(self, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.lin = nn.Linear(8, 8).requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.lin(x))


def _steps(swap: BlockSwap | None, blocks: list[nn.Module], *, checkpointing: bool, steps: int = 2):
    """`steps` forward/backward passes through the blocks with a trainable input scale; the grads."""
    from torch.utils.checkpoint import checkpoint

    device = swap.device if swap is not None else next(blocks[0].parameters()).device
    scale = nn.Parameter(torch.ones(8, device=device))
    x = torch.linspace(-1, 1, 16, device=device).reshape(2, 8)
    grads = []
    for _ in range(steps):
        h = x * scale
        for b in blocks:
            h = checkpoint(b, h, use_reentrant=False) if checkpointing else b(h)
        h.pow(2).sum().backward()
        grads.append(scale.grad.clone())
        scale.grad = None
    return grads


def _swapped_steps(blocks: list[nn.Module], device: str = "cpu", *, checkpointing: bool,
                   prefetch: bool = True) -> tuple[BlockSwap, list[torch.Tensor]]:
    """`_steps` with the blocks under a BlockSwap (detached after): the swap (its event log) and the grads."""
    swap = BlockSwap(blocks, device, prefetch=prefetch).attach()
    try:
        return swap, _steps(swap, blocks, checkpointing=checkpointing)
    finally:
        swap.detach()


def test_prefetch_issues_the_next_block_while_one_runs_and_backward_goes_downward():
    blocks = [_Block(i) for i in range(4)]
    swap, grads = _swapped_steps(blocks, checkpointing=True)
    forward = [("copied", 0), ("prefetch", 1), ("prefetched", 1), ("prefetch", 2), ("prefetched", 2),
               ("prefetch", 3), ("prefetched", 3)]
    # backward recomputes from the last block down; the turn at block 3 is copied, the rest were prefetched,
    # and the visit to block 0 already sends block 1 for the next step's forward
    backward = [("copied", 3), ("prefetch", 2), ("prefetched", 2), ("prefetch", 1), ("prefetched", 1),
                ("prefetch", 0), ("prefetched", 0), ("prefetch", 1)]
    second_forward = [("copied", 0), ("prefetched", 1), ("prefetch", 2), ("prefetched", 2), ("prefetch", 3),
                      ("prefetched", 3)]
    assert list(swap.events) == forward + backward + second_forward + backward
    plain = _steps(None, blocks, checkpointing=True)
    assert all(torch.equal(a, b) for a, b in zip(grads, plain, strict=True))


def test_without_checkpointing_each_forward_prefetches_all_but_its_first_block():
    blocks = [_Block(i) for i in range(3)]
    swap, grads = _swapped_steps(blocks, checkpointing=False)
    one = [("copied", 0), ("prefetch", 1), ("prefetched", 1), ("prefetch", 2), ("prefetched", 2)]
    assert list(swap.events) == one + one
    off, off_grads = _swapped_steps(blocks, checkpointing=False, prefetch=False)
    assert all(torch.equal(a, b) for a, b in zip(off_grads, grads, strict=True))
    assert list(off.events) == [("copied", i) for i in range(3)] * 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: the side-stream copies and their events")
def test_cuda_prefetch_on_a_side_stream_equals_the_plain_run():
    blocks = [_Block(i) for i in range(4)]
    plain = _steps(None, [copy.deepcopy(b).cuda() for b in blocks], checkpointing=True)
    swap, swapped = _swapped_steps(blocks, "cuda", checkpointing=True)
    assert swap._stream is not None
    assert ("prefetched", 2) in swap.events
    assert all(torch.equal(a.cpu(), b.cpu()) for a, b in zip(swapped, plain, strict=True))
