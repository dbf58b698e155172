"""What a stopped run puts in the Lora folder (file + .json + preview) and how the finished run replaces it."""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

import torch
from PIL import Image
from safetensors.torch import save_file

from lora_trainer.hosts import runs
from lora_trainer.hosts.standalone import StandaloneHost


def _lora(path: str, **meta: str) -> str:
    save_file({"lora_unet_x.alpha": torch.tensor(2.0)}, path, metadata=meta or {"ss_base_model_version": "sd_v1"})
    return path


def test_stopped_run_publishes_sidecars_and_the_finished_run_replaces_them(tmp_path):
    host = StandaloneHost(str(tmp_path / "app"))
    out = tmp_path / "run"
    out.mkdir()
    cfg = SimpleNamespace(output_dir=str(out), trigger_word="zqx", preferred_weight=0.7, description="")
    sample = out / "sample.png"
    Image.new("RGB", (8, 8), "blue").save(sample)
    partial = _lora(str(out / "r-000004.safetensors"))
    runs.write_stopped_sidecars(cfg, SimpleNamespace(output_path=partial, samples=[str(sample)], steps=4))
    published = runs.publish(host, partial)
    runs.remember_partial(cfg, published)
    lora_dir = host.lora_dir()
    with open(os.path.join(lora_dir, "r-000004.json"), encoding="utf-8") as fh:
        side = json.load(fh)
    assert side["activation text"] == "zqx" and side["preferred weight"] == 0.7 and side["sd version"] == "SD1"
    assert os.path.isfile(os.path.join(lora_dir, "r-000004.preview.png"))
    final = runs.publish(host, _lora(str(out / "r.safetensors")))
    removed = runs.replace_partials(host, cfg, final)
    assert sorted(os.path.basename(p) for p in removed) == ["r-000004.json", "r-000004.preview.png",
                                                             "r-000004.safetensors"]
    assert sorted(os.listdir(lora_dir)) == ["r.safetensors"]
    assert runs.replace_partials(host, cfg, final) == []  # the record is gone with them


def test_a_stopped_flux_runs_card_says_flux(tmp_path):
    """Forge shows a card as a Flux LoRA by its "sd version" (the finished file's sidecar says so too)."""
    cfg = SimpleNamespace(output_dir=str(tmp_path), trigger_word="", preferred_weight=0.0, description="")
    for arch, version in (("flux-1-dev/lora", "Flux"), ("chroma/lora", "Unknown")):
        partial = _lora(str(tmp_path / "f-000002.safetensors"), **{"modelspec.architecture": arch,
                                                                   "ss_base_model_version": "flux1"})
        runs.write_stopped_sidecars(cfg, SimpleNamespace(output_path=partial, samples=[], steps=2))
        with open(tmp_path / "f-000002.json", encoding="utf-8") as fh:
            assert json.load(fh)["sd version"] == version


def test_loss_history_keeps_the_run_before_a_resume(tmp_path):
    from lora_trainer.events import Event

    cfg = SimpleNamespace(output_dir=str(tmp_path), resume_from_checkpoint=None)
    sink = runs.loss_history_sink(cfg)
    for step in range(1, 6):
        sink(Event("progress", {"step": step, "loss": 1.0 / step}))
    resumed = SimpleNamespace(output_dir=str(tmp_path), resume_from_checkpoint="latest")
    sink2 = runs.loss_history_sink(resumed)  # resumed from step 3's state: steps 4.. are trained again
    sink2(Event("progress", {"step": 4, "loss": 0.3}))
    steps, losses = runs.loss_history(str(tmp_path), before_step=4)
    assert steps == [1, 2, 3] and losses == [1.0, 0.5, 1.0 / 3]
    runs.loss_history_sink(cfg)  # a fresh run with the same name starts the history anew
    assert runs.loss_history(str(tmp_path), 99) == ([], [])


def test_a_second_training_is_refused_at_once_with_name_and_step(tmp_path):
    """One training at a time: the answer names the running one and its step, before any config work."""
    import time

    import pytest

    from lora_trainer.jobs import Job, JobRegistry

    def body(emit, stop):
        emit.emit("progress", step=3, total_steps=10, loss=0.5)
        stop.wait(30)

    jobs = JobRegistry()
    running = jobs.add(Job("train", body, title="busy")).start()
    try:
        deadline = time.time() + 10
        while running.last("progress") is None and time.time() < deadline:
            time.sleep(0.01)
        with pytest.raises(runs.TrainingBusy, match=r"a training is already running \(busy, step 3/10\)"):
            runs.start_training(StandaloneHost(str(tmp_path)), {"anything": "not even valid"}, jobs=jobs)
    finally:
        running.stop()
        running.join(10)
