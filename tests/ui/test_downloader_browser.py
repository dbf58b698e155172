"""The Downloader tab in a real browser: per-row Cancel / Retry / Open folder, progress bars, Clear
finished, and a team manifest shown as cards with Install/Update.

The app runs in a subprocess with the gradio of the interpreter running the tests (6 in .venv,
4.40 in .venv-forge); LT_APP_PYTHON picks another interpreter for the app (e.g. the A1111 pins).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

SIZE = 1_600_000


class _Slow(BaseHTTPRequestHandler):
    """Serves one LoRA file, slowly until `server.fast` is set (no Range support: one connection)."""

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        data: bytes = self.server.data  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        for i in range(0, len(data), 16384):
            try:
                self.wfile.write(data[i:i + 16384])
            except OSError:
                return
            if not self.server.fast:  # type: ignore[attr-defined]
                time.sleep(0.1)


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(server: ThreadingHTTPServer):
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}"


def _lora_bytes(tmp: Path) -> bytes:
    import torch
    from safetensors.torch import save_file

    name = "lora_unet_down_blocks_0_attentions_0_proj_in"
    g = torch.Generator().manual_seed(3)
    save_file({f"{name}.lora_down.weight": torch.randn(4, SIZE // 32, generator=g),
               f"{name}.lora_up.weight": torch.zeros(8, 4), f"{name}.alpha": torch.tensor(4.0)},
              str(tmp / "slow.safetensors"), metadata={"ss_network_module": "networks.lora"})
    return (tmp / "slow.safetensors").read_bytes()


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """The standalone app on a free port with its own root folder (interpreter: LT_APP_PYTHON or ours)."""
    root = tmp_path_factory.mktemp("dl_app")
    port = free_port()
    env = dict(os.environ, PYTHONUNBUFFERED="1", GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1",
               PYTHONPATH=str(Path(__file__).parents[2]))
    env.pop("DISPLAY", None)
    env.pop("WAYLAND_DISPLAY", None)
    log = open(root / "app.log", "w")  # noqa: SIM115 - closed after the server stops
    python = os.environ.get("LT_APP_PYTHON") or sys.executable
    proc = subprocess.Popen([python, "-m", "lora_trainer", "app", "--root", str(root), "--port", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                log.close()
                pytest.fail("app did not start:\n" + (root / "app.log").read_text()[-3000:])
            time.sleep(0.5)
    yield {"url": url, "root": root}
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


def _fill(page, elem_id: str, value: str) -> None:
    box = page.locator(f"#{elem_id} textarea, #{elem_id} input").first
    box.fill(value)
    box.dispatch_event("input")
    box.press("Tab")


def _open_tab(page) -> None:
    """The Downloader tab (a role=tab button on gradio 4+, a plain button on 3.41)."""
    tab = page.locator("[role=tab]:has-text('LoRA Downloader'), .tab-nav button:has-text('LoRA Downloader')")
    tab.first.click(timeout=60000)


def _row(page, name: str):
    return page.locator("#ld_queue tr", has_text=name)


def _wait_text(page, selector: str, text: str, timeout: float = 60000) -> None:
    page.wait_for_function(
        "([s, t]) => { const e = document.querySelector(s); return e && e.innerText.includes(t); }",
        arg=[selector, text], timeout=timeout)


def test_download_with_per_row_cancel_retry_open_and_clear(app, browser, artifacts, tmp_path):
    data = _lora_bytes(tmp_path)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Slow)
    server.data, server.fast = data, False  # type: ignore[attr-defined]
    url = _serve(server) + "/files/slow.safetensors"
    page = browser.new_page(viewport={"width": 1400, "height": 1400})
    try:
        page.goto(app["url"])
        _open_tab(page)
        page.wait_for_selector("#ld_links", timeout=30000)
        _fill(page, "ld_links", url)
        page.locator("#ld_start").click()
        cancel = _row(page, "slow.safetensors").locator("button[data-verb=cancel]")
        cancel.wait_for(timeout=30000)
        _wait_text(page, "#ld_queue", "running")
        page.wait_for_function(  # the bar moves while it runs
            "() => { const b = document.querySelector('#ld_queue .ld-running .ld-bar > div');"
            " return b && parseFloat(b.style.width) > 0; }", timeout=30000)
        page.screenshot(path=os.path.join(artifacts, "downloader_running.png"), full_page=True)
        cancel.click()
        retry = _row(page, "slow.safetensors").locator("button[data-verb=retry]")
        retry.wait_for(timeout=30000)
        assert "cancelled" in _row(page, "slow.safetensors").inner_text()
        assert not (app["root"] / "models" / "Lora" / "slow.safetensors").exists()

        server.fast = True  # type: ignore[attr-defined]
        retry.click()
        opener = _row(page, "slow.safetensors").locator("button[data-verb=open]")
        opener.wait_for(timeout=60000)  # the retry refreshed the table by itself
        row = _row(page, "slow.safetensors").inner_text()
        assert "done" in row and "100%" in row, row
        landed = app["root"] / "models" / "Lora" / "slow.safetensors"
        assert hashlib.sha256(landed.read_bytes()).hexdigest() == hashlib.sha256(data).hexdigest()
        page.screenshot(path=os.path.join(artifacts, "downloader_retried.png"), full_page=True)

        _wait_text(page, "#ld_message", "Retried slow.safetensors")  # the retry's last word is said first
        opener.click()
        _wait_text(page, "#ld_message", str(landed.parent))
        page.locator("#ld_clear").click()
        _wait_text(page, "#ld_queue", "The queue is empty")
    finally:
        page.close()
        server.shutdown()


def test_team_manifest_cards_install(app, browser, artifacts, tmp_path):
    """A published manifest shows as cards; Install pulls the LoRA with its sidecar and preview."""
    import torch

    from lora_trainer.cli import main
    from lora_trainer.lora.file import save_lora_file
    from lora_trainer.lora.metadata import build_metadata, write_sidecars

    name = "lora_unet_down_blocks_0_attentions_0_proj_in"
    out = tmp_path / "out"
    lora = out / "teamink.safetensors"
    meta = build_metadata(output_name="teamink", arch="sd1", rank=4, alpha=4, trigger_words="tmink")
    save_lora_file(lora, {f"{name}.lora_down.weight": torch.randn(4, 32), f"{name}.lora_up.weight": torch.zeros(8, 4),
                          f"{name}.alpha": torch.tensor(4.0)}, meta)
    from PIL import Image

    write_sidecars(lora, trigger_words="tmink", preferred_weight=0.7, arch="sd1",
                   preview=Image.new("RGB", (32, 32), (20, 120, 220)))
    share = tmp_path / "share"
    assert main(["publish", str(out), "--manifest", str(share / "team.json")]) == 0

    def handler(*a, **k):
        return _Quiet(*a, directory=str(share), **k)

    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    link = _serve(server) + "/team.json"
    page = browser.new_page(viewport={"width": 1400, "height": 1400})
    try:
        page.goto(app["url"])
        _open_tab(page)
        page.get_by_text("Team manifest (shared LoRAs)").first.click()
        page.wait_for_selector("#ld_manifest", timeout=30000)
        _fill(page, "ld_manifest", link)
        page.locator("#ld_manifest_load").click()
        card = page.locator(".ld-card[data-name=teamink]")
        card.wait_for(timeout=30000)
        text = card.inner_text()
        assert "v1" in text and "not installed" in text and "tmink" in text, text
        page.wait_for_function(
            "() => { const i = document.querySelector('.ld-card[data-name=teamink] img');"
            " return i && i.complete && i.naturalWidth === 32; }", timeout=30000)
        card.locator("button[data-verb=update]").click()
        _wait_text(page, ".ld-card[data-name=teamink]", "up to date")
        _wait_text(page, "#ld_card_message", "v1 installed")
        page.screenshot(path=os.path.join(artifacts, "downloader_manifest_cards.png"), full_page=True)
        got = app["root"] / "models" / "Lora"
        assert sorted(p.name for p in got.glob("teamink*")) == ["teamink.json", "teamink.preview.png",
                                                               "teamink.safetensors"]
        # the app's own tokens/proxy section (the WebUI has its Settings page instead)
        page.get_by_text("Tokens and proxy", exact=True).first.click()
        page.wait_for_selector("#ld_civitai_token", timeout=30000)
        _fill(page, "ld_civitai_token", "civitai-test-token")
        page.locator("#ld_settings_save").click()
        _wait_text(page, "#ld_settings_saved", "kept for the next start")
        saved = app["root"] / ".lora-trainer-app.json"
        assert json.loads(saved.read_text())["civitai_token"] == "civitai-test-token"
        assert saved.stat().st_mode & 0o777 == 0o600
        assert "civitai-test-token" not in (app["root"] / "app.log").read_text()  # never in the log
        # a saved token never goes back to a page (the app may be served to other machines)
        page.reload()
        _open_tab(page)
        page.get_by_text("Tokens and proxy", exact=True).first.click()
        box = page.locator("#ld_civitai_token input, #ld_civitai_token textarea").first
        box.wait_for(timeout=30000)
        assert box.input_value() == "" and "saved" in (box.get_attribute("placeholder") or "")
        assert "civitai-test-token" not in page.content()
        page.locator("#ld_settings_save").click()  # an empty box keeps the saved token
        _wait_text(page, "#ld_settings_saved", "kept for the next start")
        assert json.loads(saved.read_text())["civitai_token"] == "civitai-test-token"
        page.locator("#ld_settings_forget").click()
        _wait_text(page, "#ld_settings_saved", "forgotten")
        assert json.loads(saved.read_text()).get("civitai_token", "") == ""
    finally:
        page.close()
        server.shutdown()
