"""Quality on the pretrained tiny FLUX.1, measured as for SD1 (the demo's measurement, fewer steps): a LoRA
trained on the synthetic concept lowers the held-out flow-matching loss on that concept clearly more than
on a control concept it never saw, and multiplier 0 reproduces the base exactly; for each network type
(LoHa / LoKr / DoRA train BFL's fused modules whole)."""

from __future__ import annotations

import pytest

from lora_trainer.config import load_config
from lora_trainer.demo import demo_adapter, demo_config, write_demo_inputs
from lora_trainer.train.evaluate import denoising_loss, evaluate_lora, fixed_inputs, held_out_sets
from lora_trainer.train.image import train


@pytest.mark.parametrize("network_type", ["lora", "loha", "lokr", "dora"])
def test_flux_concept_gain_clearly_exceeds_control_gain(network_type, tmp_path):
    adapter, pretrained = demo_adapter("flux")
    assert pretrained, ("the tiny FLUX.1's pretrained weights are missing (tools/pretrain_tiny_flux.py writes "
                        "them); without them the measurement is meaningless")
    root = str(tmp_path)
    write_demo_inputs(root, steps=60, model="flux")
    raw = demo_config(root, steps=60, model="flux")
    raw.update(sample_prompts=None, sample_every_n_steps=0, save_steps=0, save_state=False, network_type=network_type)
    concept, control = held_out_sets()
    before = (denoising_loss(adapter, fixed_inputs(adapter, *concept)),
              denoising_loss(adapter, fixed_inputs(adapter, *control)))
    result = train(load_config(raw), adapter=adapter)
    report = evaluate_lora(adapter, result.output_path, concept, control, base_losses=before)
    print(report.summary())
    assert report.zero_multiplier_exact
    if network_type == "lokr":  # at the same budget LoKr learns less (as on SD1: 24.7 % vs LoRA's 31.2 %)
        assert report.concept_gain > 0.04 and report.concept_gain > report.control_gain + 0.02, report.summary()
        return
    assert report.concept_gain > 0.05, report.summary()
    assert report.concept_gain > 2 * max(report.control_gain, 0.0) + 0.02, report.summary()
