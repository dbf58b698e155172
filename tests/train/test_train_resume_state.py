"""The resumable state: safetensors + JSON only, no unpickling on resume, bit-exact, old states still
resume, and a corrupt state is named in one line with a fall-back to the previous good one."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file
from train_helpers import make_config

from lora_trainer.errors import ConfigError
from lora_trainer.events import Emitter, StopFlag
from lora_trainer.train import checkpoint as ckpt
from lora_trainer.train.image import train
from tests.helpers.no_pickle import no_unpickling

COMMON = dict(epochs=2, gradient_accumulation_steps=2, lora_dropout=0.1, lr_scheduler="cosine", lr_warmup_steps=1,
              train_text_encoder=True, text_encoder_lr=5e-4, save_state=True, save_steps=2, output_name="out")


@pytest.fixture(scope="module")
def runs(tiny_adapter, concept_dir, tmp_path_factory):
    """An uninterrupted 6-step run, and a run stopped after step 3 (states at steps 2 and 3)."""
    root = tmp_path_factory.mktemp("resume")
    full = train(make_config(concept_dir, str(root / "full"), **COMMON), adapter=tiny_adapter)
    stop = StopFlag()

    def stop_at_3(event):
        if event.type == "progress" and event.data["step"] == 3:
            stop.request("test stop")

    part = train(make_config(concept_dir, str(root / "part"), **COMMON), adapter=tiny_adapter,
                 emit=Emitter([stop_at_3]), stop=stop)
    assert part.stopped and part.steps == 3
    return {"full": load_file(full.output_path), "part": str(root / "part"), "root": root}


def _resume(runs, tiny_adapter, concept_dir, name: str, **over):
    """Copy the stopped run to `name` and resume it: (final LoRA tensors, events)."""
    out = runs["root"] / name
    shutil.copytree(runs["part"], out)
    events: list = []
    result = train(make_config(concept_dir, str(out), resume_from_checkpoint="latest", **{**COMMON, **over}),
                   adapter=tiny_adapter, emit=Emitter([events.append]))
    assert result.steps == 6 and not result.stopped
    return load_file(result.output_path), events, out


def _assert_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def _warnings(events) -> list[str]:
    return [e.data["message"] for e in events if e.type == "log" and e.data.get("level") == "warning"]


def test_state_holds_only_safetensors_and_json(runs):
    states = ckpt.list_states(runs["part"])
    assert [os.path.basename(s) for s in states] == ["out-000002-state", "out-000003-state"]
    for state in states:
        files = sorted(os.listdir(state))
        assert files == ["lora.safetensors", "optimizer.json", "optimizer.safetensors", "rng.safetensors",
                         "trainer_state.json"]
        for name in files:  # a pickle starts with the PROTO opcode; torch.save files are zips
            with open(os.path.join(state, name), "rb") as f:
                head = f.read(2)
            assert head[:1] != b"\x80" and head != b"PK", name


def test_resume_reads_no_pickle_and_equals_an_uninterrupted_run(runs, tiny_adapter, concept_dir):
    with no_unpickling():
        resumed, events, _ = _resume(runs, tiny_adapter, concept_dir, "clean")
    assert not _warnings(events)
    _assert_identical(runs["full"], resumed)


def _to_format_1(state: str) -> None:
    """Rewrite a state as the previous release wrote it (torch.save .pt files, format 1)."""
    loaded = ckpt.load_state(state)
    torch.save(loaded["optim"], os.path.join(state, "optimizer.pt"))
    torch.save(loaded["rng_tensors"], os.path.join(state, "rng.pt"))
    for name in ("optimizer.json", "optimizer.safetensors", "rng.safetensors"):
        os.remove(os.path.join(state, name))
    meta_path = os.path.join(state, "trainer_state.json")
    with open(meta_path) as f:
        meta = json.load(f)
    with open(meta_path, "w") as f:
        json.dump({**meta, "format": 1}, f)


def test_a_state_of_the_previous_release_still_resumes_exactly(runs, tiny_adapter, concept_dir, monkeypatch):
    unsafe_calls = []
    real_load = torch.serialization.load

    def checked_load(*args, **kwargs):
        unsafe_calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch.serialization, "load", checked_load)
    out = runs["root"] / "legacy-src"
    shutil.copytree(runs["part"], out)
    for state in ckpt.list_states(str(out)):
        _to_format_1(state)
    runs = {**runs, "part": str(out)}
    resumed, events, _ = _resume(runs, tiny_adapter, concept_dir, "legacy")
    assert unsafe_calls and all(w is True for w in unsafe_calls)
    assert not _warnings(events)
    _assert_identical(runs["full"], resumed)


def test_corrupt_newest_state_falls_back_to_the_previous_one(runs, tiny_adapter, concept_dir, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(runs["part"], src)
    bad = src / "out-000003-state" / "optimizer.safetensors"
    bad.write_bytes(bad.read_bytes()[:100])  # truncated
    resumed, events, _ = _resume({**runs, "part": str(src)}, tiny_adapter, concept_dir, "fallback")
    warned = _warnings(events)
    assert any("optimizer.safetensors is corrupt" in w and "out-000002-state" in w for w in warned), warned
    assert all("\n" not in w for w in warned)
    _assert_identical(runs["full"], resumed)  # resuming from step 2 is exact too


# ---- unreadable states, without training -----------------------------------------------------------

def _small_state(out_dir: str, step: int) -> str:
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    return ckpt.save_state(ckpt.state_path(out_dir, "run", step), lora_state=dict(model.state_dict()),
                           optimizer=opt, scheduler=None, scaler=None, step=step, epoch=0, position=step,
                           config={"seed": 1})


@pytest.mark.parametrize("damage", ["trainer_state.json", "optimizer.json", "optimizer.safetensors",
                                    "rng.safetensors", "lora.safetensors", "missing:rng.safetensors",
                                    "missing:optimizer.json"])
def test_an_unreadable_only_state_names_the_file(tmp_path, damage):
    state = _small_state(str(tmp_path), 5)
    name = damage.removeprefix("missing:")
    target = os.path.join(state, name)
    if damage.startswith("missing:"):
        os.remove(target)
    else:
        with open(target, "r+b") as f:
            f.truncate(max(1, os.path.getsize(target) // 2))
    with pytest.raises(ConfigError) as err:
        ckpt.resolve_resume("latest", str(tmp_path), "run")
    message = str(err.value)
    assert target in message and "\n" not in message
    assert ("missing" if damage.startswith("missing:") else "corrupt") in message
    assert "found no saved state" not in message
    with pytest.raises(ConfigError, match="rng.safetensors|trainer_state.json|optimizer|lora"):
        ckpt.resolve_resume(state, str(tmp_path), "run")  # the folder given by path: the same error


def test_given_path_falls_back_to_an_older_state_of_the_same_run(tmp_path):
    older = _small_state(str(tmp_path), 2)
    newer = _small_state(str(tmp_path), 4)
    (tmp_path / "run-000004-state" / "trainer_state.json").write_text("{not json")
    warned: list[str] = []
    assert ckpt.resolve_resume(newer, str(tmp_path), "run", warn=warned.append) == older
    assert len(warned) == 1 and "trainer_state.json is corrupt" in warned[0]
    assert "run-000002-state" in warned[0]


def test_list_states_keeps_a_state_with_a_broken_trainer_state(tmp_path):
    _small_state(str(tmp_path), 7)
    (tmp_path / "run-000007-state" / "trainer_state.json").write_text("")
    assert [os.path.basename(p) for p in ckpt.list_states(str(tmp_path), "run")] == ["run-000007-state"]
