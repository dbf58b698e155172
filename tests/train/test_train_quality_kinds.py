"""LoHa, LoKr and DoRA learn the concept, measured like plain LoRA (the demo's held-out measurement, fewer
steps, same learning rate): the held-out loss on the trained concept drops clearly more than on the
control concept, and multiplier 0 of the saved file reproduces the base exactly."""

from __future__ import annotations

import pytest

from lora_trainer.config import load_config
from lora_trainer.demo import demo_config, write_demo_inputs
from lora_trainer.train.evaluate import denoising_loss, evaluate_lora, fixed_inputs, held_out_sets
from lora_trainer.train.image import train


@pytest.fixture(scope="module")
def base_losses(tiny_adapter):
    assert tiny_adapter.info.extra.get("pretrained"), "the tiny model's pretrained weights are missing"
    concept, control = held_out_sets()
    return (concept, control), (denoising_loss(tiny_adapter, fixed_inputs(tiny_adapter, *concept)),
                                denoising_loss(tiny_adapter, fixed_inputs(tiny_adapter, *control)))


@pytest.mark.parametrize("ntype,extra", [("loha", {}), ("lokr", {"lokr_factor": 4}), ("dora", {})])
def test_each_type_learns_the_concept_not_the_control(tiny_adapter, base_losses, tmp_path, ntype, extra):
    (concept, control), before = base_losses
    root = str(tmp_path)
    write_demo_inputs(root, steps=30)
    raw = demo_config(root, steps=30)
    raw.update(sample_prompts=None, save_steps=0, save_state=False, network_type=ntype, **extra)
    result = train(load_config(raw), adapter=tiny_adapter)
    report = evaluate_lora(tiny_adapter, result.output_path, concept, control, base_losses=before)
    print(ntype, report.summary())
    assert report.zero_multiplier_exact
    assert report.concept_gain > 0.05, report.summary()
    assert report.concept_gain > 2 * max(report.control_gain, 0.0) + 0.02, report.summary()
