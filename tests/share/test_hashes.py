"""AutoV2 / AutoV3 / modelspec.hash_sha256 by the rules A1111, kohya and Civitai use, run on files we
did not write (kohya sd-scripts' own hashing code + safetensors' writer) and on ours."""

from __future__ import annotations

import ast
import hashlib
import io
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from lora_trainer.share.hashes import file_hashes

MIRRORS = Path("/work/.mirror")


def _functions(repo: str, path: str, names: tuple[str, ...]) -> dict:
    """Named top-level functions from a reference repository's file, executed as they are written there."""
    git_dir = MIRRORS / repo / "repo"
    if not git_dir.is_dir():
        pytest.skip(f"reference source {repo} is not available here")
    source = subprocess.run(["git", f"--git-dir={git_dir}", "show", f"HEAD:{path}"], capture_output=True,
                            text=True, check=True).stdout
    tree = ast.parse(source)
    module = ast.Module([n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in names], [])
    import safetensors.torch

    namespace = {"hashlib": hashlib, "BytesIO": io.BytesIO, "safetensors": safetensors}
    exec(compile(module, path, "exec"), namespace)  # noqa: S102 - reference code, read-only mirror
    return namespace


def _tiny_state_dict() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    name = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    return {f"{name}.lora_down.weight": torch.randn(4, 32, generator=g),
            f"{name}.lora_up.weight": torch.randn(32, 4, generator=g), f"{name}.alpha": torch.tensor(4.0)}


def test_autov3_of_a_file_written_by_kohya_code(tmp_path):
    kohya = _functions("kohya-ss+sd-scripts", "library/train_util.py",
                       ("precalculate_safetensors_hashes", "addnet_hash_safetensors", "addnet_hash_legacy"))
    a1111 = _functions("Hemang2208+Stable_Diffusion_WebUI", "modules/hashes.py", ("addnet_hash_safetensors",))
    sd = _tiny_state_dict()
    metadata = {"ss_network_dim": "4", "ss_output_name": "kohya", "modelspec.title": "a user title"}
    model_hash, legacy = kohya["precalculate_safetensors_hashes"](sd, metadata)
    metadata.update(sshs_model_hash=model_hash, sshs_legacy_hash=legacy)
    path = tmp_path / "kohya.safetensors"
    save_file(sd, str(path), metadata)  # as kohya's networks/lora.py save_weights does

    ours = file_hashes(path)
    with open(path, "rb") as f:
        by_a1111 = a1111["addnet_hash_safetensors"](f)
    assert ours.tensor_sha256 == model_hash == by_a1111
    assert ours.autov3 == by_a1111[:12].upper()  # A1111's shorthash = hash[0:12]; Civitai shows it upper-case
    assert ours.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert ours.autov2 == ours.sha256[:10].upper()


def test_our_files_carry_the_same_hashes(tmp_path):
    from lora_trainer.lora.file import read_lora_metadata, save_lora_file

    a1111 = _functions("Hemang2208+Stable_Diffusion_WebUI", "modules/hashes.py", ("addnet_hash_safetensors",))
    path = tmp_path / "ours.safetensors"
    save_lora_file(path, _tiny_state_dict(), {"ss_output_name": "ours", "modelspec.title": "ours"})
    meta = read_lora_metadata(path)
    with open(path, "rb") as f:
        rule = a1111["addnet_hash_safetensors"](f)
    assert meta["sshs_model_hash"] == rule == file_hashes(path).tensor_sha256
    assert meta["modelspec.hash_sha256"] == "0x" + rule


def test_header_length_starting_with_0x80_is_not_taken_for_a_pickle(tmp_path, capsys):
    """1 file in 32 has a header length whose low byte is 0x80 (a pickle's first byte): still a LoRA."""
    from lora_trainer.cli import main

    path = tmp_path / "odd.safetensors"
    for k in range(300):
        save_file(_tiny_state_dict(), str(path), {"ss_output_name": "odd", "pad": "x" * k})
        if path.read_bytes()[0] == 0x80:
            break
    assert path.read_bytes()[0] == 0x80
    assert main(["info", str(path), "--json"]) == 0
    assert '"name": "odd"' in capsys.readouterr().out
    pickle = tmp_path / "real.safetensors"
    pickle.write_bytes(b"\x80\x04\x95" + b"\x00" * 64)
    assert main(["info", str(pickle)]) == 2
    assert "pickle/zip checkpoint" in capsys.readouterr().err
