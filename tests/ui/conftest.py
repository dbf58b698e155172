"""Serve the standalone app in a subprocess and drive it with headless Chromium (Playwright)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import urllib.request

import pytest

from tests.helpers.wait import wait_for

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = os.environ.get("LT_UI_ARTIFACTS") or os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(__file__))), "artifacts", "ui")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def artifacts() -> str:
    os.makedirs(ARTIFACTS, exist_ok=True)
    return ARTIFACTS


# the app may run on another environment's Python than the browser driver (e.g. the A1111 pins,
# gradio 3.41, which have no Playwright): LT_APP_PYTHON=.venv-a1111/bin/python
APP_PYTHON = os.environ.get("LT_APP_PYTHON") or sys.executable
# holds the app's training after each step while `<root>/step-gate` exists (see pacing/sitecustomize.py)
PACING = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pacing")


@pytest.fixture(scope="session")
def app_can_train() -> bool:
    """The tiny built-in model needs diffusers in the app's environment (the A1111 pins have none)."""
    return subprocess.run([APP_PYTHON, "-c", "import diffusers"], capture_output=True).returncode == 0


@pytest.fixture(scope="module")
def app_server(tmp_path_factory):
    """`python -m lora_trainer app` on a free port with its own root folder."""
    yield from _serve(tmp_path_factory.mktemp("app_root"), [])


@pytest.fixture(scope="module")
def public_app_server(tmp_path_factory):
    """The app listening on every interface without --allow-remote-paths (browsed via 127.0.0.1)."""
    yield from _serve(tmp_path_factory.mktemp("public_root"), ["--host", "0.0.0.0"])


def _serve(root, extra):
    port = free_port()
    env = dict(os.environ, PYTHONUNBUFFERED="1", GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1",
               LT_TEST_STEP_GATE=str(root / "step-gate"),
               PYTHONPATH=os.pathsep.join(p for p in (PACING, os.environ.get("PYTHONPATH", "")) if p))
    log = open(root / "app.log", "w")  # noqa: SIM115 - closed after the server stops
    proc = subprocess.Popen([APP_PYTHON, "-m", "lora_trainer", "app", "--root", str(root), "--port", str(port),
                             *extra], stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"

    def answering() -> bool:
        if proc.poll() is not None:
            return True  # exited: stop waiting, reported below
        try:
            urllib.request.urlopen(url, timeout=2)
            return True
        except OSError:
            return False

    try:
        wait_for(answering, 120, interval=0.5, what=f"the app at {url}")
    except TimeoutError:
        proc.kill()
        proc.wait(10)
    if proc.poll() is not None:
        log.close()
        pytest.fail("app did not start:\n" + (root / "app.log").read_text()[-3000:])
    yield {"url": url, "root": root, "proc": proc}
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.skip("Debian chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        yield b
        b.close()
