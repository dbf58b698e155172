"""The resume record next to `<name>.part`: which remote file it is and which byte ranges are missing."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from lora_trainer.atomic import atomic_write_text


@dataclass
class Remote:
    """Identity of the remote file (what must match before bytes are reused) and how to fetch it."""

    url: str  # final URL after redirects (signed links expire: re-resolve from the original)
    size: int | None
    etag: str | None = None
    last_modified: str | None = None
    ranges: bool = False
    content_type: str = ""
    disposition: str | None = None
    linked_sha256: str | None = None

    def same_file(self, other: Remote, sha_known: bool = False, other_server: bool = False) -> bool:
        """Same size and same validators. Without any validator only a known SHA-256 makes reuse safe;
        a mirror (other_server) has its own ETags, so there the known SHA-256 alone decides."""
        if self.size is None or self.size != other.size:
            return False
        if other_server and sha_known:
            return True
        checked = False
        for a, b in ((self.etag, other.etag), (self.last_modified, other.last_modified)):
            if a and b:
                if _norm_etag(a) != _norm_etag(b):
                    return False
                checked = True
        return checked or sha_known


def _norm_etag(tag: str) -> str:
    return tag.strip().removeprefix("W/")


@dataclass
class PartState:
    source: str
    remote: Remote
    pending: list[list[int | None]] = field(default_factory=list)
    version: int = 1

    def save(self, path: Path) -> None:
        atomic_write_text(path, json.dumps(asdict(self)))

    @classmethod
    def load(cls, path: Path) -> PartState | None:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return cls(source=data["source"], remote=Remote(**data["remote"]),
                       pending=[list(p) for p in data["pending"]], version=data.get("version", 1))
        except (OSError, ValueError, KeyError, TypeError):
            return None


def state_path_for(part: Path) -> Path:
    return part.with_name(part.name + ".json")
