"""publish -> pull round trips over a real HTTP server: versions, sidecars, no-op, tamper, pin, prune."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from shareserver import Served, closed_port_url

from lora_trainer.cli import main
from lora_trainer.share.lock import LOCK_NAME
from lora_trainer.share.manifest import load_manifest_file
from lora_trainer.share.pull import pull
from lora_trainer.share.record import RECORD_NAME


def _publish_two(trained: dict[int, Path], share: Path) -> Path:
    manifest = share / "team.json"
    assert main(["publish", str(trained[1]), "--manifest", str(manifest), "--title", "team"]) == 0
    assert main(["publish", str(trained[2]), "--manifest", str(manifest)]) == 0
    return manifest


def test_train_publish_two_versions_pull_latest_then_noop(trained, tmp_path, opts, capsys):
    share = tmp_path / "share"
    manifest_path = _publish_two(trained, share)
    m = load_manifest_file(manifest_path)
    entry = m.entry("inkstyle")
    assert [v.version for v in entry.versions] == [1, 2]  # the previous version is kept
    v2 = entry.latest
    assert v2.trigger_words == ["zqx"] and v2.architecture == "stable-diffusion-v1/lora"
    assert len(v2.autov2) == 10 and len(v2.autov3) == 12 and v2.preview is not None
    assert v2.urls == ["inkstyle/v2/inkstyle.safetensors"]
    assert entry.versions[0].sha256 != v2.sha256
    # publishing the same file again adds no version
    assert main(["publish", str(trained[2]), "--manifest", str(manifest_path)]) == 0
    assert "unchanged" in capsys.readouterr().out
    assert len(load_manifest_file(manifest_path).entry("inkstyle").versions) == 2

    models = tmp_path / "models"
    with Served(str(share)) as srv:
        url = f"{srv.url}/team.json"
        assert main(["pull", url, "--to", str(models), "-x", "2"]) == 0
        lora = models / "Lora" / "inkstyle.safetensors"
        from lora_trainer.download.verify import sha256_file

        assert sha256_file(lora) == v2.sha256
        side = json.loads((models / "Lora" / "inkstyle.json").read_text())
        assert side["activation text"] == "zqx" and side["sha256"] == v2.sha256 and side["version"] == 2
        assert side["sd version"] == "SD1"
        assert (models / "Lora" / "inkstyle.preview.png").is_file()
        assert sorted(p.name for p in models.iterdir()) == sorted(["Lora", RECORD_NAME, LOCK_NAME])  # no staging left
        capsys.readouterr()
        main(["info", str(lora)])
        assert f"team version: v2 from {url}" in capsys.readouterr().out
        fetched = srv.downloads()
        assert fetched == 1
        capsys.readouterr()
        # pull again: nothing downloaded
        assert main(["pull", url, "--to", str(models)]) == 0
        out = capsys.readouterr().out
        assert "v2 is current" in out and "nothing downloaded" in out
        assert srv.downloads() == fetched


def test_update_keeps_previous_then_prune_and_pin(trained, tmp_path, opts):
    share = tmp_path / "share"
    manifest = share / "team.json"
    main(["publish", str(trained[1]), "--manifest", str(manifest)])
    models = tmp_path / "models"
    lora_dir = models / "Lora"
    with Served(str(share)) as srv:
        url = f"{srv.url}/team.json"
        r = pull(url, models, opts)
        assert [o.status for o in r.outcomes] == ["installed"]
        main(["publish", str(trained[2]), "--manifest", str(manifest)])
        r = pull(url, models, opts)
        assert r.outcomes[0].status == "updated" and "was v1" in r.outcomes[0].message
        assert (lora_dir / "inkstyle.v1.safetensors").is_file() and (lora_dir / "inkstyle.v1.json").is_file()
        # pin back to v1: taken from the kept copy, no download
        before = srv.downloads()
        r = pull(url, models, opts, pins={"inkstyle": 1})
        assert r.outcomes[0].version == 1 and srv.downloads() == before
        side = json.loads((lora_dir / "inkstyle.json").read_text())
        assert side["version"] == 1
        r = pull(url, models, opts, prune=True)
        assert [o.status for o in r.outcomes] == ["updated", "pruned"]
        assert sorted(p.name for p in lora_dir.iterdir()) == ["inkstyle.json", "inkstyle.preview.png",
                                                               "inkstyle.safetensors"]


def test_tampered_file_fails_that_entry_and_keeps_the_old_one(trained, tmp_path, opts, capsys):
    share = tmp_path / "share"
    manifest = share / "team.json"
    main(["publish", str(trained[1]), "--manifest", str(manifest)])
    models = tmp_path / "models"
    with Served(str(share)) as srv:
        url = f"{srv.url}/team.json"
        assert main(["pull", url, "--to", str(models)]) == 0
        old = (models / "Lora" / "inkstyle.safetensors").read_bytes()
        main(["publish", str(trained[2]), "--manifest", str(manifest)])
        stored = share / "inkstyle" / "v2" / "inkstyle.safetensors"
        data = bytearray(stored.read_bytes())
        data[-1] ^= 0xFF  # one flipped bit in the store
        stored.write_bytes(bytes(data))
        capsys.readouterr()
        assert main(["pull", url, "--to", str(models)]) == 3
        err = capsys.readouterr().err
        assert "inkstyle: FAILED" in err and "SHA-256" in err
        assert (models / "Lora" / "inkstyle.safetensors").read_bytes() == old
        assert sorted(p.name for p in (models / "Lora").iterdir()) == ["inkstyle.json", "inkstyle.preview.png",
                                                                       "inkstyle.safetensors"]
        assert sorted(p.name for p in models.iterdir()) == sorted(["Lora", RECORD_NAME, LOCK_NAME])


def test_mirrors_in_order_and_folder_manifest(trained, tmp_path, opts):
    """A dead first link falls through to the mirror; a manifest on a shared drive pulls by copying."""
    share = tmp_path / "share"
    manifest = share / "team.json"
    dead = closed_port_url()
    with Served(str(share)) as srv:
        assert main(["publish", str(trained[1]), "--manifest", str(manifest), "--base-url", dead,
                     "--mirror", srv.url]) == 0
        m = load_manifest_file(manifest)
        urls = m.entry("inkstyle").latest.urls
        assert urls[0] == "inkstyle/v1/inkstyle.safetensors"
        assert urls[1].startswith(dead) and urls[2].startswith(srv.url)
        moved = tmp_path / "elsewhere" / "team.json"  # its relative link now points at nothing
        m.save(moved)
        r = pull(str(moved), tmp_path / "a", opts)
        assert r.outcomes[0].status == "installed" and srv.downloads() == 1
    r = pull(str(manifest), tmp_path / "b", opts)  # relative links next to a local manifest: copied
    assert r.outcomes[0].status == "installed"
    assert (tmp_path / "b" / "Lora" / "inkstyle.preview.png").is_file()


def test_offline_one_line_nothing_written(tmp_path, capsys):
    models = tmp_path / "models"
    assert main(["pull", f"{closed_port_url()}/team.json", "--to", str(models)]) == 5
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: cannot reach 127.0.0.1")
    assert not models.exists()


def test_bad_input_named(trained, tmp_path, capsys):
    manifest = tmp_path / "team.json"
    main(["publish", str(trained[1]), "--manifest", str(manifest)])
    capsys.readouterr()
    assert main(["pull", str(manifest), "--to", str(tmp_path / "m"), "--version", "inkstyle=9"]) == 2
    assert "'inkstyle' has no version 9 (versions: 1)" in capsys.readouterr().err
    assert main(["pull", str(manifest), "--version", "inkstyle"]) == 2
    assert "--version 'inkstyle': write it as name=N" in capsys.readouterr().err
    (tmp_path / "x.json").write_text("{}")
    assert main(["pull", str(tmp_path / "x.json")]) == 2
    assert "not a LoRA manifest" in capsys.readouterr().err
    assert main(["publish", str(tmp_path / "nope"), "--manifest", str(manifest)]) == 2
    assert "nope: no such file or folder" in capsys.readouterr().err


def test_foreign_file_with_same_name_is_not_overwritten(trained, tmp_path, opts):
    manifest = tmp_path / "share" / "team.json"
    main(["publish", str(trained[1]), "--manifest", str(manifest)])
    lora = tmp_path / "models" / "Lora"
    lora.mkdir(parents=True)
    shutil.copyfile(trained[2] / "inkstyle.safetensors", lora / "inkstyle.safetensors")
    r = pull(str(manifest), tmp_path / "models", opts)
    assert r.outcomes[0].status == "failed" and "did not come from this manifest" in r.outcomes[0].message
    shutil.copyfile(trained[1] / "inkstyle.safetensors", lora / "inkstyle.safetensors")  # the same bytes
    r = pull(str(manifest), tmp_path / "models", opts)
    assert r.outcomes[0].status == "current" and not r.downloaded
    assert pull(str(manifest), tmp_path / "models", opts).outcomes[0].message == "v1 is current"


def test_unicode_name_round_trip(trained, tmp_path, opts):
    """Chinese names are common; they are fine as file names and in links (percent-encoded)."""
    share = tmp_path / "share"
    manifest = share / "team.json"
    with Served(str(share)) as srv:
        assert main(["publish", str(trained[1] / "inkstyle.safetensors"), "--manifest", str(manifest),
                     "--name", "水墨 style", "--base-url", srv.url]) == 0
        m = load_manifest_file(manifest)
        m.entry("水墨 style").versions[0].urls = m.entry("水墨 style").versions[0].urls[1:]  # only the http link
        m.save(manifest)
        r = pull(f"{srv.url}/team.json", tmp_path / "models", opts)
        assert r.outcomes[0].status == "installed", r.outcomes[0].message
    assert (tmp_path / "models" / "Lora" / "水墨 style.safetensors").is_file()
    for bad in ("../x", ".hidden", "a/b"):
        assert main(["publish", str(trained[1] / "inkstyle.safetensors"), "--manifest", str(manifest),
                     "--name", bad]) == 2


def test_expired_links_say_so(trained, tmp_path, opts):
    manifest = tmp_path / "share" / "team.json"
    main(["publish", str(trained[1]), "--manifest", str(manifest)])
    m = load_manifest_file(manifest)
    v = m.entry("inkstyle").latest
    v.urls, v.expires = [closed_port_url() + "/inkstyle.safetensors"], "2026-01-01T00:00:00Z"
    m.save(manifest)
    r = pull(str(manifest), tmp_path / "models", opts)
    assert r.outcomes[0].status == "failed" and "links of v1 expired at 2026-01-01T00:00:00Z" in r.outcomes[0].message
    assert "publish again" in r.outcomes[0].message and "cannot reach" in r.outcomes[0].message.lower()
    assert "\n" not in r.outcomes[0].message


def test_damaged_manifests_and_records_are_named_not_crashes(tmp_path, trained, opts):
    from lora_trainer.share.manifest import ManifestError, parse_manifest

    for text, says in (('{"kind": "lora-trainer-manifest", "schema": "x"}', "damaged manifest"),
                       ('{"kind": "lora-trainer-manifest", "loras": [3]}', "loras[0] is not an entry"),
                       ('{"kind": "lora-trainer-manifest", "loras": [{"name": "a", "versions": [{"version": 1, '
                        '"file": "a.safetensors", "sha256": "' + "0" * 64 + '", "size": "big"}]}]}', "'size'"),
                       ('{"kind": "lora-trainer-manifest", "loras": [{"name": "../a", "versions": []}]}', "no folders")):
        with pytest.raises(ManifestError, match=re.escape(says)):
            parse_manifest(text, "t.json")
    manifest = tmp_path / "share" / "team.json"
    main(["publish", str(trained[1]), "--manifest", str(manifest)])
    models = tmp_path / "models"
    pull(str(manifest), models, opts)
    (models / RECORD_NAME).write_text('{"loras": {"inkstyle": {"name": 1}}}')
    r = pull(str(manifest), models, opts)  # the record is unusable: the file in place is re-hashed, kept
    assert r.outcomes[0].status == "current" and not r.downloaded


def test_files_offline_one_line_and_the_folder_unchanged(trained, tmp_path, opts):
    """Manifest readable, every link of the new version (and its mirror) unreachable: one line per LoRA,
    the version in place stays, no staging or partial file is left."""
    share, models = tmp_path / "share", tmp_path / "models"
    manifest = share / "team.json"
    main(["publish", str(trained[1]), "--manifest", str(manifest)])
    assert pull(str(manifest), models, opts).outcomes[0].status == "installed"
    before = sorted(str(p.relative_to(models)) for p in models.rglob("*"))
    main(["publish", str(trained[2]), "--manifest", str(manifest)])
    m = load_manifest_file(manifest)
    v2 = m.entry("inkstyle").latest
    v2.urls = [closed_port_url() + "/a/inkstyle.safetensors", closed_port_url() + "/b/inkstyle.safetensors"]
    m.save(manifest)
    out = pull(str(manifest), models, opts).outcomes[0]
    assert out.status == "failed" and out.exit_code == 5, out.message
    assert "\n" not in out.line() and "cannot reach" in out.line().lower(), out.line()
    assert sorted(str(p.relative_to(models)) for p in models.rglob("*")) == before


def test_a_folder_gives_its_final_files_not_saves_or_resumable_states(tmp_path):
    """An output folder holds `name-000004-state/` (lora/optimizer/rng .safetensors): none is a LoRA to share."""
    from lora_trainer.share.publish import collect

    for rel in ("ink.safetensors", "ink-000002.safetensors", "ink-000004-state/lora.safetensors",
                "ink-000004-state/optimizer.safetensors", "sub/other.safetensors"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    assert collect([str(tmp_path)]) == [tmp_path / "ink.safetensors", tmp_path / "sub" / "other.safetensors"]


def test_a_pulled_flux_lora_keeps_its_sd_version(tmp_path):
    """Forge reads "sd version" from the sidecar; a FLUX.1 version's "Flux" is written like SD1's "SD1"."""
    from lora_trainer.share.manifest import Version
    from lora_trainer.share.pull import _write_sidecars

    model = tmp_path / "Lora" / "fx.safetensors"
    model.parent.mkdir()
    model.write_bytes(b"")
    v = Version(version=2, file="fx.safetensors", sha256="ab" * 32, size=0, sd_version="Flux", trigger_words=["zqx"])
    _write_sidecars(model, v, "http://x/fx.safetensors", "http://x/team.json", None)
    side = json.loads(model.with_suffix(".json").read_text())
    assert side["sd version"] == "Flux" and side["activation text"] == "zqx" and side["version"] == 2
