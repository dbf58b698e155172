"""Latent and text-encoder output caches: encode once, reuse every epoch (and, on disk, every run)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from lora_trainer.atomic import atomic_write_bytes

if TYPE_CHECKING:
    import torch


def file_sha256(path: str) -> str:
    """sha256 of a file's bytes: a cache key that survives renames and notices edits."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class LatentCache:
    """VAE latents by sample key (`TrainDataset.load_batch()["keys"]`: image sha256 + bucket + flip).

    `directory=None` keeps them in memory. With a directory each latent is one safetensors file
    named sha256(model_id + key), written atomically, so a later run with the same images, model
    and bucket reuses it and a run on another model never does. `model_id` must change when the
    VAE changes (e.g. the model hash or file name + size).
    """

    def __init__(self, directory: str | None, model_id: str):
        self.directory = directory
        self.model_id = model_id
        self._memory: dict[str, torch.Tensor] = {}
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        if directory:
            os.makedirs(directory, exist_ok=True)

    def path_for(self, key: str) -> str | None:
        if not self.directory:
            return None
        name = hashlib.sha256(f"{self.model_id}\0{key}".encode()).hexdigest()
        return os.path.join(self.directory, name + ".safetensors")

    def __contains__(self, key: str) -> bool:
        path = self.path_for(key)
        return os.path.isfile(path) if path else key in self._memory

    def get(self, key: str) -> torch.Tensor | None:
        """The cached latent [C, h, w] or None (a damaged file counts as a miss and is removed)."""
        path = self.path_for(key)
        if path is None:
            value = self._memory.get(key)
        elif os.path.isfile(path):
            value = self._read(path)
        else:
            value = None
        with self._lock:
            if value is None:
                self.misses += 1
            else:
                self.hits += 1
        return value

    def _read(self, path: str) -> torch.Tensor | None:
        from safetensors.torch import load_file

        try:
            return load_file(path)["latent"]
        except Exception:  # noqa: BLE001 - a truncated or foreign file: recompute it
            with contextlib.suppress(OSError):
                os.remove(path)
            return None

    def put(self, key: str, latent: torch.Tensor) -> None:
        """Store one latent (no batch dimension); a disk write is atomic (a reader never sees half a file)."""
        latent = latent.detach().to("cpu").contiguous()
        path = self.path_for(key)
        if path is None:
            self._memory[key] = latent
            return
        from safetensors.torch import save

        atomic_write_bytes(path, save({"latent": latent}, metadata={"model_id": self.model_id[:200], "key": key[:200]}))

    def get_batch(self, keys: list[str]) -> torch.Tensor | None:
        """Stacked [B, C, h, w] latents when every key is cached, else None."""
        import torch

        values = []
        for key in keys:
            value = self.get(key)
            if value is None:
                return None
            values.append(value)
        return torch.stack(values)

    def put_batch(self, keys: list[str], latents: torch.Tensor) -> None:
        for key, latent in zip(keys, latents, strict=True):
            self.put(key, latent)

    def __len__(self) -> int:
        if self.directory:
            return sum(1 for n in os.listdir(self.directory) if n.endswith(".safetensors"))
        return len(self._memory)


class TextEncoderCache:
    """Text-encoder outputs by caption. Valid only while the text encoder is frozen and captions do not
    change per epoch (the config refuses the other combinations).

    With a `directory` every caption's outputs are also one safetensors file named
    sha256(model_id + caption), written atomically: a later run with the same caption and text encoders
    (`model_id`: `ModelAdapter.text_cache_id()` plus the run settings that change the outputs) reads it
    instead of encoding, and anything else gets another name. Tensors read from disk go to `device`.
    """

    def __init__(self, directory: str | None = None, model_id: str = "", device: torch.device | str | None = None):
        self.directory = directory
        self.model_id = model_id
        self.device = device
        self._store: dict[str, dict[str, torch.Tensor]] = {}
        self.encoded = 0    # captions encoded by this cache (the rest came from memory or disk)
        self.disk_hits = 0
        if directory:
            os.makedirs(directory, exist_ok=True)

    def __len__(self) -> int:
        return len(self._store)

    def path_for(self, caption: str) -> str | None:
        if not self.directory:
            return None
        name = hashlib.sha256(f"{self.model_id}\0{caption}".encode()).hexdigest()
        return os.path.join(self.directory, name + ".safetensors")

    def _read(self, caption: str) -> dict[str, torch.Tensor] | None:
        path = self.path_for(caption)
        if path is None or not os.path.isfile(path):
            return None
        from safetensors.torch import load_file

        try:
            out = load_file(path)
        except Exception:  # noqa: BLE001 - a truncated or foreign file: encode again
            with contextlib.suppress(OSError):
                os.remove(path)
            return None
        self.disk_hits += 1
        return out if self.device is None else {k: v.to(self.device) for k, v in out.items()}

    def _write(self, caption: str, outputs: dict[str, torch.Tensor]) -> None:
        path = self.path_for(caption)
        if path is None:
            return
        from safetensors.torch import save

        tensors = {k: v.detach().to("cpu").contiguous() for k, v in outputs.items()}
        atomic_write_bytes(path, save(tensors, metadata={"model_id": self.model_id[:200], "caption": caption[:200]}))

    def get_or_encode(self, captions: list[str],
                      encode: Callable[[list[str]], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Outputs for `captions` in order, calling `encode` once for the captions found neither in memory
        nor on disk. `encode` returns {name: tensor with batch first} (ModelAdapter.encode_text)."""
        import torch

        missing = list(dict.fromkeys(c for c in captions if c not in self._store))
        todo = []
        for caption in missing:
            found = self._read(caption)
            if found is None:
                todo.append(caption)
            else:
                self._store[caption] = found
        if todo:
            with torch.no_grad():
                out = encode(todo)
            self.encoded += len(todo)
            for i, caption in enumerate(todo):
                self._store[caption] = {k: v[i].detach() for k, v in out.items()}
                self._write(caption, self._store[caption])
        names = self._store[captions[0]].keys()
        return {k: torch.stack([self._store[c][k] for c in captions]) for k in names}
