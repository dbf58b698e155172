"""publish --to hf://: what can be checked without the Hub (address parsing, pinned links, the one-line
failure when the Hub cannot be reached, and that a failed upload writes no manifest)."""

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
