"""Optimizer / scheduler / scaler state dicts through safetensors + JSON: every optimizer we offer
continues exactly as if it had never been saved."""

from __future__ import annotations

import json
import math
import os
from types import SimpleNamespace

import pytest
import torch

from lora_trainer.train import state_io
from lora_trainer.train.optim import build_optimizer, build_scheduler
from tests.helpers.no_pickle import no_unpickling


def _same(a, b) -> bool:
    """Equal values of equal types, tensors bit for bit (with dtype)."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and (
            torch.equal(a, b) or bool(torch.isnan(a).all() and torch.isnan(b).all()))
    if isinstance(a, dict):
        return type(b) is dict and list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    return type(a) is type(b) and a == b


def _roundtrip(tmp_path, obj):
    state_io.write_tree(str(tmp_path), "s", obj)
    assert sorted(os.listdir(tmp_path)) == ["s.json", "s.safetensors"]
    with no_unpickling():
        return state_io.read_tree(str(tmp_path), "s")


def test_awkward_values_come_back_with_their_types(tmp_path):
    shared = torch.arange(4, dtype=torch.float16)
    obj = {"state": {0: {"step": 3, "state1": torch.tensor([1, 2], dtype=torch.uint8), "absmax": torch.tensor(0.5),
                         "nested": {"qmap": torch.linspace(-1, 1, 5)}, "buf": None},
                     1: {"step": torch.tensor(7.0), "empty": torch.zeros(0, 3), "flag": torch.tensor([True])}},
           "param_groups": [{"params": [0, 1], "betas": (0.9, 0.999), "lr": 1e-4 / 3, "eps": 1e-8,
                             "d": float("inf"), "x": float("-inf"), "n": float("nan"), "amsgrad": False,
                             "name": "unet", "dtype": torch.bfloat16, "maximize": None}],
           "$tensor": "a literal key that looks like a tag", "twice": [shared, shared], (1, 2): "tuple key"}
    back = _roundtrip(tmp_path, obj)
    assert _same(obj, back)
    text = (tmp_path / "s.json").read_text()
    json.loads(text)  # plain JSON: no NaN / Infinity literals
    assert "NaN" not in text and "Infinity" not in text


def test_objects_that_are_not_data_are_refused(tmp_path):
    with pytest.raises(TypeError, match="cannot store a SimpleNamespace"):
        state_io.write_tree(str(tmp_path), "s", {"x": SimpleNamespace(a=1)})


def _cfg(name: str, **extra):
    return SimpleNamespace(optimizer=name, learning_rate=1.0 if name == "prodigy" else 1e-2, weight_decay=0.01,
                           optimizer_args=extra, lr_scheduler="cosine", lr_warmup_steps=2)


def _setup(name: str, seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2))
    second = {} if name == "prodigy" else {"lr": 5e-3}  # Prodigy refuses per-group learning rates
    groups = [{"params": list(model[0].parameters())}, {"params": list(model[1].parameters()), **second}]
    opt = build_optimizer(groups, _cfg(name))
    return model, opt, build_scheduler(opt, _cfg(name), 10)


def _steps(model, opt, sched, n: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        model(torch.randn(3, 4, generator=g)).pow(2).mean().backward()
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)


OPTIMIZERS = ["adamw", "sgd", "lion", "prodigy",
              pytest.param("adamw8bit", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA only"))]


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_optimizer_and_scheduler_continue_exactly_after_a_roundtrip(tmp_path, name):
    needs = {"adamw8bit": "bitsandbytes", "prodigy": "prodigyopt"}  # lion falls back to our own
    if name in needs:
        pytest.importorskip(needs[name])
    model, opt, sched = _setup(name)
    _steps(model, opt, sched, 3, seed=1)
    saved = {"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "scaler": None}
    back = _roundtrip(tmp_path, saved)
    assert _same(saved, back)

    model2, opt2, sched2 = _setup(name, seed=99)
    model2.load_state_dict(model.state_dict())
    opt2.load_state_dict(back["optimizer"])
    sched2.load_state_dict(back["scheduler"])
    _steps(model, opt, sched, 3, seed=2)
    _steps(model2, opt2, sched2, 3, seed=2)
    for a, b in zip(model.parameters(), model2.parameters(), strict=True):
        assert torch.equal(a, b)


def test_grad_scaler_state_roundtrips(tmp_path):
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=3)
    assert scaler.is_enabled()
    saved = scaler.state_dict()
    back = _roundtrip(tmp_path, {"scaler": saved})["scaler"]
    assert _same(saved, back)
    fresh = torch.amp.GradScaler("cpu")
    fresh.load_state_dict(back)
    assert fresh.state_dict() == saved


def test_a_damaged_file_is_named(tmp_path):
    state_io.write_tree(str(tmp_path), "s", {"t": torch.ones(3)})
    (tmp_path / "s.json").write_text('{"t": {"$tensor": "t9"}}')
    with pytest.raises(state_io.StateFormatError, match=r"s\.json is corrupt .*t9"):
        state_io.read_tree(str(tmp_path), "s")
    (tmp_path / "s.safetensors").write_bytes(b"\x00" * 5)
    with pytest.raises(state_io.StateFormatError, match=r"s\.safetensors is corrupt"):
        state_io.read_tree(str(tmp_path), "s")
