"""`publish`: add LoRA files to a team manifest as new versions, and put the bytes where others fetch them.

Targets: no `--to` = a folder tree beside the manifest (`<name>/v<N>/<name>.safetensors`, serve or
sync that folder; links are relative or under `--base-url`); `s3://bucket/prefix` = uploads and
presigned links; `hf://user/repo` = one commit on the HuggingFace Hub, links pinned to it.
Every upload happens before the manifest is written, so a failed publish changes nothing.
"""

from __future__ import annotations

import datetime as dt
import mimetypes
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from lora_trainer.errors import UserError
from lora_trainer.share.facts import LoraFacts, read_facts
from lora_trainer.share.hashes import file_hashes
from lora_trainer.share.manifest import (
    Entry,
    Manifest,
    ManifestError,
    Preview,
    Version,
    check_name,
    load_manifest_file,
    now_iso,
)

DEFAULT_EXPIRES = 7 * 24 * 3600


@dataclass
class Published:
    name: str
    version: int
    new: bool
    sha256: str
    urls: list[str] = field(default_factory=list)
    uploaded: bool = False

    def line(self) -> str:
        what = "new version" if self.new else "unchanged, links refreshed" if self.uploaded else "unchanged"
        return f"{self.name} v{self.version} ({what}) sha256 {self.sha256}"


@dataclass
class _Item:
    facts: LoraFacts
    version: Version
    new: bool
    files: dict[str, Path]  # relative object path -> local file


_STATE_DIR = re.compile(r"-\d{6,}-state$")  # a resumable state `name-000500-state/` (LoRA + optimizer + RNG)


def collect(paths: list[str]) -> list[Path]:
    """The .safetensors files to publish; a folder gives its final files (not `name-000500` saves, nor the
    files inside a resumable state folder `name-000500-state/`, which are no LoRAs to share)."""
    from lora_trainer.share.facts import _SAVE_SUFFIX

    out: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*.safetensors") if not _SAVE_SUFFIX.search(f.stem)
                           and not any(_STATE_DIR.search(d) for d in f.relative_to(p).parts[:-1]))
            if not found:
                raise UserError(f"{p}: no .safetensors LoRA files in this folder")
            out.extend(found)
        elif p.is_file():
            out.append(p)
        else:
            raise UserError(f"{p}: no such file or folder")
    return out


def _plan(manifest: Manifest, files: list[Path], name: str | None) -> list[_Item]:
    if name and len(files) != 1:
        raise UserError("--name applies to a single file; rename the files or publish them one by one")
    items: list[_Item] = []
    for path in files:
        facts = read_facts(path)
        lora = check_name(name or facts.name, f"{path}: name")
        if any(i.facts.name == lora for i in items):
            raise UserError(f"{path}: another file in this publish is also named '{lora}'; pass one per run or "
                            "use --name")
        facts.name = lora
        hashes = file_hashes(path)
        entry = manifest.entry(lora)
        old = entry.find_sha(hashes.sha256) if entry else None
        number = old.version if old else (entry.latest.version + 1 if entry else 1)
        base = f"{lora}/v{number}"
        files_map = {f"{base}/{lora}.safetensors": path}
        preview = None
        if facts.preview is not None:
            rel = f"{base}/{lora}.preview{_preview_ext(facts.preview)}"
            files_map[rel] = facts.preview
            preview = Preview(Path(rel).name, file_hashes(facts.preview).sha256)
        version = old or Version(
            version=number, file=f"{lora}.safetensors", sha256=hashes.sha256, size=hashes.size,
            tensor_sha256=hashes.tensor_sha256, autov2=hashes.autov2, autov3=hashes.autov3,
            architecture=facts.architecture, base_model_version=facts.base_model_version,
            sd_version=facts.sd_version, trigger_words=facts.trigger_words,
            preferred_weight=facts.preferred_weight, description=facts.description,
            preview=preview, published=now_iso(), training=facts.training)
        if old and preview and old.preview is None:
            old.preview = preview
        items.append(_Item(facts, version, old is None, files_map))
    return items


def _preview_ext(p: Path) -> str:
    name = p.name.lower()
    return ".png" if name.endswith(".png") else ".jpeg" if name.endswith((".jpg", ".jpeg")) else p.suffix.lower()


def _links(item: _Item, rel: str, base_url: str | None, mirrors: list[str], primary: list[str]) -> list[str]:
    """Links are URLs: names with spaces or non-ASCII letters are percent-encoded."""
    urls = list(primary)
    path = quote(rel, safe="/")
    if base_url:
        urls.append(base_url.rstrip("/") + "/" + path)
    urls += [m.rstrip("/") + "/" + path for m in mirrors]
    return urls


def _set_links(item: _Item, primary: dict[str, list[str]], base_url: str | None, mirrors: list[str]) -> None:
    for rel in item.files:
        urls = _links(item, rel, base_url, mirrors, primary.get(rel, []))
        if rel.endswith(".safetensors"):
            item.version.urls = urls
        elif item.version.preview is not None:
            item.version.preview.urls = urls


def _store_local(manifest_path: Path, items: list[_Item]) -> dict[str, list[str]]:
    """Copy into the tree beside the manifest; links relative to the manifest."""
    from lora_trainer.atomic import atomic_copy
    from lora_trainer.download.verify import sha256_file

    root = manifest_path.parent
    for item in items:
        for rel, src in item.files.items():
            dst = root / rel
            if dst.resolve() == src.resolve():
                continue
            if dst.is_file() and dst.stat().st_size == src.stat().st_size and sha256_file(dst) == sha256_file(src):
                continue
            atomic_copy(src, dst)
    return {rel: [quote(rel, safe="/")] for item in items for rel in item.files}


def _store_s3(spec: str, items: list[_Item], expires_s: int, endpoint: str | None,
              region: str | None) -> tuple[dict[str, list[str]], str]:
    from lora_trainer.share import s3

    target = s3.S3Target.parse(spec, endpoint, region)
    if not 1 <= expires_s <= s3.MAX_EXPIRES:
        raise s3.StoreError(f"--expires: presigned links live 1 second to 7 days, not {expires_s} s")
    for item in items:  # all uploads first: a failure leaves the manifest as it was
        for rel, src in item.files.items():
            ctype = mimetypes.guess_type(src.name)[0] or "application/octet-stream"
            s3.put_object(target, target.key(rel), src.read_bytes(), ctype)
    when = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    links = {rel: [s3.presign_get(target, target.key(rel), expires_s, when)] for item in items for rel in item.files}
    return links, now_iso(when.timestamp() + expires_s)


def publish(paths: list[str], manifest_path: str | Path, *, base_url: str | None = None, to: str | None = None,
            mirrors: list[str] | None = None, name: str | None = None, expires_s: int = DEFAULT_EXPIRES,
            endpoint: str | None = None, region: str | None = None, title: str | None = None) -> list[Published]:
    """Add the files as new versions (unchanged files keep theirs), store them, then write the manifest."""
    manifest_path = Path(manifest_path)
    mirrors = list(mirrors or [])
    for url in ([base_url] if base_url else []) + mirrors:
        if not url.startswith(("http://", "https://")):
            raise UserError(f"'{url}': --base-url and --mirror take http(s):// links")
    if manifest_path.exists():
        manifest = load_manifest_file(manifest_path)
    elif manifest_path.suffix.lower() != ".json":
        raise ManifestError(f"--manifest {manifest_path}: give a .json file (created if missing)")
    else:
        manifest = Manifest()
    if title:
        manifest.title = title
    items = _plan(manifest, collect(paths), name)
    expires = None
    if to and to.startswith("s3://"):
        primary, expires = _store_s3(to, items, expires_s, endpoint, region)
    elif to and to.startswith("hf://"):
        from lora_trainer.share.hf import store_hf

        primary = store_hf(to, {rel: src for item in items for rel, src in item.files.items()})
    elif to:
        raise UserError(f"--to '{to}': give s3://bucket/prefix or hf://user/repo (or leave it out to publish into "
                        "the manifest's folder)")
    else:
        primary = _store_local(manifest_path, items)
    out = []
    for item in items:
        _set_links(item, primary, base_url, mirrors)
        item.version.expires = expires
        entry = manifest.entry(item.facts.name)
        if entry is None:
            entry = Entry(item.facts.name)
            manifest.loras.append(entry)
        if item.new:
            entry.versions.append(item.version)
        out.append(Published(item.facts.name, item.version.version, item.new, item.version.sha256,
                             list(item.version.urls), uploaded=bool(to)))
    manifest.save(manifest_path)
    return out
