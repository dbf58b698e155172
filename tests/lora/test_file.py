"""LoRA .safetensors I/O: atomic write, metadata as strings, hashes, pickle refusal."""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from lora_trainer.errors import UserError
from lora_trainer.lora.file import (
    LoRAFileError,
    load_lora_file,
    lora_model_hash,
    read_lora_metadata,
    save_lora_file,
)


def _sd(rank=4, n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for i in range(n):
        name = f"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn{i}_to_q"
        sd[f"{name}.lora_down.weight"] = torch.randn(rank, 64, generator=g).half()
        sd[f"{name}.lora_up.weight"] = torch.randn(64, rank, generator=g).half()
        sd[f"{name}.alpha"] = torch.tensor(float(rank)).half()
    return sd


def independent_hash(path) -> str:
    """sha256 of the bytes after the 8-byte little-endian header length and the header."""
    raw = Path(path).read_bytes()
    n = int.from_bytes(raw[:8], "little")
    return hashlib.sha256(raw[8 + n:]).hexdigest()


def test_round_trip_metadata_and_hashes(tmp_path):
    path = tmp_path / "out" / "my_lora.safetensors"
    sd = _sd()
    meta = save_lora_file(path, sd, {"ss_output_name": "my_lora", "ss_network_dim": 4, "ss_tag_frequency":
                                     {"10_cat": {"cat": 3}}, "modelspec.title": "my_lora"})
    assert path.is_file() and os.listdir(path.parent) == ["my_lora.safetensors"]  # no temp file left
    sd2, meta2 = load_lora_file(path)
    assert meta2 == meta and all(isinstance(v, str) for v in meta2.values())
    assert meta2["ss_network_dim"] == "4" and json.loads(meta2["ss_tag_frequency"]) == {"10_cat": {"cat": 3}}
    assert set(sd2) == set(sd) and all(torch.equal(sd2[k], sd[k]) for k in sd)
    assert sd2[next(k for k in sd if k.endswith(".alpha"))].dim() == 0
    h = independent_hash(path)
    assert meta2["sshs_model_hash"] == h == lora_model_hash(path)
    assert len(meta2["sshs_legacy_hash"]) == 8
    assert read_lora_metadata(path) == meta2
    # the data hash does not depend on metadata: the same tensors under other metadata hash the same
    other = tmp_path / "other.safetensors"
    save_file(sd, str(other), {"x": "y" * 1000})
    assert lora_model_hash(other) == h
    # readable by the reference loader
    assert set(load_file(str(path))) == set(sd)


def test_legacy_hash_on_large_file(tmp_path):
    sd = _sd(rank=64, n=40)  # > 1 MiB so the legacy window has data
    meta = save_lora_file(tmp_path / "big.safetensors", sd, {"ss_output_name": "big", "modelspec.title": "x"})
    probe = tmp_path / "probe.safetensors"
    save_file(sd, str(probe), {"ss_output_name": "big"})  # kohya hashes with only the ss_* metadata
    raw = probe.read_bytes()
    assert meta["sshs_legacy_hash"] == hashlib.sha256(raw[0x100000:0x110000]).hexdigest()[:8]


def test_overwrite_is_atomic_and_old_hashes_replaced(tmp_path):
    path = tmp_path / "a.safetensors"
    save_lora_file(path, _sd(seed=1), {"sshs_model_hash": "stale"})
    m = save_lora_file(path, _sd(seed=2), {"sshs_model_hash": "stale"})
    assert m["sshs_model_hash"] == independent_hash(path) != "stale"


def test_refusals(tmp_path):
    with pytest.raises(ValueError, match="not a kohya LoRA key"):
        save_lora_file(tmp_path / "x.safetensors", {"model.diffusion_model.w": torch.zeros(2)}, {})
    with pytest.raises(LoRAFileError):
        save_lora_file(tmp_path / "x.pt", _sd(), {})
    pt = tmp_path / "evil.pt"
    torch.save({"a": torch.zeros(1)}, pt)
    with pytest.raises(UserError, match="pickle"):
        load_lora_file(pt)
    disguised = tmp_path / "disguised.safetensors"
    disguised.write_bytes(pt.read_bytes())
    with pytest.raises(LoRAFileError, match="pickle"):
        load_lora_file(disguised)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(struct.pack("<Q", 10**12) + b"{}")
    with pytest.raises(LoRAFileError, match="not a valid"):
        load_lora_file(garbage)
    html = tmp_path / "login.safetensors"
    html.write_bytes(b"<!doctype html><html>login</html>")
    with pytest.raises(LoRAFileError):
        read_lora_metadata(html)
    with pytest.raises(LoRAFileError, match="not found"):
        load_lora_file(tmp_path / "missing.safetensors")
