"""The local record of pulled LoRAs: which manifest, version, hash and link each file came from.

It lives beside the model folders (`<models>/.lora-trainer-pulls.json`), so a second pull knows what
is current without hashing every file again (size and modification time must still match).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

RECORD_NAME = ".lora-trainer-pulls.json"


@dataclass
class Kept:
    version: int
    path: str
    sha256: str


@dataclass
class Pulled:
    name: str
    version: int
    sha256: str
    path: str
    size: int
    mtime: float
    manifest: str
    source: str
    pulled: str
    kept: list[Kept] = field(default_factory=list)  # superseded versions still on disk

    def intact(self) -> bool:
        """The file is still the one we placed (same size and time; else re-hash before trusting it)."""
        p = Path(self.path)
        if not p.is_file():
            return False
        st = p.stat()
        if st.st_size == self.size and abs(st.st_mtime - self.mtime) < 1e-3:
            return True
        from lora_trainer.download.verify import sha256_file

        return st.st_size == self.size and sha256_file(p) == self.sha256


class Record:
    def __init__(self, root: Path):
        self.path = Path(root) / RECORD_NAME
        self.loras: dict[str, Pulled] = {}
        if self.path.is_file():
            try:
                data = json.loads(self.path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                data = {}
            try:
                for name, raw in (data.get("loras") or {}).items():
                    kept = [Kept(**k) for k in raw.pop("kept", [])]
                    self.loras[name] = Pulled(**raw, kept=kept)
            except (AttributeError, TypeError):  # edited by hand: start over (files in place are re-hashed)
                self.loras = {}

    def save(self) -> None:
        from lora_trainer.atomic import atomic_write_text

        data = {"version": 1, "loras": {n: asdict(p) for n, p in sorted(self.loras.items())}}
        atomic_write_text(self.path, json.dumps(data, indent=1, ensure_ascii=False) + "\n")
