"""The standalone app in a real browser: train the tiny model from the form, download into models/Lora."""

from __future__ import annotations

import hashlib
import os
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest


def _fill(page, elem_id: str, value: str) -> None:
    box = page.locator(f"#{elem_id} textarea, #{elem_id} input").first
    box.fill(value)
    box.dispatch_event("input")
    box.press("Tab")


def _open_accordion(page, title: str) -> None:
    page.get_by_text(title, exact=False).first.click()


def test_train_from_the_form(app_server, browser, artifacts, tmp_path, app_can_train):
    if not app_can_train:
        pytest.skip("the app's environment has no diffusers (the built-in tiny model needs it)")
    from lora_trainer.synthetic import concept_set, write_dataset

    data = tmp_path / "dataset"
    write_dataset(str(data), concept_set("zqx", 4, seed=1), repeats=1, name="zqx")
    page = browser.new_page(viewport={"width": 1400, "height": 1800})
    page.goto(app_server["url"])
    page.wait_for_selector("#lt_train", timeout=60000)
    _fill(page, "lt_output_name", "ui_lora")
    _fill(page, "lt_trigger_word", "zqx")
    _fill(page, "lt_train_data_dir", str(data))
    _fill(page, "lt_epochs", "2")
    _fill(page, "lt_sample_prompts", "zqx checker star")
    _fill(page, "lt_save_every_n_epochs", "1")
    page.screenshot(path=os.path.join(artifacts, "trainer_form.png"), full_page=True)
    page.locator("#lt_train").click()
    try:
        page.wait_for_function(
            "() => { const e = document.querySelector('#lt_result_prompt textarea, #lt_result_prompt input');"
            " return e && e.value.includes('<lora:ui_lora'); }", timeout=300000)
    except Exception:
        page.screenshot(path=os.path.join(artifacts, "trainer_failed.png"), full_page=True)
        pytest.fail("no result card; status: " + page.locator("#lt_status").inner_text()
                    + "\nlog: " + page.locator("#lt_log textarea").input_value()[-2000:])
    status = page.locator("#lt_status").inner_text()
    page.screenshot(path=os.path.join(artifacts, "trainer_done.png"), full_page=True)
    assert "Done" in status, status
    card = page.locator("#lt_result_md").inner_text()
    assert os.path.join("models", "Lora") in card, card
    lora = app_server["root"] / "models" / "Lora" / "ui_lora.safetensors"
    assert lora.exists()
    sidecar = lora.with_suffix(".json")
    assert sidecar.exists() and "zqx" in sidecar.read_text()
    assert page.locator("#lt_plot img").count() == 1
    log = page.locator("#lt_log textarea").input_value()
    assert "saved" in log


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args):  # noqa: D401
        pass


@pytest.fixture
def file_server(tmp_path):
    import torch
    from safetensors.torch import save_file

    folder = tmp_path / "srv"
    folder.mkdir()
    tensors = {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.randn(4, 32),
               "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.zeros(32, 4),
               "lora_unet_down_blocks_0_attentions_0_proj_in.alpha": torch.tensor(4.0)}
    save_file(tensors, str(folder / "served_lora.safetensors"), metadata={"ss_network_module": "networks.lora"})

    def handler(*a, **k):
        return _Quiet(*a, directory=str(folder), **k)

    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/served_lora.safetensors", folder / "served_lora.safetensors"
    server.shutdown()


def test_downloader_tab_fetches_into_lora_folder(app_server, browser, artifacts, file_server):
    url, source = file_server
    page = browser.new_page(viewport={"width": 1400, "height": 1200})
    page.goto(app_server["url"])
    page.get_by_role("tab", name="LoRA Downloader").click()
    page.wait_for_selector("#ld_links", timeout=30000)
    _fill(page, "ld_links", url)
    page.locator("#ld_start").click()
    page.wait_for_function(
        "() => (document.querySelector('#ld_message')||{}).innerText?.includes('finished')", timeout=60000)
    page.screenshot(path=os.path.join(artifacts, "downloader_done.png"), full_page=True)
    landed = app_server["root"] / "models" / "Lora" / "served_lora.safetensors"
    assert landed.exists()
    assert hashlib.sha256(landed.read_bytes()).hexdigest() == hashlib.sha256(source.read_bytes()).hexdigest()
    queue = page.locator("#ld_queue").inner_text()
    assert "served_lora" in queue and "done" in queue, queue
