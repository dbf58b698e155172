"""The hashes people use to name a LoRA file: SHA-256, Civitai AutoV2, and AutoV3 / `sshs_model_hash`.

Rules (A1111 `modules/hashes.py` and `extensions-builtin/Lora/network.py`, kohya `train_util.py`):
- SHA-256 of the whole file; Civitai's AutoV2 is its first 10 hex digits.
- the "addnet" hash: SHA-256 of the bytes after the 8-byte header length and the JSON header (the
  tensor data only, so editing metadata does not change it). A1111's "Lora hashes" and Civitai's
  AutoV3 are its first 12 hex digits; `modelspec.hash_sha256` is it with a `0x` prefix.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class FileHashes:
    sha256: str
    tensor_sha256: str  # addnet hash (sshs_model_hash); "" for files that are not .safetensors
    size: int

    @property
    def autov2(self) -> str:
        return self.sha256[:10].upper()

    @property
    def autov3(self) -> str:
        return self.tensor_sha256[:12].upper()

    def to_dict(self) -> dict[str, object]:
        return {**asdict(self), "autov2": self.autov2, "autov3": self.autov3}


def file_hashes(path: str | os.PathLike[str]) -> FileHashes:
    """Both hashes of a file on disk (the tensor hash only for .safetensors)."""
    from pathlib import Path

    from lora_trainer.download.verify import sha256_file

    p = Path(path)
    tensor = ""
    if p.suffix.lower() == ".safetensors":
        from lora_trainer.lora.file import lora_model_hash

        tensor = lora_model_hash(p)
    return FileHashes(sha256_file(p), tensor, p.stat().st_size)
