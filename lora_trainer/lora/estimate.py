"""Trainable parameters and model widths per network type, from the architecture tables alone.

Why: the dry-run plan shows the file size and checks a LoKr factor before any model is loaded, so
both come from `data.arch_tables` (the (in, out, kernel, count) lists kohya's module sets give).
"""

from __future__ import annotations

from lora_trainer.data.arch_tables import TEXT_ENCODERS, UNET_ATTN, UNET_CONV, Layer
from lora_trainer.lora.modules_lokr import factorization
from lora_trainer.lora.spec import NetworkSpec


def arch_dims(arch: str) -> set[int]:
    """Every in/out width a LoRA target of `arch` has (what `NetworkSpec.validate(dims=...)` checks)."""
    layers = UNET_ATTN[arch] + UNET_CONV[arch] + [x for te in TEXT_ENCODERS[arch] for x in te]
    return {d for fan_in, fan_out, _, _ in layers for d in (fan_in, fan_out)}


def _one(spec: NetworkSpec, fan_in: int, fan_out: int, k: int, r: int) -> int:
    kk = k * k
    if spec.algo == "loha":
        n = 2 * r * (fan_in * kk + fan_out)
    elif spec.algo == "lokr":
        a, c = factorization(fan_out, spec.lokr_factor)
        b, d = factorization(fan_in, spec.lokr_factor)
        full = spec.lokr_full_rank or r >= max(c, d) / 2
        n = a * b + (c * d * kk if full else r * (c + d * kk))
    else:
        n = r * (fan_in * kk + fan_out)
    return n + (fan_in if spec.weight_decompose else 0)


# Full-size fp32 tensors per wrapped weight that autograd keeps for the backward pass, by (type, DoRA
# magnitude), measured on the tiny FLUX.1 (tests/flux/test_flux_memory.py; the module code is the same for
# every model): LoRA none (it keeps rank-wide activations only), LoKr its kron product, LoHa its factor
# products and their product; a DoRA magnitude adds the merged weight, its transposed copy for the norm and
# the rescaled result.
DELTA_COPIES = {("loha", False): 3, ("lokr", False): 1, ("dora", True): 3, ("loha", True): 6, ("lokr", True): 3}


def delta_copies(spec: NetworkSpec) -> int:
    """How many full-size copies of each wrapped weight `spec`'s modules keep during a step (LoRA: 0)."""
    return DELTA_COPIES.get((spec.network_type, spec.weight_decompose), 0)


def layer_weights(layers: list[Layer]) -> int:
    """Values of the wrapped weights themselves (what one full-size delta copy holds)."""
    return sum(fan_in * fan_out * k * k * count for fan_in, fan_out, k, count in layers)


def adapter_params(spec: NetworkSpec, layers: list[Layer]) -> tuple[int, int]:
    """(trainable parameters, modules) of `spec`'s kind on `layers` (block-wise ranks not counted)."""
    params = modules = 0
    for fan_in, fan_out, k, count in layers:
        r = spec.rank if k == 1 else spec.effective_conv_rank
        if r <= 0:
            continue
        params += count * _one(spec, fan_in, fan_out, k, r)
        modules += count
    return params, modules
