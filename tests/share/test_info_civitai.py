"""`info FILE`: facts and hashes; `--civitai` against a local server answering Civitai's documented JSON."""

from __future__ import annotations

import io
import json
import shutil

from PIL import Image
from shareserver import civitai_server, closed_port_url

from lora_trainer.cli import main
from lora_trainer.share.hashes import file_hashes


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(buf, format="PNG")
    return buf.getvalue()


def _db(sha256: str = "", autov3: str = "") -> dict:
    """Shapes as in Civitai's API reference (model-versions/by-hash and models/:id)."""
    version = {
        "id": 1144, "modelId": 1102, "name": "v1.0", "createdAt": "2026-10-01T00:00:00.000Z",
        "trainedWords": ["inkstyle", "ink lines"], "baseModel": "SD 1.5", "description": "<p>Ink &amp; wash</p>",
        "model": {"name": "Ink Style", "type": "LORA", "nsfw": False},
        "files": [{"name": "inkstyle.safetensors", "id": 7, "sizeKB": 40.5, "type": "Model", "primary": True,
                   "hashes": {"SHA256": sha256.upper(), "AutoV3": autov3}, "downloadUrl": "/api/download/models/1144"}],
        "images": [{"url": "/img/1.png", "nsfw": "None", "width": 8, "height": 8, "type": "image"}],
        "downloadUrl": "/api/download/models/1144"}
    by_hash = {h.lower(): version for h in (sha256, autov3) if h}
    model = {"id": 1102, "name": "Ink Style", "type": "LORA",
             "modelVersions": [{"id": 2001, "name": "v2.0"}, {"id": 1144, "name": "v1.0"}]}
    return {"by_hash": by_hash, "models": {"1102": model}, "images": {"/img/1.png": _png()}}


def _bare_copy(trained, tmp_path):
    """The trained LoRA alone (as if downloaded from somewhere without its sidecar)."""
    dst = tmp_path / "Lora" / "inkstyle.safetensors"
    dst.parent.mkdir()
    shutil.copyfile(trained[1] / "inkstyle.safetensors", dst)
    return dst


def test_info_prints_name_arch_hashes_triggers_settings(trained, capsys):
    path = trained[1] / "inkstyle.safetensors"
    assert main(["info", str(path), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    h = file_hashes(path)
    assert data["name"] == "inkstyle" and data["architecture"] == "stable-diffusion-v1/lora"
    assert data["sha256"] == h.sha256 and data["autov2"] == h.autov2 and data["autov3"] == h.autov3
    assert data["trigger_words"] == ["zqx"]
    assert data["training"]["rank"] == "4" and data["training"]["steps"] == "2"
    assert main(["info", str(path)]) == 0
    text = capsys.readouterr().out
    assert "AutoV3: " + h.autov3 in text and "trigger words: zqx" in text


def test_civitai_lookup_fills_sidecar_preview_and_reports_update(trained, tmp_path, capsys):
    lora = _bare_copy(trained, tmp_path)
    h = file_hashes(lora)
    with civitai_server(_db(sha256=h.sha256)) as srv:
        assert main(["info", str(lora), "--civitai", "--civitai-url", srv.url]) == 0
    out = capsys.readouterr().out
    assert "Ink Style / v1.0" in out and "a newer version exists on Civitai: v2.0 (id 2001)" in out
    side = json.loads(lora.with_suffix(".json").read_text())
    assert side["activation text"] == "inkstyle, ink lines" and side["sd version"] == "SD1"
    assert side["description"] == "Ink & wash"
    assert side["civitai"]["modelVersionId"] == 1144
    assert (lora.parent / "inkstyle.preview.png").is_file()


def test_civitai_by_autov3_and_user_text_kept(trained, tmp_path):
    lora = _bare_copy(trained, tmp_path)
    lora.with_suffix(".json").write_text(json.dumps({"activation text": "my words", "notes": "mine"}))
    with civitai_server(_db(autov3=file_hashes(lora).autov3)) as srv:
        assert main(["info", str(lora), "--civitai", "--civitai-url", srv.url]) == 0
        assert any("/by-hash/" + file_hashes(lora).autov3 in p for p in srv.hits)
    side = json.loads(lora.with_suffix(".json").read_text())
    assert side["activation text"] == "my words" and side["notes"] == "mine" and side["civitai"]["modelId"] == 1102


def test_not_on_civitai_and_offline_write_nothing(trained, tmp_path, capsys):
    lora = _bare_copy(trained, tmp_path)
    with civitai_server(_db()) as srv:
        assert main(["info", str(lora), "--civitai", "--civitai-url", srv.url]) == 0
    assert "not found on Civitai" in capsys.readouterr().out
    assert main(["info", str(lora), "--civitai", "--civitai-url", closed_port_url()]) == 5
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: cannot reach 127.0.0.1")
    assert sorted(p.name for p in lora.parent.iterdir()) == ["inkstyle.safetensors"]


def test_flux_settings_name_the_algorithm_and_drop_sd_only_ones():
    """A FLUX.1 LoHa: `network` says loha; clip skip / v-prediction (SD only) give way to the flow settings."""
    from lora_trainer.share.facts import training_settings

    meta = {"ss_base_model_version": "flux1", "ss_network_module": "lycoris.kohya", "ss_network_args": '{"algo": "loha"}',
            "ss_network_dim": "4", "ss_clip_skip": "1", "ss_v_parameterization": "False",
            "ss_timestep_sampling": "flux_shift", "ss_guidance_scale": "1.0", "ss_fp8_base": "True"}
    got = training_settings(meta)
    assert got["network"] == "lycoris.kohya (loha)" and got["rank"] == "4"
    assert got["timestep sampling"] == "flux_shift" and got["train guidance"] == "1.0" and got["fp8 base"] == "True"
    assert "clip skip" not in got and "v-prediction" not in got
    sd = training_settings({"ss_base_model_version": "sd_v1", "ss_network_module": "networks.lora", "ss_clip_skip": "2"})
    assert sd == {"network": "networks.lora", "clip skip": "2"}
