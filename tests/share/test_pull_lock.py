"""Two `pull` processes into one models folder: the second waits for the first (a file lock, not a
per-process one), then finds everything current; one download, one intact record."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from shareserver import gated_server

from lora_trainer.cli import main
from lora_trainer.share.record import RECORD_NAME

ROOT = Path(__file__).resolve().parents[2]


def _start(link: str, models: Path, log: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    with open(log, "w") as out:
        return subprocess.Popen([sys.executable, "-m", "lora_trainer", "pull", link, "--to", str(models), "-x", "1"],
                                stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)


def _wait_for(what, deadline_s: float, why: str) -> None:
    end = time.monotonic() + deadline_s
    while not what():
        assert time.monotonic() < end, why
        time.sleep(0.05)


def test_two_pull_processes_take_turns(trained, tmp_path):
    share, models = tmp_path / "share", tmp_path / "models"
    assert main(["publish", str(trained[1]), "--manifest", str(share / "team.json")]) == 0
    with gated_server(str(share)) as srv:
        link = f"{srv.url}/team.json"
        first = _start(link, models, tmp_path / "first.log")
        try:
            _wait_for(srv.httpd.arrived.is_set, 60, "the first pull never asked for the file")
            second = _start(link, models, tmp_path / "second.log")
            try:
                _wait_for(lambda: "waiting for it to finish" in (tmp_path / "second.log").read_text(), 60,
                          "the second pull did not wait: " + (tmp_path / "second.log").read_text())
                assert srv.httpd.asked == 1 and second.poll() is None  # held back while the first holds the lock
                srv.httpd.gate.set()
                assert first.wait(60) == 0 and second.wait(60) == 0
            finally:
                second.kill()
        finally:
            srv.httpd.gate.set()
            first.kill()
    out1, out2 = (tmp_path / "first.log").read_text(), (tmp_path / "second.log").read_text()
    assert "inkstyle: v1 installed" in out1
    assert "inkstyle: v1 is current" in out2 and "nothing downloaded" in out2
    assert srv.httpd.asked == 1 and srv.downloads() == 1
    record = json.loads((models / RECORD_NAME).read_text())
    assert list(record["loras"]) == ["inkstyle"] and record["loras"]["inkstyle"]["version"] == 1
    assert sorted(p.name for p in (models / "Lora").iterdir()) == [
        "inkstyle.json", "inkstyle.preview.png", "inkstyle.safetensors"]
    assert not list(models.glob(".lora-pull-*"))


def test_a_stop_request_ends_the_wait(tmp_path):
    import pytest

    from lora_trainer.errors import UserError
    from lora_trainer.events import StopFlag
    from lora_trainer.share.lock import folder_lock

    code = ("import sys, time\nfrom lora_trainer.share.lock import folder_lock\n"
            "with folder_lock(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(60)\n")
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                              env=dict(os.environ, PYTHONPATH=str(ROOT)))
    stop, said = StopFlag(), []
    try:
        assert holder.stdout.readline().strip() == "held"  # another process holds the folder now

        def told(message: str) -> None:  # the user reads the wait line, then presses Stop
            said.append(message)
            stop.request()

        with pytest.raises(UserError, match="stopped while waiting for another pull"), \
                folder_lock(tmp_path, told, stop):
            pass
        assert said == [f"another pull is updating {tmp_path}; waiting for it to finish"]
    finally:
        holder.kill()
        holder.wait(10)
    with folder_lock(tmp_path, said.append, StopFlag()):  # the OS let go when the holder died
        pass
    assert len(said) == 1
