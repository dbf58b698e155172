"""publish --to hf://: huggingface_hub's real client uploads to a protocol stand-in on 127.0.0.1
(hubserver.py; the Hub itself is not reachable from the tests), pull downloads through the pinned
`resolve/<commit>` links; address parsing; one-line failures (unreachable, refused token), no manifest."""

from __future__ import annotations

import pytest
from shareserver import closed_port_url

from lora_trainer.cli import main
from lora_trainer.share.hf import parse_hf, resolve_url
from lora_trainer.share.s3 import StoreError

pytest.importorskip("huggingface_hub")


def test_addresses_and_pinned_links():
    assert parse_hf("hf://team/loras") == ("team/loras", "")
    assert parse_hf("hf://team/loras/shared/") == ("team/loras", "shared")
    with pytest.raises(StoreError, match="hf://user/repo"):
        parse_hf("hf://loras")
    assert resolve_url("https://huggingface.co", "team/loras", "abc123", "ink style/v1/a.safetensors") == \
        "https://huggingface.co/team/loras/resolve/abc123/ink%20style/v1/a.safetensors"


def test_unreachable_hub_one_line_and_no_manifest(trained, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_ENDPOINT", closed_port_url())
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    manifest = tmp_path / "team.json"
    assert main(["publish", str(trained[1]), "--manifest", str(manifest), "--to", "hf://team/loras"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: upload to hf://team/loras failed:")
    assert not manifest.exists()


TOKEN = "hf_standin_token"


@pytest.fixture
def hub(monkeypatch, request):
    """The Hub stand-in (tests/share/hubserver.py); parametrize with the suffixes it stores as LFS."""
    from hubserver import HubServer

    with HubServer(TOKEN, lfs_suffixes=getattr(request, "param", ())) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        monkeypatch.setenv("HF_TOKEN", TOKEN)
        monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        yield server


def _pinned(hub, oid: str, path: str) -> str:
    return f"{hub.url}/team/loras/resolve/{oid}/{path}"


def test_publish_to_the_hub_protocol_then_pull_pinned_links(trained, tmp_path, hub, opts, capsys):
    """huggingface_hub's own upload (hf_xet present: the streamed pipeline; files the server calls regular)."""
    from lora_trainer.download.verify import sha256_file
    from lora_trainer.share.manifest import load_manifest_file
    from lora_trainer.share.pull import pull

    manifest = tmp_path / "team.json"
    for n in (1, 2):
        assert main(["publish", str(trained[n]), "--manifest", str(manifest), "--to", "hf://team/loras"]) == 0
    assert [c[0] for c in hub.commits] == ["team/loras", "team/loras"]
    (_, _, c1), (_, _, c2) = hub.commits
    v1, v2 = load_manifest_file(manifest).entry("inkstyle").versions
    assert v1.urls == [_pinned(hub, c1, "inkstyle/v1/inkstyle.safetensors")]  # links pinned to their commit
    assert v2.urls == [_pinned(hub, c2, "inkstyle/v2/inkstyle.safetensors")]
    assert v2.preview is not None and v2.preview.urls == [_pinned(hub, c2, "inkstyle/v2/inkstyle.preview.png")]
    assert "POST /api/repos/create" in hub.calls and "POST /api/models/team/loras/preupload/main" in hub.calls

    models = tmp_path / "models"
    report = pull(str(manifest), models, opts)
    assert [(o.status, o.version) for o in report.outcomes] == [("installed", 2)], report.outcomes[0].message
    assert sha256_file(models / "Lora" / "inkstyle.safetensors") == v2.sha256
    preview = (models / "Lora" / "inkstyle.preview.png").read_bytes()
    assert preview == (trained[2] / "inkstyle.preview.png").read_bytes()
    report = pull(str(manifest), models, opts, pins={"inkstyle": 1})  # the older commit's link still serves v1
    assert [(o.status, o.version) for o in report.outcomes] == [("updated", 1)], report.outcomes[0].message
    assert sha256_file(models / "Lora" / "inkstyle.safetensors") == v1.sha256

    capsys.readouterr()  # the same file again: nothing to commit, links refreshed to the head commit
    assert main(["publish", str(trained[2]), "--manifest", str(manifest), "--to", "hf://team/loras"]) == 0
    assert "inkstyle v2 (unchanged, links refreshed)" in capsys.readouterr().out
    assert len(hub.commits) == 2
    assert [v.version for v in load_manifest_file(manifest).entry("inkstyle").versions] == [1, 2]


@pytest.mark.parametrize("hub", [(".safetensors", ".png")], indirect=True)
def test_publish_through_the_lfs_batch_protocol(trained, tmp_path, hub, opts, monkeypatch):
    """Files the server calls LFS: with Xet off, the client uses the git-LFS batch API (upload, verify)."""
    import huggingface_hub.constants

    from lora_trainer.share.manifest import load_manifest_file
    from lora_trainer.share.pull import pull

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_XET", True)
    manifest = tmp_path / "team.json"
    assert main(["publish", str(trained[1]), "--manifest", str(manifest), "--to", "hf://team/loras/shared"]) == 0
    v1 = load_manifest_file(manifest).entry("inkstyle").latest
    assert "POST /team/loras.git/info/lfs/objects/batch" in hub.calls
    assert f"PUT /lfs-upload/{v1.sha256}" in hub.calls and "POST /team/loras.git/info/lfs/objects/verify" in hub.calls
    assert hub.lfs[v1.sha256] == (trained[1] / "inkstyle.safetensors").read_bytes()
    assert v1.urls == [_pinned(hub, hub.commits[-1][2], "shared/inkstyle/v1/inkstyle.safetensors")]
    report = pull(str(manifest), tmp_path / "models", opts)  # resolve answers with a redirect to storage
    assert [o.status for o in report.outcomes] == ["installed"], report.outcomes[0].message
    assert any(c.startswith("GET /lfs-objects/") for c in hub.calls)


def test_refused_token_one_line_and_no_manifest(trained, tmp_path, hub, monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", "hf_wrong")
    manifest = tmp_path / "team.json"
    assert main(["publish", str(trained[1]), "--manifest", str(manifest), "--to", "hf://team/loras"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: upload to hf://team/loras failed: ") and "HF_TOKEN" in err[0]
    assert not manifest.exists() and hub.commits == []
