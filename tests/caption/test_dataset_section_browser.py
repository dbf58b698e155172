"""The Dataset section in headless Chromium (gradio served on 127.0.0.1, in this process): upload
images in the local-app mode, pick Florence-2, caption with a trigger word, see the result; a
captioner the installed transformers cannot run is greyed out with the reason."""

from __future__ import annotations

import os
import shutil

import pytest

from lora_trainer.caption import support
from lora_trainer.ui import dataset_section as ds

from .conftest import noise, solid

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture(scope="module")
def page():
    if not os.path.exists(CHROMIUM):
        pytest.skip("Debian chromium is not installed")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"])
        yield browser.new_page(viewport={"width": 1400, "height": 1600})
        browser.close()


@pytest.fixture
def served(tmp_path):
    gr = pytest.importorskip("gradio")
    if int(gr.__version__.split(".")[0]) < 4:
        pytest.skip("the browser test drives gradio 4+ widgets")
    with gr.Blocks() as demo:
        ds.build_dataset_section(allow_server_paths=True, upload_dir=str(tmp_path / "uploads"), webui=False)
    demo.queue()
    _, url, _ = demo.launch(server_name="127.0.0.1", prevent_thread_lock=True, quiet=True)
    yield url, tmp_path / "uploads"
    demo.close()


def _fill(page, elem_id: str, value: str) -> None:
    box = page.locator(f"#{elem_id} textarea, #{elem_id} input").first
    box.fill(value)
    box.press("Tab")


def _choose(page, elem_id: str, label: str) -> None:
    page.locator(f"#{elem_id} input").first.click()
    page.get_by_role("option", name=label).first.click()


def test_upload_then_florence2_captions_with_trigger(served, page, florence2_dir, tmp_path, monkeypatch):
    url, uploads = served
    files = [tmp_path / "red.png", tmp_path / "noisy.png"]
    solid((255, 0, 0)).save(files[0])
    noise(3).save(files[1])
    page.goto(url)
    page.wait_for_selector("#lt_ds_upload", timeout=60000)
    page.locator("#lt_ds_upload input[type=file]").set_input_files([str(f) for f in files])
    page.wait_for_function("() => document.querySelector('#lt_ds_summary').innerText.includes('2 images')",
                           timeout=60000)
    (folder,) = list(uploads.iterdir())  # the upload landed in the app's upload folder
    assert sorted(p.name for p in folder.iterdir()) == ["noisy.png", "red.png"]

    page.get_by_text("Auto-caption").first.click()
    page.get_by_label("WD14: add the rating tag").wait_for(timeout=30000)  # the checkbox has its label

    # transformers as Forge pins it: florence2 greyed out with the reason
    monkeypatch.setattr(support, "installed_version", lambda package: "4.46.1")
    _choose(page, "lt_ds_captioner", "florence2 (prose)")
    page.wait_for_function("() => document.querySelector('#lt_ds_captioner_note').innerText"
                           ".includes('needs transformers ≥ 4.56.0')", timeout=30000)
    assert page.locator("#lt_ds_caption").is_disabled()
    monkeypatch.undo()

    _choose(page, "lt_ds_captioner", "wd14 (tags)")
    _choose(page, "lt_ds_captioner", "florence2 (prose)")
    page.wait_for_function("() => !document.querySelector('#lt_ds_caption').disabled", timeout=30000)
    _fill(page, "lt_ds_model", str(florence2_dir))
    _choose(page, "lt_ds_detail", "short")
    _fill(page, "lt_ds_max_tokens", "6")
    _fill(page, "lt_ds_caption_trigger", "ohwx")
    _fill(page, "lt_ds_batch", "2")
    page.locator("#lt_ds_caption").click()
    try:
        page.wait_for_function("() => document.querySelector('#lt_ds_caption_status').innerText"
                               ".includes('2 captioned')", timeout=120000)
    except Exception:
        pytest.fail("no result; status: " + page.locator("#lt_ds_caption_status").inner_text())
    captions = [(folder / f"{stem}.txt").read_text() for stem in ("noisy", "red")]
    assert all(c.startswith("ohwx, ") and len(c) > 6 for c in captions)
    page.wait_for_function("() => document.querySelector('#lt_ds_summary').innerText.includes('2 captioned')",
                           timeout=30000)
