"""The WebUI-host captioner against a stand-in `modules` package that has the attributes A1111 1.10
defines (modules/interrogate.py, modules/deepbooru.py): the real WebUI cannot run inside these
tests, so this checks the calls we make on it and that nothing else is needed."""

from __future__ import annotations

import sys
import types

import pytest

from lora_trainer.caption import make_captioner
from lora_trainer.caption.run import caption_dataset

from .conftest import solid


@pytest.fixture
def fake_webui(monkeypatch):
    import torch

    calls: list[str] = []

    class Interrogator:  # the parts of modules.interrogate.InterrogateModels we use
        blip_model = None
        dtype = None
        running_on_cpu = True

        def load_blip_model(self):
            calls.append("load_blip_model")
            return torch.nn.Linear(2, 2)

        def generate_caption(self, image):
            assert self.dtype == torch.float32 and image.mode == "RGB"
            return f"a picture {image.size[0]}"

        def send_blip_to_ram(self):
            calls.append("send_blip_to_ram")

        def load(self):  # would also load CLIP: must not be called
            raise AssertionError("interrogator.load() loads CLIP too")

    class DeepDanbooru:
        def start(self):
            calls.append("start")

        def tag_multi(self, image, force_disable_ranks=False):
            assert force_disable_ranks
            return "1girl, solo"

        def stop(self):
            calls.append("stop")

    modules = types.ModuleType("modules")
    shared = types.ModuleType("modules.shared")
    shared.interrogator = Interrogator()
    shared.cmd_opts = types.SimpleNamespace(no_half=False)
    devices = types.ModuleType("modules.devices")
    devices.device_interrogate = torch.device("cpu")
    devices.torch_gc = lambda: calls.append("torch_gc")
    deepbooru = types.ModuleType("modules.deepbooru")
    deepbooru.model = DeepDanbooru()
    modules.shared, modules.devices, modules.deepbooru = shared, devices, deepbooru
    for name, module in {"modules": modules, "modules.shared": shared, "modules.devices": devices,
                         "modules.deepbooru": deepbooru}.items():
        monkeypatch.setitem(sys.modules, name, module)
    return calls


def test_host_blip_loads_only_blip_and_frees_it(tmp_path, fake_webui):
    solid((9, 9, 9), (40, 40)).save(tmp_path / "a.png")
    result = caption_dataset(tmp_path, make_captioner("host", model="blip"), trigger="ohwx")
    assert result.captioned == 1 and (tmp_path / "a.txt").read_text() == "ohwx, a picture 40"
    assert fake_webui == ["load_blip_model", "send_blip_to_ram", "torch_gc"]


def test_host_deepbooru(tmp_path, fake_webui):
    solid((9, 9, 9)).save(tmp_path / "a.png")
    solid((9, 9, 9)).save(tmp_path / "b.png")
    captioner = make_captioner("host", model="deepbooru", batch_size=8)
    assert captioner.batch_size == 1
    caption_dataset(tmp_path, captioner)
    assert (tmp_path / "b.txt").read_text() == "1girl, solo" and fake_webui == ["start", "stop"]
