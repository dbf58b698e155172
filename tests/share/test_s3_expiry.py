"""Presigned links that expire, on a second S3-compatible server (s3rver, see s3rver_server.py): our signed
uploads are accepted, links work while valid, the server refuses them after expiry, and pull then fails
that entry with one line naming the expiry (or uses a mirror), leaving the models folder as it was."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import pytest
from s3rver_server import ACCESS_KEY, SECRET_KEY, S3rver
from shareserver import Served

from lora_trainer.cli import main
from lora_trainer.share.manifest import load_manifest_file
from lora_trainer.share.record import RECORD_NAME

BUCKET = "team-loras"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    with S3rver(tmp_path_factory.mktemp("s3rver"), BUCKET) as server:
        yield server.url


@pytest.fixture
def keys(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)


def _publish(trained, n: int, manifest, store: str, prefix: str, expires: str, *extra: str) -> None:
    assert main(["publish", str(trained[n]), "--manifest", str(manifest), "--to", f"s3://{BUCKET}/{prefix}",
                 "--endpoint-url", store, "--expires", expires, *extra]) == 0


def _refused_as_expired(link: str) -> bool:
    try:
        with urllib.request.urlopen(link, timeout=10) as resp:
            resp.read()
        return False
    except urllib.error.HTTPError as exc:
        body = exc.read().decode()
        assert exc.code == 403 and "<Message>Request has expired</Message>" in body, body  # no other refusal
        return True


def _wait_until_expired(link: str) -> None:
    """The server's own clock decides; poll it (a 1 s link, so this ends within about a second)."""
    deadline = time.monotonic() + 30
    while not _refused_as_expired(link):
        assert time.monotonic() < deadline, "the server still serves the link 30 s after it should expire"
        time.sleep(0.1)


def _folder(models) -> list[str]:
    return sorted(str(p.relative_to(models)) for p in models.rglob("*"))


def test_expired_link_refused_and_pull_keeps_the_old_version(trained, tmp_path, store, keys, capsys):
    manifest, models = tmp_path / "team.json", tmp_path / "models"
    _publish(trained, 1, manifest, store, "exp", "1h")
    v1 = load_manifest_file(manifest).entry("inkstyle").latest
    with urllib.request.urlopen(v1.urls[0], timeout=10) as resp:  # the upload landed byte for byte
        assert resp.read() == (trained[1] / "inkstyle.safetensors").read_bytes()
    assert main(["pull", str(manifest), "--to", str(models), "-q"]) == 0
    before = _folder(models)
    record = (models / RECORD_NAME).read_text()

    _publish(trained, 2, manifest, store, "exp", "1s")
    v2 = load_manifest_file(manifest).entry("inkstyle").latest
    assert v2.version == 2 and v2.expires
    _wait_until_expired(v2.urls[0])
    capsys.readouterr()
    assert main(["pull", str(manifest), "--to", str(models), "-q"]) == 4  # link expired
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0] == (f"inkstyle: FAILED: the links of v2 expired at {v2.expires} and the store refuses them "
                      "(HTTP 403); ask the manifest's publisher to publish again (that refreshes the links)")
    assert _folder(models) == before and (models / RECORD_NAME).read_text() == record  # nothing partial landed

    _publish(trained, 2, manifest, store, "exp", "1h")  # publishing again refreshes the links
    assert [v.version for v in load_manifest_file(manifest).entry("inkstyle").versions] == [1, 2]
    assert main(["pull", str(manifest), "--to", str(models), "-q"]) == 0
    assert "v2 updated (was v1)" in capsys.readouterr().out
    assert json.loads((models / RECORD_NAME).read_text())["loras"]["inkstyle"]["version"] == 2


def test_expired_link_falls_back_to_the_mirror(trained, tmp_path, store, keys, capsys):
    mirror, manifest, models = tmp_path / "mirror", tmp_path / "team.json", tmp_path / "models"
    assert main(["publish", str(trained[1]), "--manifest", str(mirror / "team.json")]) == 0  # the same tree
    with Served(str(mirror)) as srv:
        _publish(trained, 1, manifest, store, "mir", "1s", "--mirror", srv.url)
        v1 = load_manifest_file(manifest).entry("inkstyle").latest
        assert v1.urls[1] == f"{srv.url}/inkstyle/v1/inkstyle.safetensors"
        _wait_until_expired(v1.urls[0])
        capsys.readouterr()
        assert main(["pull", str(manifest), "--to", str(models), "-q"]) == 0
        assert "v1 installed" in capsys.readouterr().out
        assert srv.downloads() == 1
    pulled = json.loads((models / RECORD_NAME).read_text())["loras"]["inkstyle"]
    assert pulled["source"] == v1.urls[1] and pulled["sha256"] == v1.sha256


def test_unknown_key_refused_by_the_second_server(trained, tmp_path, store, monkeypatch, capsys):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "NOT-A-KEY")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    manifest = tmp_path / "team.json"
    assert main(["publish", str(trained[1]), "--manifest", str(manifest), "--to", f"s3://{BUCKET}/bad",
                 "--endpoint-url", store]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "refused: InvalidAccessKeyId" in err[0] and "AWS_ACCESS_KEY_ID" in err[0]
    assert not manifest.exists()
