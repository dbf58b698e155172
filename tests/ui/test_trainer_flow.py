"""The Trainer tab as a user meets it, in headless Chromium against the real app:
preset -> Train -> reload mid-run (the page re-attaches) -> a second Train is refused at once -> Stop ->
Resume -> result card; the v-prediction choice through the form and its YAML; the remote-access rule
for every path-valued key, typed into the form of an app listening beyond localhost.

Fast on purpose: the built-in tiny model, 64 px, 2 images, 6 steps. Screenshots of the final screens go
to the artifacts folder, and with LT_UPDATE_SCREENSHOTS=1 also to docs/screenshots/ (small PNGs linked
from the README).
"""

from __future__ import annotations

import os
import re
import time

import pytest

from lora_trainer.hosts.access import path_fields
from lora_trainer.ui.form import all_field_names

SHOTS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "docs",
                     "screenshots")


def _box(page, elem_id: str):
    return page.locator(f"#{elem_id} textarea, #{elem_id} input").first


def _fill(page, elem_id: str, value: str) -> None:
    box = _box(page, elem_id)
    box.fill(value)
    box.dispatch_event("input")
    box.press("Tab")


def _pick(page, elem_id: str, option: str) -> None:
    """Choose `option` in a gradio dropdown (3.41/4.x: ul.options > li; 6: ul[role=listbox] > li)."""
    _box(page, elem_id).click()
    page.locator("ul[role=listbox] li, ul.options li", has_text=re.compile(rf"^\s*✓?\s*{re.escape(option)}\s*$")).first.click()


def _text(page, elem_id: str) -> str:
    return page.locator(f"#{elem_id}").first.inner_text()  # gradio 3.41 repeats a Markdown's id inside


def _wait_text(page, elem_id: str, pattern: str, timeout_s: float) -> str:
    """Wait until the element's text matches `pattern`; fail with what it shows."""
    deadline = time.time() + timeout_s
    text = ""
    while time.time() < deadline:
        text = _text(page, elem_id) if page.locator(f"#{elem_id}").count() else ""
        if re.search(pattern, text):
            return text
        time.sleep(0.3)
    log = _box(page, "lt_log").input_value() if page.locator("#lt_log").count() else ""
    pytest.fail(f"#{elem_id} never matched {pattern!r}; it shows: {text!r}\nlog: {log[-1500:]}")


def _wait_value(page, elem_id: str, pattern: str, timeout_s: float) -> str:
    deadline = time.time() + timeout_s
    value = ""
    while time.time() < deadline:
        value = _box(page, elem_id).input_value()
        if re.search(pattern, value):
            return value
        time.sleep(0.3)
    pytest.fail(f"#{elem_id} value never matched {pattern!r}; it is {value!r}")


def _shot(page, name: str, artifacts: str) -> None:
    """A full-page screenshot in the artifacts (and a small copy in docs/screenshots when asked)."""
    from PIL import Image

    path = os.path.join(artifacts, name)
    page.screenshot(path=path, full_page=True)
    if not os.environ.get("LT_UPDATE_SCREENSHOTS"):
        return
    os.makedirs(SHOTS, exist_ok=True)
    with Image.open(path) as img:
        img = img.convert("RGB")
        img.thumbnail((900, 1400))
        img.quantize(colors=128).save(os.path.join(SHOTS, name), optimize=True)


def _open(page, url: str) -> None:
    page.goto(url)
    page.wait_for_selector("#lt_train", timeout=60000)


@pytest.fixture
def dataset(tmp_path):
    from lora_trainer.synthetic import concept_set, write_dataset

    data = tmp_path / "dataset"
    write_dataset(str(data), concept_set("zqx", 2, seed=1), repeats=1, name="zqx")
    return str(data)


def test_preset_train_reload_stop_resume(app_server, browser, artifacts, dataset, app_can_train):
    if not app_can_train:
        pytest.skip("the app's environment has no diffusers (the built-in tiny model needs it)")
    page = browser.new_page(viewport={"width": 1400, "height": 1600})
    _open(page, app_server["url"])
    _pick(page, "lt_preset", "quick_try")
    _wait_text(page, "lt_preset_info", "first try", 30)
    assert _box(page, "lt_resolution").input_value() == "64"
    _fill(page, "lt_output_name", "flow")
    _fill(page, "lt_train_data_dir", dataset)
    _fill(page, "lt_batch_size", "1")
    _fill(page, "lt_epochs", "3")  # 2 images x 3 epochs = 6 steps; stopped after the first
    gate = app_server["root"] / "step-gate"
    gate.touch()  # the run holds after each step until the test has acted (machine speed does not matter)
    page.locator("#lt_train").click()
    _wait_text(page, "lt_status", r"step \*?\*?\d+/6", 180)

    page.reload()  # a fresh page finds the run and follows it
    page.wait_for_selector("#lt_train", timeout=60000)
    _wait_text(page, "lt_status", r"step \*?\*?\d+/6", 60)
    assert "Steps" in _text(page, "lt_plan") and "6 (2 per epoch" in _text(page, "lt_plan")
    assert "arch_source" not in _text(page, "lt_plan")
    _shot(page, "trainer_running.png", artifacts)

    page.locator("#lt_train").click()  # another Train while it runs: answered at once, nothing queued
    _wait_text(page, "lt_notice", r"already running \(flow, (step \d+/6|starting)\)", 15)

    page.locator("#lt_stop").click()
    _wait_text(page, "lt_notice", r"Stopping", 30)
    gate.unlink()  # let the held step end: the run sees the stop there
    _wait_text(page, "lt_status", r"Stopped.*final loss \d.*flow-0000\d+\.safetensors \(\d+(\.\d)? [KM]B\)", 120)
    _wait_text(page, "lt_result_md", "stopped early", 10)
    lora = app_server["root"] / "models" / "Lora"
    partial = sorted(lora.glob("flow-0*.safetensors"))
    assert len(partial) == 1 and partial[0].with_suffix(".json").exists(), os.listdir(lora)

    page.locator("#lt_resume_refresh").click()
    _wait_value(page, "lt_resume_state", r"flow · step \d+", 15)
    page.locator("#lt_resume").click()
    _wait_text(page, "lt_status", r"Done\.", 240)
    _wait_text(page, "lt_result_md", "is ready", 15)
    prompt = _box(page, "lt_result_prompt").input_value()
    assert prompt == "<lora:flow:0.8>", prompt
    assert "resumed from" in _box(page, "lt_log").input_value()
    page.wait_for_function("() => { const t = document.querySelector('#lt_log textarea');"
                           " return t.scrollHeight > t.clientHeight + 30"
                           " && t.scrollHeight - t.scrollTop - t.clientHeight < 30; }", timeout=10000)
    assert (lora / "flow.safetensors").exists() and (lora / "flow.json").exists()
    assert not list(lora.glob("flow-0*")), "the finished run replaces what its stop published"
    _shot(page, "trainer_done.png", artifacts)


def test_v_prediction_round_trip_through_the_form(app_server, browser):
    page = browser.new_page(viewport={"width": 1400, "height": 1600})
    _open(page, app_server["url"])
    page.get_by_text("Advanced settings").first.click()
    page.locator("#lt_advanced").get_by_text("Model", exact=True).first.click()
    radio = page.locator("#lt_v_parameterization")
    radio.wait_for(state="visible", timeout=15000)
    assert radio.locator("input:checked").first.get_attribute("value", timeout=5000).startswith("auto")
    page.get_by_text("YAML config: import / export").first.click()

    def exported() -> str:
        _fill(page, "lt_yaml", "")
        page.locator("#lt_yaml_export").click()
        deadline = time.time() + 20
        while time.time() < deadline and not _box(page, "lt_yaml").input_value().strip():
            time.sleep(0.2)
        return _box(page, "lt_yaml").input_value()

    assert "v_parameterization" not in exported()  # untouched: detection stays on
    radio.get_by_text("no (epsilon)").click()
    assert "v_parameterization: false" in exported()
    radio.get_by_text("auto: detect from the model").click()
    assert "v_parameterization" not in exported()
    _fill(page, "lt_yaml", "v_parameterization: true\n")
    page.locator("#lt_yaml_import").click()
    deadline = time.time() + 20
    while time.time() < deadline and not radio.locator("input:checked").count():
        time.sleep(0.2)
    page.wait_for_function("() => { const c = document.querySelector('#lt_v_parameterization input:checked');"
                           " return c && c.value.startsWith('yes'); }", timeout=20000)


def test_remote_rule_for_every_path_field(public_app_server, browser, artifacts, tmp_path):
    """Each path-valued key, typed into the form of a public app, is refused naming that key, with the
    same words for an existing and a missing server file."""
    from PIL import Image

    root = public_app_server["root"]
    upload = root / "outputs" / "lora-trainer" / "uploads" / "set1" / "1_zqx"
    upload.mkdir(parents=True)
    Image.new("RGB", (64, 64), "red").save(upload / "a.png")
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "model.safetensors").write_text("x")
    page = browser.new_page(viewport={"width": 1400, "height": 1400})
    _open(page, public_app_server["url"])
    page.get_by_text("YAML config: import / export").first.click()
    # the form's path keys (output_dir/logging_dir are the host's, not in the form: tests/webui covers them);
    # sample_prompts from the form is always a list of prompts, never read from a file: not a path here
    in_form = set(sum(all_field_names(), []))
    names = sorted(k for k in path_fields() if k in in_form and k != "sample_prompts")
    assert {"base_model", "network_weights", "resume_from_checkpoint", "vae_path", "metadata_path"} <= set(names)
    for name in names:
        said = []
        for target in (secret / "model.safetensors", secret / "missing.safetensors"):
            base = {"output_name": "r", "train_data_dir": str(upload.parent), "base_model": "builtin:tiny-sd1",
                    name: str(target)}
            _fill(page, "lt_yaml", "\n".join(f"{k}: {v}" for k, v in base.items()))
            page.locator("#lt_yaml_import").click()
            _wait_text(page, "lt_notice", "YAML loaded", 15)
            page.locator("#lt_train").click()
            text = _wait_text(page, "lt_notice", "Cannot start", 30)
            assert f"{name} '{target}'" in text, (name, text)
            said.append(text.replace(str(target), "<path>"))
        assert said[0] == said[1], said
    _shot(page, "trainer_remote_refusal.png", artifacts)


def test_page_load_shows_the_run_started_elsewhere(app_server, browser, dataset):
    """A run started through the app's HTTP API (same routes as in the WebUI) is what a page shows when
    it loads; here one that fails while loading its model, so this runs fast on every gradio."""
    import json
    import urllib.request

    models = app_server["root"] / "models" / "Stable-diffusion"
    models.mkdir(parents=True, exist_ok=True)
    (models / "broken.safetensors").write_bytes(b"not a model")
    body = {"config": {"train_data_dir": dataset, "base_model": str(models / "broken.safetensors"),
                       "output_name": "elsewhere", "resolution": 64}}
    req = urllib.request.Request(app_server["url"] + "lora-trainer/v1/train", data=json.dumps(body).encode(),
                                 method="POST", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        job = json.loads(r.read())
    page = browser.new_page(viewport={"width": 1400, "height": 1200})
    _open(page, app_server["url"])
    _wait_text(page, "lt_status", r"Failed:.*broken\.safetensors", 120)
    with urllib.request.urlopen(app_server["url"] + f"lora-trainer/v1/train/{job['id']}", timeout=30) as r:
        assert json.loads(r.read())["state"] == "failed"
