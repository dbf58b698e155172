"""What a FLUX.1 / Chroma LoRA run keeps in GPU memory, and the settings to try per card size.

Why: a user with a 12 GB card must learn before loading 24 GB of weights which settings fit. The
weight sizes here are exact (parameter counts of the shipped real configs, built on the meta
device, times the storage dtype), and so are the full-size deltas LoHa / LoKr / DoRA build per wrapped
weight (`lora.estimate.DELTA_COPIES`); activations are not estimated (they depend on resolution, batch and
checkpointing, and are measured on a GPU). The suggestions are kohya sd-scripts' documented ones
(docs/flux_train_network.md, "with --fp8_base"): 24 GB basic (batch 2), 16 GB batch 1 + block swap,
12 GB 16 blocks swapped + 8-bit AdamW, 10 GB 22 blocks + fp8 T5, 8 GB 28 blocks + fp8 T5.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from lora_trainer.errors import ConfigError
from lora_trainer.models.flux_widths import (
    Widths,
    run_layers,
    run_transformer,
    run_widths,
    shipped_transformer,
    target_layers,
)

if TYPE_CHECKING:
    from lora_trainer.config import TrainConfig
    from lora_trainer.lora.spec import NetworkSpec

GB = 1024 ** 3
SUGGESTIONS = (  # (card GB, settings) from kohya's table
    (24, {"fp8_base": True, "blocks_to_swap": 0, "batch_size": 2, "optimizer": "adamw"}),
    (16, {"fp8_base": True, "blocks_to_swap": 8, "batch_size": 1, "optimizer": "adamw"}),
    (12, {"fp8_base": True, "blocks_to_swap": 16, "batch_size": 1, "optimizer": "adamw8bit"}),
    (10, {"fp8_base": True, "blocks_to_swap": 22, "batch_size": 1, "optimizer": "adamw8bit", "t5_fp8": True}),
    (8, {"fp8_base": True, "blocks_to_swap": 28, "batch_size": 1, "optimizer": "adamw8bit", "t5_fp8": True}),
)


@dataclass(frozen=True)
class FluxSizes:
    """Parameter counts of a real model's parts."""

    double_block: int
    single_block: int
    n_double: int
    n_single: int
    other: int      # embedders and final layer (always resident)
    t5: int
    clip_l: int     # 0 for Chroma
    vae: int

    @property
    def transformer(self) -> int:
        return self.double_block * self.n_double + self.single_block * self.n_single + self.other


@lru_cache(maxsize=4)
def real_sizes(kind: str) -> FluxSizes:
    """Exact counts from the shipped configs (FLUX.1-dev / -schnell / Chroma, T5-XXL encoder, CLIP-L, ae)."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from lora_trainer.models.flux_configs import constructor_config as clean
    from lora_trainer.models.flux_tiny import transformer_class

    def count(m: Any) -> int:
        return sum(p.numel() for p in m.parameters())

    with init_empty_weights():
        tr = transformer_class(kind)(**clean(f"transformer-{kind}"))
        t5 = T5EncoderModel(T5Config(**clean("t5xxl")))
        vae = AutoencoderKL(**clean("vae"))
        clip = CLIPTextModel(CLIPTextConfig(**clean("clip_l"))) if kind != "chroma" else None
    d, s = count(tr.transformer_blocks[0]), count(tr.single_transformer_blocks[0])
    nd, ns = len(tr.transformer_blocks), len(tr.single_transformer_blocks)
    return FluxSizes(d, s, nd, ns, count(tr) - d * nd - s * ns, count(t5), count(clip) if clip else 0, count(vae))


def swap_split(sizes: FluxSizes, blocks_to_swap: int) -> tuple[int, int]:
    """(double, single) blocks kept in CPU memory for kohya's `--blocks_to_swap N`: N // 2 double blocks and
    (N - N // 2) * 2 single blocks (a double block is about two single ones), at most all but 2 of each
    (so up to 35 for FLUX.1; library/flux_models.py `enable_block_swap`)."""
    doubles = blocks_to_swap // 2
    singles = (blocks_to_swap - doubles) * 2
    if blocks_to_swap < 0 or doubles > sizes.n_double - 2 or singles > sizes.n_single - 2:
        most = max(n for n in range(2 * (sizes.n_double + sizes.n_single))
                   if n // 2 <= sizes.n_double - 2 and (n - n // 2) * 2 <= sizes.n_single - 2)
        raise ValueError(f"blocks_to_swap must be 0-{most}, got {blocks_to_swap}")
    return doubles, singles


def swapped_params(sizes: FluxSizes, blocks_to_swap: int) -> int:
    """Parameters kept in CPU memory when `blocks_to_swap` blocks are swapped (see `swap_split`)."""
    doubles, singles = swap_split(sizes, blocks_to_swap)
    return doubles * sizes.double_block + singles * sizes.single_block


def weight_memory(kind: str, *, fp8_base: bool = False, blocks_to_swap: int = 0, rank: int = 16,
                  optimizer: str = "adamw", t5_fp8: bool = False, compute_bytes: int = 2,
                  adapter_params: int | None = None, delta_params: int = 0) -> dict[str, float]:
    """GB of GPU memory for weights and optimizer state during training (text encoders are needed only
    while caching their outputs, so they are reported apart, not added): transformer (resident part),
    adapter parameters + gradients + optimizer state (`adapter_params`; default a rank-`rank` LoRA), the
    full-size fp32 deltas a LoHa / LoKr / DoRA keeps for the backward pass (`delta_params` values, see
    `delta_values`), and the peak while encoding text."""
    sizes = real_sizes(kind)
    base_bytes = 1 if fp8_base else compute_bytes
    resident = (sizes.transformer - swapped_params(sizes, blocks_to_swap)) * base_bytes
    lora = lora_params(kind, rank) if adapter_params is None else adapter_params
    state_per_param = {"adamw": 8, "adamw8bit": 2, "lion": 4, "prodigy": 16, "sgd": 0}.get(optimizer, 8)
    train = lora * (4 + 4 + state_per_param)  # fp32 weights + grads + state
    deltas = delta_params * 4
    text = sizes.t5 * (1 if t5_fp8 else compute_bytes) + sizes.clip_l * compute_bytes
    out = {"transformer_gb": resident / GB, "lora_and_optimizer_gb": train / GB}
    if deltas:
        out["adapter_deltas_gb"] = deltas / GB
    return {**out, "text_encoders_gb": text / GB, "vae_gb": sizes.vae * compute_bytes / GB,
            "training_weights_gb": (resident + train + deltas) / GB}


def delta_values(cfg: TrainConfig, kind: str, network_type: str, dora_wd: bool, *, real: bool = False) -> int:
    """fp32 values of the full-size deltas a LoHa / LoKr / DoRA keeps at once (`lora.estimate.delta_copies`):
    every wrapped weight's, or with gradient checkpointing (the transformer recomputes one block at a time)
    the largest block's plus CLIP-L's; on the run's model, or the real `kind` model (`real`)."""
    from lora_trainer.lora.estimate import delta_copies, layer_weights
    from lora_trainer.lora.spec import NetworkSpec

    copies = delta_copies(NetworkSpec(network_type, dora_wd=dora_wd))
    if not copies:
        return 0
    layers = run_layers(cfg, kind, network_type, dora_wd, real=real)
    size = {part: layer_weights(ls) for part, ls in layers.items()}
    if cfg.gradient_checkpointing and "transformer" in layers:
        w, config = run_widths(cfg, network_type, dora_wd), shipped_transformer(kind) if real else run_transformer(cfg, kind)
        one = [target_layers(kind, Widths(w.layers, d, s, w.fused), config) for d, s in (("0", "none"), ("none", "0"))]
        size["transformer"] = max(layer_weights(ls) for ls in one)
    return copies * sum(size.values())


def lora_params(kind: str, rank: int) -> int:
    """LoRA parameters on every block Linear (attention, MLP, modulation where the model has it)."""
    from lora_trainer.lora.estimate import adapter_params
    from lora_trainer.lora.spec import NetworkSpec

    return adapter_params(NetworkSpec("lora", rank=rank), target_layers(kind, Widths(), shipped_transformer(kind)))[0]




def suggest(vram_gb: float) -> dict[str, Any]:
    """kohya's documented settings for the largest listed card not above `vram_gb` (8 GB's below 8)."""
    for card, settings in SUGGESTIONS:
        if vram_gb >= card:
            return {"card_gb": card, **settings}
    return {"card_gb": SUGGESTIONS[-1][0], **SUGGESTIONS[-1][1]}


def flux_plan_memory(cfg: TrainConfig, kind: str, spec: NetworkSpec | None = None) -> tuple[dict[str, float], dict[str, dict[str, Any]]]:
    """For the dry-run plan: GB per component of the real `kind` model at the run's settings (fp8_base,
    blocks_to_swap, the network `spec`'s type and ranks (default: a LoRA of lora_rank), the trained parts,
    optimizer, precision), and kohya's settings for 8 / 12 / 16 / 24 GB cards (with gradient checkpointing, which
    its table assumes, added when the run has it off)."""
    from lora_trainer.lora.estimate import adapter_params
    from lora_trainer.lora.spec import NetworkSpec

    spec = spec or NetworkSpec("lora", rank=cfg.lora_rank)
    try:
        swap_split(real_sizes(kind), cfg.blocks_to_swap)
    except ValueError as e:  # the real model's limit, in the config's words (the loader checks the run's model)
        sizes = real_sizes(kind)
        raise ConfigError("blocks_to_swap", f"{e} (the real {kind} has {sizes.n_double} double and "
                                            f"{sizes.n_single} single blocks; 2 of each stay on the GPU)") from None
    layers = run_layers(cfg, kind, spec.network_type, spec.dora_wd, real=True)
    mem = weight_memory(kind, fp8_base=cfg.fp8_base, blocks_to_swap=cfg.blocks_to_swap, optimizer=cfg.optimizer,
                        compute_bytes=2 if cfg.mixed_precision in ("fp16", "bf16") else 4,
                        adapter_params=sum(adapter_params(spec, ls)[0] for ls in layers.values()),
                        delta_params=delta_values(cfg, kind, spec.network_type, spec.dora_wd, real=True))
    parts = {k: round(v, 2) for k, v in mem.items()}
    suggestions = {}
    for gb in (8, 12, 16, 24):
        s = dict(suggest(gb))
        s.pop("card_gb")
        if s.pop("t5_fp8", False):
            s["t5xxl_path"] = "a t5xxl_fp8_e4m3fn file"
        if not cfg.gradient_checkpointing:  # kohya's table assumes it (its base command has it); LoHa / LoKr /
            s["gradient_checkpointing"] = True  # DoRA's deltas shrink from every block's to one block's with it
        suggestions[f"{gb} GB"] = s
    return parts, suggestions
