"""Regularisation images in a run: they join the epoch (kohya's balancing), their loss is weighted by
prior_loss_weight, and a bad reg_data_dir is named before any model loads."""

from __future__ import annotations

import pytest
from safetensors import safe_open
from train_helpers import events_of, make_config

from lora_trainer import synthetic
from lora_trainer.errors import ConfigError
from lora_trainer.events import Emitter
from lora_trainer.train.image import train


@pytest.fixture(scope="module")
def reg_dir(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("reg")
    synthetic.write_dataset(str(root), synthetic.varied_set(4, seed=5), repeats=1, name="thing")
    return str(root)


def _run(adapter, concept_dir, reg_dir, out, weight):
    events: list = []
    cfg = make_config(concept_dir, str(out), reg_data_dir=reg_dir, prior_loss_weight=weight, max_train_steps=3,
                      save_state=False)
    result = train(cfg, adapter=adapter, emit=Emitter([events.append]))
    with safe_open(result.output_path, "pt") as f:
        assert f.metadata()["ss_num_train_images"] == "12"  # training samples only, as kohya counts them
    return events


def test_reg_images_double_the_epoch_and_their_weight_changes_the_loss(tiny_adapter, concept_dir, reg_dir, tmp_path):
    losses = {}
    for weight in (1.0, 0.0):
        events = _run(tiny_adapter, concept_dir, reg_dir, tmp_path / f"w{weight}", weight)
        plan = events_of("plan", events)[0].data
        assert plan["samples_per_epoch"] == 24  # 6 images x 2 repeats, and as many reg samples
        losses[weight] = [e.data["loss"] for e in events_of("progress", events)]
    assert len(losses[1.0]) == 3 and losses[1.0] != losses[0.0]
    assert losses[0.0][0] <= losses[1.0][0]  # same weights at step 1: weight 0 only drops the reg samples' share


def test_a_reg_folder_without_images_is_named_before_the_model_loads(concept_dir, tmp_path):
    (tmp_path / "reg").mkdir()
    cfg = make_config(concept_dir, str(tmp_path / "out"), reg_data_dir=str(tmp_path / "reg"))
    events: list = []
    with pytest.raises(ConfigError) as exc:
        train(cfg, emit=Emitter([events.append]))
    assert not [e for e in events if e.type == "status" and "loading model" in e.data["message"]]
    assert exc.value.field == "reg_data_dir"
