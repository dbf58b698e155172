"""Quality, measured honestly on the pretrained tiny model (the demo's measurement, fewer steps).

A LoRA trained on the synthetic concept must lower the held-out denoising loss on that concept
clearly more than on a control concept it never saw; multiplier 0 must reproduce the base exactly.
"""

from __future__ import annotations

import os

from lora_trainer.config import load_config
from lora_trainer.demo import demo_config, write_demo_inputs
from lora_trainer.train.evaluate import denoising_loss, evaluate_lora, fixed_inputs, held_out_sets
from lora_trainer.train.image import train


def test_concept_gain_clearly_exceeds_control_gain(tiny_adapter, tmp_path):
    assert tiny_adapter.info.extra.get("pretrained"), (
        "the tiny model's pretrained weights are missing (tools/pretrain_tiny.py writes them); "
        "without them the measurement is meaningless")
    root = str(tmp_path)
    write_demo_inputs(root, steps=30)
    raw = demo_config(root, steps=30)
    raw.update(sample_prompts=None, sample_every_n_steps=0, save_steps=0, save_state=False)
    cfg = load_config(raw)
    concept, control = held_out_sets()
    before = (denoising_loss(tiny_adapter, fixed_inputs(tiny_adapter, *concept)),
              denoising_loss(tiny_adapter, fixed_inputs(tiny_adapter, *control)))
    result = train(cfg, adapter=tiny_adapter)
    report = evaluate_lora(tiny_adapter, result.output_path, concept, control, base_losses=before)
    print(report.summary())
    assert os.path.isfile(result.output_path)
    assert report.zero_multiplier_exact
    assert report.concept_gain > 0.05, report.summary()
    assert report.concept_gain > 2 * max(report.control_gain, 0.0) + 0.02, report.summary()
