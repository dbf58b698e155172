"""The team manifest: one JSON file listing every shared LoRA with all its versions.

Why this shape: a version is never rewritten, only added (numbers are monotonic, the previous ones
stay listed), so "v2" means the same bytes for everyone and `pull --version name=1` still works;
each version carries its own hashes, so a pull can verify what arrives from any mirror.

    {"kind": "lora-trainer-manifest", "schema": 1, "updated": "...",
     "loras": [{"name": "inkstyle", "versions": [{"version": 1, "file": "inkstyle.safetensors",
        "sha256": "...", "tensor_sha256": "...", "autov2": "...", "autov3": "...", "size": 123,
        "architecture": "stable-diffusion-v1/lora", "base_model_version": "sd_v1", "sd_version": "SD1",
        "trigger_words": ["inkstyle"], "preferred_weight": 0.8, "description": "",
        "urls": ["inkstyle/v1/inkstyle.safetensors", "https://mirror/..."], "expires": null,
        "preview": {"file": "inkstyle.preview.png", "sha256": "...", "urls": [...]},
        "published": "2026-12-05T18:00:00Z", "training": {...}}]}]}

URLs may be relative: they resolve against where the manifest was read from (a folder or a link).
"""

from __future__ import annotations

import calendar
import json
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lora_trainer.errors import UserError

KIND = "lora-trainer-manifest"
SCHEMA = 1
NAME_RE = re.compile(r"^[^\W_][\w ._()\-]{0,99}$")  # any script's letters and digits (e.g. Chinese names)
SHA_RE = re.compile(r"^[0-9a-f]{64}$")


class ManifestError(UserError):
    """The manifest is missing, not JSON, or has a bad entry (the message names the entry and field)."""


def now_iso(t: float | None = None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() if t is None else t))


def check_name(name: str, where: str = "name") -> str:
    """A LoRA name becomes a file name on every puller's disk: no folders, no dots in front."""
    if not NAME_RE.match(name or "") or ".." in name:
        raise ManifestError(f"{where} '{name}': use letters, digits, space, . _ - ( ) (no folders, not starting "
                            "with a dot); "
                            "rename the file or pass --name")
    return name


@dataclass
class Preview:
    file: str
    sha256: str
    urls: list[str] = field(default_factory=list)


@dataclass
class Version:
    version: int
    file: str
    sha256: str
    size: int
    tensor_sha256: str = ""
    autov2: str = ""
    autov3: str = ""
    architecture: str = ""
    base_model_version: str = ""
    sd_version: str = ""
    trigger_words: list[str] = field(default_factory=list)
    preferred_weight: float | None = None
    description: str = ""
    urls: list[str] = field(default_factory=list)
    expires: str | None = None  # ISO time the (presigned) links stop working
    preview: Preview | None = None
    published: str = ""
    training: dict[str, str] = field(default_factory=dict)

    def expired(self, at: float | None = None) -> bool:
        if not self.expires:
            return False
        t = calendar.timegm(time.strptime(self.expires, "%Y-%m-%dT%H:%M:%SZ"))
        return (time.time() if at is None else at) >= t


@dataclass
class Entry:
    name: str
    versions: list[Version] = field(default_factory=list)

    @property
    def latest(self) -> Version:
        return max(self.versions, key=lambda v: v.version)

    def get(self, number: int) -> Version:
        for v in self.versions:
            if v.version == number:
                return v
        have = ", ".join(str(v.version) for v in sorted(self.versions, key=lambda v: v.version))
        raise ManifestError(f"'{self.name}' has no version {number} (versions: {have})")

    def find_sha(self, sha256: str) -> Version | None:
        return next((v for v in self.versions if v.sha256 == sha256), None)


@dataclass
class Manifest:
    loras: list[Entry] = field(default_factory=list)
    title: str = ""
    updated: str = ""

    def entry(self, name: str) -> Entry | None:
        return next((e for e in self.loras if e.name == name), None)

    def to_json(self) -> str:
        data = {"kind": KIND, "schema": SCHEMA, "title": self.title, "updated": self.updated,
                "loras": [asdict(e) for e in sorted(self.loras, key=lambda e: e.name.lower())]}
        return json.dumps(data, indent=2, ensure_ascii=False) + "\n"

    def save(self, path: str | Path) -> None:
        from lora_trainer.atomic import atomic_write_text

        self.updated = now_iso()
        atomic_write_text(path, self.to_json())


def _version(raw: dict[str, Any], where: str) -> Version:
    known = set(Version.__dataclass_fields__)
    data = {k: v for k, v in raw.items() if k in known}
    for key in ("version", "file", "sha256", "size"):
        if key not in data:
            raise ManifestError(f"{where}: '{key}' is missing")
    if not isinstance(data["version"], int) or data["version"] < 1:
        raise ManifestError(f"{where}: 'version' must be a whole number from 1")
    if not isinstance(data["size"], int) or data["size"] < 0:
        raise ManifestError(f"{where}: 'size' must be a number of bytes")
    if not SHA_RE.match(str(data["sha256"]).lower()):
        raise ManifestError(f"{where}: 'sha256' is not 64 hex digits")
    data["sha256"] = str(data["sha256"]).lower()
    check_name(Path(str(data["file"])).stem, f"{where}: file")
    if Path(str(data["file"])).name != data["file"] or not str(data["file"]).endswith(".safetensors"):
        raise ManifestError(f"{where}: 'file' must be a plain .safetensors file name")
    if not isinstance(data.get("urls", []), list) or not all(isinstance(u, str) for u in data.get("urls", [])):
        raise ManifestError(f"{where}: 'urls' must be a list of links")
    prev = raw.get("preview")
    data["preview"] = None
    if isinstance(prev, dict) and prev.get("file") and SHA_RE.match(str(prev.get("sha256", ""))):
        if Path(str(prev["file"])).name != prev["file"]:
            raise ManifestError(f"{where}: preview 'file' must be a plain file name")
        data["preview"] = Preview(str(prev["file"]), str(prev["sha256"]), [str(u) for u in prev.get("urls", [])])
    return Version(**data)


def parse_manifest(text: str, source: str) -> Manifest:
    """Manifest from JSON text; `source` (file or link) only names it in errors."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ManifestError(f"{source}: not a manifest (not JSON: {exc})") from exc
    if not isinstance(data, dict) or data.get("kind") != KIND:
        raise ManifestError(f"{source}: not a LoRA manifest (no \"kind\": \"{KIND}\"); "
                            "write one with `lora-trainer publish`")
    if not isinstance(data.get("schema", 0), int) or not isinstance(data.get("loras", []), list):
        raise ManifestError(f"{source}: damaged manifest ('schema' must be a number, 'loras' a list)")
    if data.get("schema", 0) > SCHEMA:
        raise ManifestError(f"{source}: manifest schema {data.get('schema')} is newer than this program "
                            f"understands ({SCHEMA}); update lora-trainer")
    out = Manifest(title=str(data.get("title") or ""), updated=str(data.get("updated") or ""))
    for i, raw in enumerate(data.get("loras") or []):
        if not isinstance(raw, dict) or not isinstance(raw.get("versions", []), list) or \
                not all(isinstance(v, dict) for v in raw.get("versions", [])):
            raise ManifestError(f"{source}: loras[{i}] is not an entry with a list of versions")
        name = check_name(str(raw.get("name", "")), f"{source}: loras[{i}].name")
        versions = [_version(v, f"{source}: {name} version #{j + 1}") for j, v in enumerate(raw.get("versions") or [])]
        if not versions:
            raise ManifestError(f"{source}: '{name}' lists no versions")
        if len({v.version for v in versions}) != len(versions):
            raise ManifestError(f"{source}: '{name}' lists the same version number twice")
        out.loras.append(Entry(name, versions))
    return out


def load_manifest_file(path: str | Path) -> Manifest:
    p = Path(path)
    try:
        return parse_manifest(p.read_text(encoding="utf-8"), str(p))
    except FileNotFoundError as exc:
        raise ManifestError(f"{p}: manifest not found") from exc
    except OSError as exc:
        raise ManifestError(f"{p}: cannot read the manifest ({exc})") from exc
