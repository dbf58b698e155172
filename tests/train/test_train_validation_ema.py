"""Validation loss and EMA of the LoRA weights: reproducible, the same after a resume, and stored in
the state as safetensors + JSON only."""

from __future__ import annotations

import importlib.util
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file
from train_helpers import events_of, make_config

from lora_trainer.train import checkpoint as ckpt
from lora_trainer.train.ema import WeightEMA
from tests.helpers.no_pickle import no_unpickling
from tests.helpers.recorded_run import recorded_train

COMMON = dict(validation_split=0.34, validation_every_n_steps=1, ema_decay=0.8, save_ema=True, save_state=True,
              save_steps=2, max_train_steps=4, epochs=2, lora_dropout=0.1, output_name="out")


def _val_losses(events) -> dict[int, float]:
    return {e.data["step"]: e.data["val_loss"] for e in events_of("progress", events) if "val_loss" in e.data}


def _run(concept_dir, out, adapter, stop_at=None, **over):
    return recorded_train(make_config(concept_dir, str(out), **{**COMMON, **over}), adapter=adapter, stop_at=stop_at)


@pytest.fixture(scope="module")
def runs(tiny_adapter, concept_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("valema")
    full, full_events = _run(concept_dir, root / "full", tiny_adapter)
    again, again_events = _run(concept_dir, root / "again", tiny_adapter)
    part, part_events = _run(concept_dir, root / "part", tiny_adapter, stop_at=2)
    assert part.stopped and part.steps == 2
    shutil.copytree(root / "part", root / "resumed")
    with no_unpickling():
        resumed, resumed_events = _run(concept_dir, root / "resumed", tiny_adapter, resume_from_checkpoint="latest")
    plain, _ = _run(concept_dir, root / "plain", tiny_adapter, save_ema=False)
    return {"full": (full, full_events), "again": (again, again_events), "part": (part, part_events),
            "resumed": (resumed, resumed_events), "plain": plain, "root": root}


def test_validation_loss_is_logged_each_step_and_repeats_for_the_same_seed(runs):
    full = _val_losses(runs["full"][1])
    assert sorted(full) == [1, 2, 3, 4]
    assert all(v > 0 for v in full.values())
    assert full == _val_losses(runs["again"][1])
    assert len(set(full.values())) > 1  # it follows the weights
    assert runs["full"][0].val_loss == full[4] == events_of("done", runs["full"][1])[0].data["val_loss"]


def test_validation_loss_is_the_same_after_resume(runs):
    full = _val_losses(runs["full"][1])
    assert _val_losses(runs["part"][1]) == {1: full[1], 2: full[2]}
    assert _val_losses(runs["resumed"][1]) == {3: full[3], 4: full[4]}


def test_state_keeps_ema_as_safetensors_and_the_last_val_loss(runs):
    state = ckpt.list_states(str(runs["root"] / "part"))[-1]
    assert "ema.safetensors" in os.listdir(state)
    loaded = ckpt.load_state(state)
    assert loaded["val_loss"] == _val_losses(runs["full"][1])[2]
    assert loaded["ema"] and all(t.dtype == torch.float32 for t in loaded["ema"].values())


def test_save_ema_writes_the_average_and_resume_reproduces_it(runs):
    full = load_file(runs["full"][0].output_path)
    resumed = load_file(runs["resumed"][0].output_path)
    assert full.keys() == resumed.keys()
    assert all(torch.equal(full[k], resumed[k]) for k in full)
    plain = load_file(runs["plain"].output_path)  # the trained weights of the same run
    ups = [k for k in full if k.endswith("lora_up.weight")]
    assert any(not torch.equal(full[k], plain[k]) for k in ups)


def test_ema_update_and_swap():
    p = torch.nn.Parameter(torch.zeros(3))
    ema = WeightEMA([p], decay=0.75)
    with torch.no_grad():
        p.fill_(4.0)
    ema.update()
    assert torch.allclose(ema.shadow[0], torch.full((3,), 1.0))
    with ema.swapped():
        assert torch.equal(p.detach(), torch.full((3,), 1.0))
    assert torch.equal(p.detach(), torch.full((3,), 4.0))


def test_validation_data_dir_is_evaluated_each_epoch_end_and_after_the_last_step(tiny_adapter, concept_dir,
                                                                                   tmp_path):
    from lora_trainer import synthetic

    synthetic.write_dataset(str(tmp_path / "val"), synthetic.concept_set(synthetic.TARGET_CONCEPT, 2, seed=77),
                            name="zqx")
    result, events = _run(concept_dir, tmp_path / "out", tiny_adapter, validation_split=0.0,
                           validation_data_dir=str(tmp_path / "val"), validation_every_n_steps=0, ema_decay=None,
                           save_ema=False, save_steps=0, max_train_steps=7)
    assert result.steps == 7
    assert sorted(_val_losses(events)) == [6, 7]  # 12 samples / batch 2 = 6 steps per epoch, then the last step
    if importlib.util.find_spec("tensorboard"):  # the same values as TensorBoard scalars
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        acc = EventAccumulator(str(tmp_path / "out" / "logs"))
        acc.Reload()
        logged = {e.step: e.value for e in acc.Scalars("train/val_loss")}
        assert logged == pytest.approx(_val_losses(events))


def test_turning_ema_on_at_resume_starts_it_from_the_resumed_weights(tiny_adapter, concept_dir, tmp_path):
    off = dict(ema_decay=None, save_ema=False, validation_split=0.0, save_steps=0)
    part, _ = _run(concept_dir, tmp_path / "run", tiny_adapter, stop_at=1, **off)
    assert part.stopped
    result, events = _run(concept_dir, tmp_path / "run", tiny_adapter, resume_from_checkpoint="latest",
                          **{**off, "ema_decay": 0.5, "save_ema": True})
    assert result.steps == 4
    warnings = [e.data["message"] for e in events_of("log", events) if e.data.get("level") == "warning"]
    assert any("EMA starts from the resumed weights" in w for w in warnings)
