"""The WebUI host around the adapter: queue lock held for the run, shared.state progress and Stop,
publish into the Lora folder with sidecars, Lora list refreshed, access rule — on the real ldm model."""

from __future__ import annotations

import os
import threading

import pytest
from safetensors.torch import load_file

from lora_trainer.hosts.base import AccessDenied
from lora_trainer.hosts.guard import state_dict_hash
from lora_trainer.hosts.runs import start_training
from lora_trainer.hosts.webui import WebUIHost
from lora_trainer.jobs import JobRegistry
from tests.helpers.wait import wait_for


def config(dataset, **kw):
    raw = {"train_data_dir": dataset, "output_name": "hosted", "resolution": 64, "enable_bucket": False,
           "batch_size": 2, "max_train_steps": 12, "learning_rate": 1e-3, "lora_rank": 4, "lora_alpha": 4,
           "save_state": False}
    raw.update(kw)
    return raw


class RecordingLock:
    """A real lock that logs, in order, who waited for it, got it and let it go (and, through
    RecordingState, each progress report with the lock's holder at that moment)."""

    def __init__(self):
        self._lock = threading.Lock()
        self.log: list[tuple[str, str]] = []
        self.holder = ""
        self.trainer_waiting = threading.Event()

    def acquire(self, blocking=True, timeout=-1):
        me = threading.current_thread().name
        self.log.append(("wait", me))
        if me != "MainThread":
            self.trainer_waiting.set()
        got = self._lock.acquire(blocking, timeout)
        if got:
            self.holder = me
            self.log.append(("acquired", me))
        return got

    def release(self):
        self.log.append(("released", self.holder))
        self.holder = ""
        self._lock.release()

    def locked(self):
        return self._lock.locked()

    __enter__ = acquire

    def __exit__(self, *exc):
        self.release()


def test_run_holds_the_lock_reports_to_state_and_publishes(tiny_sd1, services_factory, dataset, tmp_path):
    svc = services_factory(tiny_sd1)
    lock = svc.queue_lock = RecordingLock()

    class RecordingState(type(svc.state)):
        def __setattr__(self, name, value):
            if name == "job_no" and value:
                lock.log.append(("progress", lock.holder))
            super().__setattr__(name, value)

    svc.state = RecordingState()
    host = WebUIHost(svc, root=str(tmp_path))
    hash0 = state_dict_hash(tiny_sd1)
    jobs = JobRegistry()
    lock.acquire()  # a txt2img is running: the training must wait for it
    job = start_training(host, config(dataset), jobs=jobs)
    assert lock.trainer_waiting.wait(60), "the training never asked for the WebUI's queue lock"
    assert job.alive and job.last("progress") is None, "training started while the WebUI was busy"
    assert "waiting for the WebUI" in job.last("status").data["message"]
    lock.release()
    job.join(300)
    assert job.state == "done", job.error
    trainer = next(who for what, who in lock.log if what == "wait" and who != "MainThread")
    progress = [who for what, who in lock.log if what == "progress"]
    assert len(progress) == 12 and set(progress) == {trainer}, "progress reported without holding the queue lock"
    assert lock.log[:4] == [("wait", "MainThread"), ("acquired", "MainThread"), ("wait", trainer),
                            ("released", "MainThread")]
    assert lock.log[4] == ("acquired", trainer) and lock.log[-1] == ("released", trainer)
    assert not lock.locked()
    state = svc.state
    assert state.began == 1 and state.ended == 1
    assert state.job_no == 12 and state.job_count == 12 and "LoRA training" in state.textinfo
    lora_dir = host.lora_dir()
    assert os.path.isfile(os.path.join(lora_dir, "hosted.safetensors"))
    assert os.path.isfile(os.path.join(lora_dir, "hosted.json"))
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(os.path.join(lora_dir, "hosted.safetensors")).st_mode & 0o777 == 0o666 & ~umask
    assert svc.extra["calls"]["refresh"] == 1
    assert job.last("published").data["prompt"] == "<lora:hosted:0.8>"
    assert len(load_file(os.path.join(lora_dir, "hosted.safetensors"))) > 0
    assert state_dict_hash(tiny_sd1) == hash0


def test_webui_interrupt_button_stops_the_run(tiny_sd1, services_factory, dataset, tmp_path):
    svc = services_factory(tiny_sd1)
    host = WebUIHost(svc, root=str(tmp_path))
    hash0 = state_dict_hash(tiny_sd1)
    job = start_training(host, config(dataset, max_train_steps=200, output_name="stopped"), jobs=JobRegistry())

    def press_interrupt():
        wait_for(lambda: not job.alive or (job.last("progress") and job.last("progress").data["step"] >= 2), 120)
        svc.state.interrupted = True  # what the WebUI's Interrupt button does

    threading.Thread(target=press_interrupt, daemon=True).start()
    job.join(120)
    assert job.state == "stopped", (job.state, job.error)
    assert job.result.stopped and job.result.steps < 200
    assert state_dict_hash(tiny_sd1) == hash0


def test_public_webui_refuses_server_paths_but_takes_uploads(tiny_sd1, services_factory, dataset, tmp_path):
    import shutil

    svc = services_factory(tiny_sd1, cmd={"disable_extension_access": True})
    host = WebUIHost(svc, root=str(tmp_path))
    with pytest.raises(AccessDenied, match="enable-insecure-extension-access"):
        start_training(host, config(dataset), jobs=JobRegistry())
    with pytest.raises(AccessDenied, match="downloads are disabled"):
        host.check_download()
    uploaded = os.path.join(host.uploads_dir(), "up1")
    shutil.copytree(dataset, uploaded)
    job = start_training(host, config(uploaded, max_train_steps=2, output_name="uploaded"), jobs=JobRegistry())
    job.join(120)
    assert job.state == "done", job.error


def test_lora_merged_by_the_builtin_extension_is_removed_first(tiny_sd1, monkeypatch):
    """A1111's Lora extension merges `<lora:...>` into weights in place and keeps a CPU backup on the
    module; its restore copies into parameters that require grad (A1111 leaves requires_grad on)."""
    import sys
    import types

    import torch

    from lora_trainer.hosts.webui import _unmerge_builtin_lora

    def restore(module):  # like the extension: an in-place copy, no no_grad of its own
        module.weight.copy_(module.network_weights_backup)

    def reset(module):
        module.network_current_names = ()
        module.network_weights_backup = None
        module.network_bias_backup = None

    fake = types.SimpleNamespace(loaded_networks=["somelora"], network_restore_weights_from_backup=restore,
                                 network_reset_cached_weight=reset)
    monkeypatch.setitem(sys.modules, "networks", fake)
    clean = state_dict_hash(tiny_sd1)
    target = tiny_sd1.model.diffusion_model.input_blocks[1][1].transformer_blocks[0].attn1.to_q
    grads = [p.requires_grad for p in tiny_sd1.parameters()]
    try:
        for p in tiny_sd1.parameters():
            p.requires_grad_(True)
        target.network_weights_backup = target.weight.detach().cpu().clone()
        target.network_bias_backup = None
        target.network_current_names = (("somelora", 1.0, 1.0, None),)
        with torch.no_grad():
            target.weight += 0.5  # merged
        assert state_dict_hash(tiny_sd1) != clean
        assert _unmerge_builtin_lora(tiny_sd1) == 1
        assert fake.loaded_networks == [] and target.network_weights_backup is None
        assert state_dict_hash(tiny_sd1) == clean
    finally:
        for p, g in zip(tiny_sd1.parameters(), grads, strict=True):
            p.requires_grad_(g)
        for attr in ("network_weights_backup", "network_bias_backup", "network_current_names"):
            target.__dict__.pop(attr, None)


def test_medvram_bookkeeping_is_put_back(tiny_sd1, services_factory, dataset, tmp_path):
    """--medvram: the WebUI tracks which part sits on the GPU; after training the devices and that
    record are what they were."""
    from lora_trainer.config import load_config
    from lora_trainer.events import StopFlag
    from lora_trainer.models.webui_ldm import WebUILdmAdapter
    from lora_trainer.train import train

    part = tiny_sd1.model.diffusion_model
    record = {"gpu": part, "sets": []}
    svc = services_factory(tiny_sd1, cmd={"medvram": True}, lowvram_get=lambda: record["gpu"],
                           lowvram_set=lambda m: record["sets"].append(m))
    adapter = WebUILdmAdapter(tiny_sd1, svc)
    cfg = load_config({"train_data_dir": dataset, "output_dir": str(tmp_path / "mv"), "output_name": "mv",
                       "resolution": 64, "enable_bucket": False, "max_train_steps": 2, "save_state": False},
                      require=("train_data_dir",))
    train(cfg, adapter=adapter, emit=lambda e: None, stop=StopFlag())
    assert record["sets"] == [part] and adapter.verify() == []


def test_lowvram_is_refused_at_request_time(tiny_sd1, services_factory, dataset, tmp_path):
    from lora_trainer.hosts.webui import HostRefused

    host = WebUIHost(services_factory(tiny_sd1, cmd={"lowvram": True}), root=str(tmp_path))
    jobs = JobRegistry()
    with pytest.raises(HostRefused, match="--lowvram"):
        start_training(host, config(dataset), jobs=jobs)
    assert jobs.list() == []
