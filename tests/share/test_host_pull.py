"""The host side of team manifests (what the Downloader tab calls): status per LoRA, pull into the
host's folders, the exposure rule, and engine advice reworded for the screen."""

from __future__ import annotations

import pytest
from shareserver import Served

from lora_trainer.cli import main
from lora_trainer.hosts import downloads
from lora_trainer.hosts.base import AccessDenied
from lora_trainer.hosts.standalone import StandaloneHost


def test_host_status_then_pull_into_its_lora_folder(trained, tmp_path):
    share = tmp_path / "share"
    assert main(["publish", str(trained[1]), "--manifest", str(share / "team.json")]) == 0
    host = StandaloneHost(root=str(tmp_path / "app"))
    with Served(str(share)) as srv:
        link = f"{srv.url}/team.json"
        _, _, statuses = downloads.read_team_manifest(host, link)
        assert statuses["inkstyle"][0] == "missing"
        report = downloads.pull_team(host, link, ["inkstyle"])
        assert [o.status for o in report.outcomes] == ["installed"]
        assert report.outcomes[0].path.startswith(host.lora_dir())
        assert downloads.read_team_manifest(host, link)[2]["inkstyle"][0] == "current"
        assert downloads.items(host) == []  # verified files leave the queue (they moved on from staging)
        main(["publish", str(trained[2]), "--manifest", str(share / "team.json")])
        state, want = downloads.read_team_manifest(host, link)[2]["inkstyle"]
        assert state == "outdated" and want.version == 2
        stored = share / "inkstyle" / "v2" / "inkstyle.safetensors"
        damaged = bytearray(stored.read_bytes())
        damaged[-1] ^= 0xFF  # one flipped bit in the store
        stored.write_bytes(bytes(damaged))
        report = downloads.pull_team(host, link)
        assert report.outcomes[0].status == "failed" and "SHA-256" in report.outcomes[0].message
        assert downloads.items(host) == []  # the card's Update button is the retry
    downloads.manager(host).shutdown(wait=False)


def test_exposed_app_refuses_manifests(tmp_path):
    host = StandaloneHost(root=str(tmp_path), listen="0.0.0.0")
    with pytest.raises(AccessDenied):
        downloads.read_team_manifest(host, "http://127.0.0.1:1/team.json")
    with pytest.raises(AccessDenied):
        downloads.pull_team(host, "/etc/team.json")


def test_engine_advice_points_at_the_screen():
    from lora_trainer.ui.downloader_tab import wording

    for engine_text in ("download failed after 8 retries per connection: x; run the same command again to resume",
                        "x is 9 bytes, above the size cap of 1; raise --max-size to allow it",
                        "refused a.ckpt: ...; prefer a .safetensors version, or allow pickles (--allow-pickle) if "
                        "you trust the source",
                        "this Civitai file needs an API token (HTTP 401): create one at civitai.com/user/account and "
                        "pass --token, set 'Civitai API token' in the settings, or set CIVITAI_TOKEN",
                        "not enough free space in /m: need 5 MiB more, have 1 MiB; free some space or choose another "
                        "folder with --to"):
        shown = wording(engine_text)
        assert "--" not in shown and "same command" not in shown, shown


def test_app_settings_reach_the_running_queue_and_the_next_start(tmp_path, monkeypatch):
    import json
    import stat

    from lora_trainer.hosts.standalone import SAVED_SETTINGS

    monkeypatch.delenv("LORA_TRAINER_CIVITAI_TOKEN", raising=False)
    host = StandaloneHost(root=str(tmp_path))
    kept = downloads.apply_settings(host, {"civitai_token": " tok ", "hf_token": "", "proxy": "socks5h://127.0.0.1:9"})
    mgr = downloads.manager(host)
    try:
        assert mgr.opts.civitai_token == "tok" and mgr.opts.hf_token is None
        assert mgr.opts.proxy == "socks5h://127.0.0.1:9" and host.setting("proxy") == "socks5h://127.0.0.1:9"
    finally:
        mgr.shutdown(wait=False)
    saved = tmp_path / SAVED_SETTINGS
    assert kept == str(saved) and stat.S_IMODE(saved.stat().st_mode) == 0o600  # tokens: the owner only
    assert json.loads(saved.read_text()) == {"civitai_token": "tok", "proxy": "socks5h://127.0.0.1:9"}
    again = StandaloneHost(root=str(tmp_path))  # the next start
    assert again.setting("civitai_token") == "tok" and again.setting("hf_token") is None
    monkeypatch.setenv("LORA_TRAINER_CIVITAI_TOKEN", "from-env")
    assert StandaloneHost(root=str(tmp_path)).setting("civitai_token") == "from-env"  # the environment wins

    public = StandaloneHost(root=str(tmp_path / "public"), listen="0.0.0.0")  # noqa: S104
    assert downloads.apply_settings(public, {"civitai_token": "remote"}) == ""  # a public app keeps nothing
    downloads.manager(public).shutdown(wait=False)
    assert not (tmp_path / "public" / SAVED_SETTINGS).exists()


def test_tab_manifest_offline_one_line(tmp_path):
    from shareserver import closed_port_url

    from lora_trainer.errors import UserError

    host = StandaloneHost(root=str(tmp_path))
    with pytest.raises(UserError) as err:
        downloads.read_team_manifest(host, f"{closed_port_url()}/team.json")
    assert str(err.value).startswith("cannot reach 127.0.0.1") and "\n" not in str(err.value)
    assert not (tmp_path / "models").exists()
