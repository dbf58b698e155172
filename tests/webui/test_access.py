"""One access rule for every path-valued config key on a host others can reach: only the host's own
folders (uploads, runs, model folders, builtin models); refusals name the right key and say nothing
about whether the server path exists."""

from __future__ import annotations

import os
import re

import pytest

from lora_trainer.config import config_fields
from lora_trainer.hosts.access import path_fields
from lora_trainer.hosts.base import AccessDenied
from lora_trainer.hosts.runs import prepare_config
from lora_trainer.hosts.standalone import StandaloneHost

# where an allowed value of each key lives on the host (folder key of _folders below)
ALLOWED_IN = {"base_model": "checkpoint", "tokenizer_path": "checkpoint", "vae_path": "vae",
              "network_weights": "lora", "resume_from_checkpoint": "runs", "train_data_dir": "uploads",
              "metadata_path": "uploads", "sample_prompts": "uploads", "output_dir": "work", "logging_dir": "work",
              "model_cache_dir": "work", "validation_data_dir": "uploads", "reg_data_dir": "uploads",
              "clip_l_path": "text_encoder", "t5xxl_path": "text_encoder"}
PATHLIKE = re.compile(r"(_dir|_path|_file|weights|checkpoint|base_model)$")


def _folders(host):
    return {"uploads": host.uploads_dir(), "work": host.work_dir(), "runs": os.path.join(host.work_dir(), "runs"),
            **host.model_dirs()}


@pytest.fixture
def public(tmp_path):
    host = StandaloneHost(str(tmp_path / "app"), listen="0.0.0.0")
    data = os.path.join(host.uploads_dir(), "set1")
    os.makedirs(os.path.join(data, "1_zqx"))
    from PIL import Image

    Image.new("RGB", (64, 64), "red").save(os.path.join(data, "1_zqx", "a.png"))
    return host, data


def test_every_path_key_is_covered():
    """A new path-valued key gets the rule by itself (schema `path=`); a path-like name without it fails here."""
    keys = path_fields()
    missing = [f.name for f in config_fields() if PATHLIKE.search(f.name) and f.name not in keys]
    assert not missing, f"config keys that look like paths but have no path= metadata: {missing}"
    assert set(keys) == set(ALLOWED_IN), "add the new key to ALLOWED_IN (and to hosts/access.FIELD_ROOTS if needed)"


@pytest.mark.parametrize("name", sorted(path_fields()))
def test_server_paths_refused_alike_for_every_key(public, tmp_path, name):
    host, data = public
    base = {"train_data_dir": data, "base_model": "builtin:tiny-sd1", "output_name": "x"}
    outside = tmp_path / "secret"
    outside.mkdir()
    existing = outside / ("prompts.txt" if name == "sample_prompts" else "model.safetensors")
    existing.write_text("secret")
    missing = outside / ("missing.txt" if name == "sample_prompts" else "missing.safetensors")
    messages = []
    for value in (str(existing), str(missing)):
        with pytest.raises(AccessDenied) as err:
            prepare_config(host, {**base, name: value})
        text = str(err.value)
        assert text.startswith(f"{name} '"), text  # names the right key
        messages.append(text.replace(value, "<path>"))
    assert messages[0] == messages[1]  # no hint whether the file exists
    with pytest.raises(AccessDenied):  # relative paths resolve inside the work dir; ../ does not escape
        prepare_config(host, {**base, name: "../../" + os.path.relpath(str(existing), "/")})


@pytest.mark.parametrize("name", sorted(path_fields()))
def test_the_hosts_own_folders_are_allowed(public, name):
    host, data = public
    folder = _folders(host)[ALLOWED_IN[name]]
    value = data if name == "train_data_dir" else os.path.join(folder, "thing.txt" if name == "sample_prompts"
                                                                 else "thing")
    try:
        prepare_config(host, {"train_data_dir": data, "base_model": "builtin:tiny-sd1", "output_name": "x",
                              name: value})
    except AccessDenied as exc:
        pytest.fail(f"{name} inside {folder} refused: {exc}")
    except Exception:  # noqa: BLE001 - e.g. "not found": the rule let it through, validation answered
        pass


def test_local_host_and_allow_remote_read_anything(tmp_path):
    data = tmp_path / "d" / "1_zqx"
    data.mkdir(parents=True)
    from PIL import Image

    Image.new("RGB", (64, 64), "red").save(data / "a.png")
    for host in (StandaloneHost(str(tmp_path / "a")), StandaloneHost(str(tmp_path / "b"), listen="0.0.0.0",
                                                                       allow_remote=True)):
        cfg = prepare_config(host, {"train_data_dir": str(tmp_path / "d"), "base_model": "builtin:tiny-sd1"})
        assert cfg.train_data_dir == str(tmp_path / "d")


def test_builtin_and_latest_and_inline_prompts_pass(public):
    host, data = public
    cfg = prepare_config(host, {"train_data_dir": data, "base_model": "builtin:tiny-sd1", "output_name": "x",
                                "sample_prompts": "a zqx / red square", "resume_from_checkpoint": None})
    assert cfg.base_model == "builtin:tiny-sd1"
    with pytest.raises(AccessDenied, match="base_model"):  # a HuggingFace id loads from the server's cache
        prepare_config(host, {"train_data_dir": data, "base_model": "someorg/somemodel"})


@pytest.mark.parametrize(("argv", "restricted"), [
    ([], False), (["--host", "0.0.0.0"], True), (["--host", "192.168.1.5"], True), (["--share"], True),
    (["--host", "0.0.0.0", "--allow-remote-paths"], False), (["--host", "localhost"], False)])
def test_app_decides_remote_from_its_flags(argv, restricted):
    import argparse

    from lora_trainer.commands import app

    parser = argparse.ArgumentParser()
    app.register(parser.add_subparsers())
    host = app.make_host(parser.parse_args(["app", *argv]))
    assert host.restricted is restricted
    if restricted:
        assert "--allow-remote-paths" in host.restriction_reason()


def test_the_webui_rule_follows_its_flag_and_its_own_model_folders(tmp_path):
    """Inside the WebUI (--listen without --enable-insecure-extension-access) the same rule applies, with
    the WebUI's folders (--ckpt-dir, --lora-dir, ...)."""
    from types import SimpleNamespace

    from lora_trainer.hosts.access import check_path
    from lora_trainer.hosts.webui import WebUIHost, WebUIServices

    ckpt = tmp_path / "my-checkpoints"
    opts = SimpleNamespace(disable_extension_access=True, ckpt_dir=str(ckpt), lora_dir=str(tmp_path / "loras"),
                           vae_dir=None, embeddings_dir=None, data_dir=str(tmp_path / "webui"))
    host = WebUIHost(WebUIServices(cmd_opts=opts), root=str(tmp_path / "webui"))
    assert host.restricted
    check_path(host, "base_model", str(ckpt / "v1-5.safetensors"))
    check_path(host, "network_weights", str(tmp_path / "loras" / "a.safetensors"))
    for name in ("base_model", "network_weights", "vae_path"):
        with pytest.raises(AccessDenied, match=rf"^{name} '.*enable-insecure-extension-access"):
            check_path(host, name, str(tmp_path / "elsewhere" / "x.safetensors"))
    opts.disable_extension_access = False
    check_path(host, "base_model", "/anything/at/all.safetensors")
