"""Fingerprints of weight files, read without loading the model.

Why: the text-encoder disk cache is named by what the outputs depend on. Fingerprinting the loaded
weights (`base.weights_fingerprint`) means loading T5-XXL (9 GB) only to learn the cache's file names;
from the files, a fully cached run never loads it. A safetensors file is read through its header (every
tensor's name, dtype and shape) plus a few short byte windows of every tensor, so another or fine-tuned
model (its tensors differ throughout), or one changed tensor, changes the fingerprint; a few hundred
small reads, not gigabytes. Other files: size plus evenly spaced byte windows.
"""

from __future__ import annotations

import hashlib
import os

from lora_trainer.safetensors_header import read_header

WINDOWS = 4          # byte windows read per safetensors tensor (first, last, two between)
WINDOW = 64          # bytes per window
FILE_WINDOWS = 32    # windows of a file that is not safetensors
FILE_WINDOW = 4096
WEIGHT_EXTS = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")


def _positions(begin: int, end: int, count: int, width: int) -> list[int]:
    """`count` evenly spaced window starts in [begin, end) (fewer when the span is short)."""
    last = max(begin, end - width)
    if count <= 1 or last == begin:
        return [begin]
    return sorted({begin + (last - begin) * i // (count - 1) for i in range(count)})


def safetensors_fingerprint(path: str, prefix: str = "") -> str:
    """sha256 over the tensors under `prefix` (names without it, so the same weights inside an all-in-one
    file or alone give the same value): name, dtype, shape and WINDOWS x WINDOW bytes of each."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        header, start = read_header(fh, size=os.path.getsize(path))
        for name in sorted(k for k in header if k != "__metadata__" and k.startswith(prefix)):
            entry = header[name]
            digest.update(f"{name[len(prefix):]}\0{entry['dtype']}\0{entry['shape']}\0".encode())
            begin, end = entry["data_offsets"]
            for pos in _positions(begin, end, WINDOWS, WINDOW):
                fh.seek(start + pos)
                digest.update(fh.read(min(WINDOW, end - pos)))
    return digest.hexdigest()


def file_fingerprint(path: str) -> str:
    """A safetensors file as above; any other file by its size and FILE_WINDOWS evenly spaced windows."""
    if path.lower().endswith(".safetensors"):
        return safetensors_fingerprint(path)
    digest = hashlib.sha256()
    size = os.path.getsize(path)
    digest.update(str(size).encode())
    with open(path, "rb") as fh:
        for pos in _positions(0, size, FILE_WINDOWS, FILE_WINDOW):
            fh.seek(pos)
            digest.update(fh.read(FILE_WINDOW))
    return digest.hexdigest()


def folder_fingerprint(folder: str) -> str:
    """A transformers / diffusers component folder: its weight files (safetensors preferred, as the loaders
    prefer them) and its small JSON files (config, shard index) whole."""
    names = sorted(os.listdir(folder))
    weights = [n for n in names if n.endswith(".safetensors")] or [n for n in names if n.endswith(WEIGHT_EXTS)]
    digest = hashlib.sha256()
    for name in names:
        path = os.path.join(folder, name)
        if name in weights:
            digest.update(f"{name}\0{file_fingerprint(path)}\0".encode())
        elif name.endswith(".json") and os.path.getsize(path) < (1 << 20):
            with open(path, "rb") as fh:
                digest.update(f"{name}\0".encode() + hashlib.sha256(fh.read()).digest())
    return digest.hexdigest()
