"""Weight memory of the real FLUX.1 / Chroma models (exact parameter counts, meta device) and the suggested
settings per card size."""

from __future__ import annotations

import pytest

from lora_trainer.models.flux_memory import real_sizes, suggest, swap_split, weight_memory


def test_real_parameter_counts():
    dev = real_sizes("flux-dev")
    assert 11.8e9 < dev.transformer < 12.0e9        # "12B" FLUX.1
    assert (dev.n_double, dev.n_single) == (19, 38)
    assert dev.double_block > 2 * dev.single_block * 0.9  # a double block is about two single ones
    assert 4.7e9 < dev.t5 < 5.0e9 and 1.2e8 < dev.clip_l < 1.3e8


def test_real_parameter_counts_chroma():
    chroma = real_sizes("chroma")
    assert 8.8e9 < chroma.transformer < 9.0e9 and chroma.clip_l == 0  # "8.9B" Chroma, T5 only


def test_block_swap_follows_kohya():
    sizes = real_sizes("flux-dev")
    assert swap_split(sizes, 16) == (8, 16) and swap_split(sizes, 35) == (17, 36)
    with pytest.raises(ValueError, match="0-35"):
        swap_split(sizes, 36)


def test_fp8_and_swap_shrink_the_resident_weights():
    bf16 = weight_memory("flux-dev")
    fp8 = weight_memory("flux-dev", fp8_base=True)
    swap = weight_memory("flux-dev", fp8_base=True, blocks_to_swap=16, optimizer="adamw8bit")
    assert 22 < bf16["transformer_gb"] < 22.5 and fp8["transformer_gb"] == pytest.approx(bf16["transformer_gb"] / 2)
    assert swap["training_weights_gb"] < 10 < fp8["training_weights_gb"] < 13
    assert suggest(12)["blocks_to_swap"] == 16 and suggest(24)["blocks_to_swap"] == 0 and suggest(6)["card_gb"] == 8
