"""The form <-> config conversions: "not set" stays distinct from false/0, in the form, in the config the
run starts with and in the exported YAML (an untouched v-prediction choice must leave detection on)."""

from __future__ import annotations

import json
import os

import gradio as gr
import pytest
import yaml

from lora_trainer.config import config_fields, load_config
from lora_trainer.ui import form as F
from lora_trainer.ui.compat import make


@pytest.fixture(scope="module")
def fields():
    basic, advanced = F.all_field_names()
    with gr.Blocks():
        return F.build_fields(gr, make, basic + advanced)


def _defaults(fields):
    """What an untouched form sends: each component's initial value."""
    return [f.component.value for f in fields]


def _set(fields, values, name, value):
    out = list(values)
    out[[f.info.name for f in fields].index(name)] = value
    return out


def test_every_optional_field_has_a_not_set_state(fields):
    """Every `X | None` field (bool or number) is shown with an explicit "not set" and sends nothing then."""
    optional = [f for f in config_fields() if "None" in f.type and f.name in {x.info.name for x in fields}]
    kinds = {f.info.name: f.kind for f in fields}
    for info in optional:
        t = info.type.replace(" ", "")
        if t == "bool|None":
            assert kinds[info.name] == "opt_bool", info.name
        elif t in ("int|None", "float|None"):
            assert kinds[info.name] in ("opt_int", "opt_float"), info.name
    assert F.values_to_dict(fields, _defaults(fields)) == {}


def test_v_parameterization_is_a_three_way_choice(fields):
    field = next(f for f in fields if f.info.name == "v_parameterization")
    assert isinstance(field.component, gr.Radio)
    choices = [c[0] if isinstance(c, (tuple, list)) else c for c in field.component.choices]
    assert len(choices) == 3 and choices[0].startswith("auto") and field.component.value == choices[0]
    base = _defaults(fields)
    assert "v_parameterization" not in F.values_to_dict(fields, base)
    assert F.values_to_dict(fields, _set(fields, base, "v_parameterization", choices[1])) == {"v_parameterization": True}
    assert F.values_to_dict(fields, _set(fields, base, "v_parameterization", choices[2])) == {
        "v_parameterization": False}
    # exported YAML keeps "not set" out, and a loaded false comes back as "no", not "auto"
    assert "v_parameterization" not in yaml.safe_load(F.form_to_yaml(fields, base) or "{}") or {}
    text = F.form_to_yaml(fields, _set(fields, base, "v_parameterization", choices[2]))
    assert yaml.safe_load(text) == {"v_parameterization": False}
    updates = F.dict_to_updates(fields, F.yaml_to_dict(text), F.update if hasattr(F, "update") else gr.update)
    shown = updates[[f.info.name for f in fields].index("v_parameterization")]["value"]
    assert shown == choices[2]


def test_labels_and_help_are_for_people(fields):
    for f in fields:
        assert "`" not in F.help_of(f.info), f.info.name
        assert "_" not in F.label_of(f.info.name), f.info.name
    # every key the form shows has a label written for people (a new key fails here until it gets one)
    unlabelled = [f.info.name for f in fields if f.info.name not in F.LABELS]
    assert not unlabelled, f"add these keys to ui/form.py LABELS: {unlabelled}"
    sections = F.advanced_sections(F.all_field_names()[1])
    assert [t for t, _ in sections][:2] == ["Model", "Dataset and captions"]


def test_untouched_form_leaves_v_prediction_detection_on(tmp_path, fields):
    """An SD2-v style base (a diffusers folder whose scheduler says v_prediction) trained from the form's
    values, through the run starter the app uses, saves `ss_v_parameterization: True` (a full tiny run)."""
    pytest.importorskip("diffusers")  # the engine's own model loading (not in A1111's pins)
    from lora_trainer.hosts.runs import start_training
    from lora_trainer.hosts.standalone import StandaloneHost
    from lora_trainer.jobs import JobRegistry
    from lora_trainer.lora.file import read_lora_metadata
    from lora_trainer.models.tiny import save_tiny_model
    from lora_trainer.synthetic import concept_set, write_dataset
    from lora_trainer.ui.trainer_tab import form_config

    host = StandaloneHost(root=str(tmp_path / "root"))
    model = save_tiny_model(os.path.join(host.model_dirs()["checkpoint"], "tiny-v"), "sd1")
    sched = os.path.join(model, "scheduler", "scheduler_config.json")
    with open(sched) as fh:
        conf = json.load(fh)
    conf["prediction_type"] = "v_prediction"
    with open(sched, "w") as fh:
        json.dump(conf, fh)
    data = tmp_path / "data"
    write_dataset(str(data), concept_set("zqx", 2, seed=1), repeats=1, name="zqx")
    values = _defaults(fields)
    for name, value in {"output_name": "vtest", "train_data_dir": str(data), "base_model": model,
                        "resolution": "64", "max_train_steps": "2", "lora_rank": 2, "lora_alpha": 2,
                        "cache_latents": False}.items():
        values = _set(fields, values, name, value)
    config = form_config(host, fields, values, None)
    assert "v_parameterization" not in config
    assert load_config(dict(config), check_paths=False).v_parameterization is None
    jobs = JobRegistry()
    job = start_training(host, config, jobs=jobs)
    job.join(240)
    assert job.state == "done", job.error
    meta = read_lora_metadata(job.result.output_path)
    assert meta["ss_v_parameterization"] == "True", meta.get("ss_v_parameterization")


def test_sample_prompts_without_a_cadence_get_one(tmp_path, fields):
    from lora_trainer.hosts.standalone import StandaloneHost
    from lora_trainer.ui.trainer_tab import form_config

    host = StandaloneHost(str(tmp_path))
    values = _set(fields, _defaults(fields), "output_name", "x")
    values = _set(fields, values, "sample_prompts", "a zqx\na vyk")
    config = form_config(host, fields, _set(fields, values, "epochs", 20), str(tmp_path))
    assert config["sample_prompts"] == ["a zqx", "a vyk"] and config["sample_every_n_epochs"] == 4
    chosen = form_config(host, fields, _set(fields, values, "sample_every_n_steps", 7), str(tmp_path))
    assert chosen["sample_every_n_steps"] == 7 and "sample_every_n_epochs" not in chosen
    assert "sample_every_n_epochs" not in form_config(host, fields, _set(fields, values, "sample_prompts", ""),
                                                      str(tmp_path))


def test_name_lists_round_trip_one_per_line():
    """A list default (flux_layers) shows one name per line and comes back as the same list, so an
    untouched form sends nothing for it; typed names (one per line or comma-separated) become a list."""
    from lora_trainer.ui.form import _display, _parse

    shown = _display(["attn", "mlp", "mod"], "yaml")
    assert shown == "attn\nmlp\nmod" and _parse(shown, "yaml", "flux_layers") == ["attn", "mlp", "mod"]
    assert _parse("lora_unet_up_*\n*attn2*", "yaml", "network_include") == ["lora_unet_up_*", "*attn2*"]
    assert _parse("attn, mlp", "yaml", "flux_layers") == ["attn", "mlp"]
    assert _parse("[attn]", "yaml", "flux_layers") == ["attn"]


def test_the_webui_does_not_offer_what_forge_decides_for_flux(fields):
    """fp8 storage and block swap of a FLUX.1 base are Forge's own settings there; the app offers them."""
    flux_memory = ("fp8_base", "blocks_to_swap")
    assert all(f.component.visible for f in fields if f.info.name in flux_memory)
    with gr.Blocks():
        webui = F.build_fields(gr, make, list(flux_memory), hidden=F.WEBUI_HIDDEN)
    assert [f.component.visible for f in webui] == [False, False]
