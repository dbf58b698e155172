"""Reading and writing kohya LoRA `.safetensors` files, with the hashes A1111 and Civitai show.

Why the care: the WebUI may read the file while we write it (atomic replace), a pickle must never
be unpickled (`.pt`/`.ckpt` refused), and `sshs_model_hash` lets A1111 ("Lora hashes" in the
infotext) and Civitai (AutoV3) identify the file without hashing it again.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path
from typing import IO, Any

import torch
from safetensors import safe_open
from safetensors.torch import save as st_save

from lora_trainer.atomic import atomic_write_bytes
from lora_trainer.errors import UserError
from lora_trainer.lora.kinds import ALL_SUFFIXES
from lora_trainer.safetensors_header import HeaderError, read_header

# LoRA/LoCon, LoHa (hada_*), LoKr (lokr_*), DoRA (dora_scale): the LyCORIS key layout hosts read
LORA_KEY_SUFFIXES = ALL_SUFFIXES
PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".pkl")
_CHUNK = 1 << 20


class LoRAFileError(UserError):
    """A LoRA file is missing, not safetensors, or damaged."""


def _header_len(head: bytes, where: str) -> int:
    if len(head) < 8:
        raise LoRAFileError(f"{where}: too short to be a .safetensors file")
    (n,) = struct.unpack("<Q", head[:8])
    return int(n)


def _hash_data(f: IO[bytes], where: str) -> str:
    """sha256 of everything after the 8-byte length and the JSON header (kohya's addnet hash)."""
    f.seek(0)
    n = _header_len(f.read(8), where)
    f.seek(8 + n)
    h = hashlib.sha256()
    for chunk in iter(lambda: f.read(_CHUNK), b""):
        h.update(chunk)
    return h.hexdigest()


def _legacy_hash(blob: bytes) -> str:
    """sd-webui-additional-networks' legacy hash: 64 KiB at offset 1 MiB, first 8 hex digits."""
    return hashlib.sha256(blob[0x100000:0x110000]).hexdigest()[:8]


def lora_model_hash(path: str | os.PathLike[str]) -> str:
    """`sshs_model_hash` of a file on disk (A1111 "Lora hashes", Civitai AutoV3 is its first 12 hex)."""
    with open(path, "rb") as f:
        return _hash_data(f, str(path))


def _as_str(key: str, value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, ensure_ascii=False)
    if value is None:
        return ""
    if isinstance(value, (bool, int, float)):
        return str(value)
    raise TypeError(f"metadata {key!r}: cannot store a {type(value).__name__} as a string")


def _prepare(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for k, t in state_dict.items():
        if not k.endswith(LORA_KEY_SUFFIXES):
            # one stray key makes diffusers' kohya loader refuse the whole file
            raise ValueError(f"not a kohya LoRA key (LoRA/LoHa/LoKr/DoRA): {k!r}")
        out[k] = t.detach().to("cpu").contiguous()
    return out


def save_lora_file(path: str | os.PathLike[str], state_dict: dict[str, torch.Tensor],
                   metadata: dict[str, Any] | None = None) -> dict[str, str]:
    """Write a kohya LoRA atomically; returns the metadata as written (with the hashes).

    Metadata values are stored as strings (dicts/lists as JSON). The hashes are computed on the
    tensor data section, which does not depend on the metadata, so they match the final file.
    """
    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise LoRAFileError(f"{path}: LoRA files are written as .safetensors")
    tensors = _prepare(state_dict)
    meta = {str(k): _as_str(str(k), v) for k, v in (metadata or {}).items()}
    meta.pop("sshs_model_hash", None)
    meta.pop("sshs_legacy_hash", None)
    meta.pop("modelspec.hash_sha256", None)
    # like kohya: hash a serialisation with only the training (ss_*) metadata
    probe = st_save(tensors, {k: v for k, v in meta.items() if k.startswith("ss_")})
    n = _header_len(probe, str(path))
    meta["sshs_model_hash"] = hashlib.sha256(memoryview(probe)[8 + n:]).hexdigest()
    meta["sshs_legacy_hash"] = _legacy_hash(probe)
    # the SAI model spec's form of the same tensor-data hash (its reference code: "0x" + hex)
    meta["modelspec.hash_sha256"] = "0x" + meta["sshs_model_hash"]
    del probe
    atomic_write_bytes(path, st_save(tensors, meta))
    return meta


def _refuse_pickle(path: Path) -> None:
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise LoRAFileError(f"{path}: {path.suffix} files are Python pickles and are never loaded (they can run "
                            "code); convert it to .safetensors first")
    with open(path, "rb") as f:
        head = f.read(9)
    n = _header_len(head, str(path))
    if len(head) >= 9 and head[8:9] == b"{" and n <= path.stat().st_size:
        return  # a safetensors header (its length may well start with byte 0x80 or "PK")
    if head[:2] == b"PK" or head[:1] == b"\x80":
        raise LoRAFileError(f"{path}: this is a pickle/zip checkpoint, not .safetensors; it is never loaded")
    raise LoRAFileError(f"{path}: not a valid .safetensors file (bad header); re-download or re-save it")


def read_lora_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """Only the `__metadata__` of a .safetensors file (reads the header, not the tensors)."""
    path = Path(path)
    if not path.is_file():
        raise LoRAFileError(f"{path}: file not found")
    _refuse_pickle(path)
    with open(path, "rb") as f:
        try:
            header, _ = read_header(f)
        except HeaderError as e:
            raise LoRAFileError(f"{path}: damaged .safetensors header ({e})") from e
    return dict(header.get("__metadata__") or {})


def load_lora_file(path: str | os.PathLike[str],
                   device: str | torch.device = "cpu") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(state_dict, metadata) of a .safetensors LoRA; pickles get a clear refusal."""
    path = Path(path)
    if not path.is_file():
        raise LoRAFileError(f"{path}: file not found")
    _refuse_pickle(path)
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            meta = dict(f.metadata() or {})
            sd = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open is no dict
    except Exception as e:  # safetensors raises its own error types for damaged files
        raise LoRAFileError(f"{path}: cannot read .safetensors ({e}); re-download or re-save it") from e
    return sd, meta
