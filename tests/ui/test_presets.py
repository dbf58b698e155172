"""Presets ship inside the package (so an installed extension or wheel has them), are listed by the
Trainer tab and fill its form."""

from __future__ import annotations

import os

import gradio as gr
import pytest

from lora_trainer.presets import FOLDER, describe, list_presets, load_preset
from lora_trainer.ui import form as F
from lora_trainer.ui import trainer_tab as T
from lora_trainer.ui.compat import make

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_presets_are_package_data():
    from setuptools import find_packages

    names = list_presets()
    assert {"style", "character", "concept", "low_vram", "quick_try"} <= set(names)
    assert all(os.path.dirname(p) == FOLDER for p in names.values())
    assert all(describe(n) for n in names), "every preset opens with '# Preset: <what for>'"
    with open(os.path.join(ROOT, "pyproject.toml"), encoding="utf-8") as fh:
        project = fh.read()  # (tomllib is not in Python 3.10, the WebUI's)
    assert 'include = ["lora_trainer*"]' in project and '"*.yaml"' in project.split("package-data]")[1]
    assert "lora_trainer.presets" in find_packages(ROOT, include=["lora_trainer*"])


@pytest.mark.parametrize("name", sorted(list_presets()))
def test_applying_a_preset_fills_the_form(name):
    basic, advanced = F.all_field_names()
    with gr.Blocks():
        fields = F.build_fields(gr, make, basic + advanced, values=T.APP_DEFAULTS)
    by_name = [f.info.name for f in fields]
    before = [f.component.value for f in fields]
    before[by_name.index("output_name")] = "mine"
    before[by_name.index("learning_rate")] = 0.5  # not in every preset: goes back to the default
    values = T.preset_values(fields, name)
    merged = [b if v is T.KEEP else v for b, v in zip(before, values, strict=True)]
    sent = F.values_to_dict(fields, merged)
    preset = load_preset(name)
    for key, value in preset.items():
        want = F._parse(F.display(fields[by_name.index(key)], value), fields[by_name.index(key)].kind, key)
        assert merged[by_name.index(key)] is not T.KEEP
        if value != fields[by_name.index(key)].info.default:
            assert str(sent[key]) == str(want), key
    assert sent["output_name"] == "mine"
    assert sent.get("learning_rate", 1e-4) == preset.get("learning_rate", 1e-4)
    assert T.preset_values(fields, "no-such-preset") is None


def test_trainer_tab_lists_the_presets(tmp_path):
    from lora_trainer.hosts.standalone import StandaloneHost

    tab = T.build_trainer_tab(StandaloneHost(root=str(tmp_path)))
    dropdown = next(b for b in tab.blocks.values() if getattr(b, "elem_id", None) == "lt_preset")
    shown = [c[0] if isinstance(c, (tuple, list)) else c for c in dropdown.choices]
    assert set(list_presets()) <= set(shown)


def test_examples_presets_are_the_shipped_ones():
    """examples/presets/ documents the same files the package ships (no second copy drifting apart)."""
    examples = os.path.join(ROOT, "examples", "presets")
    for name in os.listdir(examples):
        with open(os.path.join(examples, name), encoding="utf-8") as a, open(os.path.join(FOLDER, name),
                                                                             encoding="utf-8") as b:
            assert a.read() == b.read(), f"examples/presets/{name} differs from lora_trainer/presets/{name}"
