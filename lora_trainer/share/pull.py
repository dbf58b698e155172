"""`pull`: bring a models folder up to date with a team manifest, like `git pull` for LoRAs.

Internal logic, per LoRA in the manifest:
1. the wanted version is the latest, or the one pinned with `--version name=N`;
2. the local record says what we placed before: same hash and the file untouched -> nothing to do;
3. otherwise the file is fetched into a staging folder beside the model folders (never inside one),
   verified against the manifest's SHA-256 (mirrors in order: the engine's download), its sidecar
   `<name>.json` and preview are prepared there too;
4. only then the previous version steps aside (`<name>.v<N>.safetensors`, kept until `--prune`) and
   the new files are renamed into place. A failure at 3 leaves the folder exactly as it was.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urljoin, urlsplit

from lora_trainer.download.options import DownloadOptions
from lora_trainer.errors import UserError
from lora_trainer.events import Event, EventSink, StopFlag, null_sink
from lora_trainer.share.manifest import (
    Entry,
    Manifest,
    ManifestError,
    Version,
    load_manifest_file,
    now_iso,
    parse_manifest,
)
from lora_trainer.share.record import Kept, Pulled, Record

SIDE_EXTS = (".json", ".preview.png")
_ARCH = {"SD1": "sd1", "SD2": "sd2", "SDXL": "sdxl"}


@dataclass
class Fetched:
    path: Path
    kind: str
    url: str


# fetch(urls, file name, sha256, staging folder) -> the verified file inside the staging folder
Fetch = Callable[[list[str], str, str, Path], Fetched]


@dataclass
class Outcome:
    name: str
    status: str  # current | installed | updated | failed | pruned
    version: int | None = None
    message: str = ""
    exit_code: int = 0
    downloaded: bool = False
    path: str = ""  # where the wanted version now lies

    def line(self) -> str:
        return f"{self.name}: {self.message}"


@dataclass
class PullReport:
    outcomes: list[Outcome] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return next((o.exit_code for o in self.outcomes if o.exit_code), 0)

    @property
    def downloaded(self) -> int:
        return sum(o.downloaded for o in self.outcomes)


@dataclass
class Source:
    """Where the manifest came from: its links resolve against this (a folder or a link)."""

    text: str
    base: str  # a URL, or a local folder
    remote: bool

    def resolve(self, url: str) -> str:
        if urlsplit(url).scheme in ("http", "https"):
            return url
        if self.remote:
            return urljoin(self.base, url)
        return str(Path(self.base, unquote(url)))


def read_manifest(src: str, opts: DownloadOptions) -> tuple[Manifest, Source]:
    if src.startswith(("http://", "https://")):
        from lora_trainer.share.net import HTTPStatusError, get_bytes

        try:
            data = get_bytes(src, opts, "application/json")
        except HTTPStatusError as exc:
            raise ManifestError(f"{src}: the server answered HTTP {exc.status}; is the link still valid?") from exc
        text = data.decode("utf-8-sig", "replace")
        return parse_manifest(text, src), Source(src, src, True)
    path = Path(src)
    return load_manifest_file(path), Source(src, str(path.resolve().parent), False)


def engine_fetch(opts: DownloadOptions, emit: EventSink = null_sink, stop: StopFlag | None = None) -> Fetch:
    """Fetch with the download engine (mirrors in order, resume, SHA-256 check); local paths are copied."""

    def fetch(urls: list[str], name: str, sha256: str, folder: Path) -> Fetched:
        remote = [u for u in urls if urlsplit(u).scheme in ("http", "https")]
        local = [u for u in urls if u not in remote]
        errors: list[str] = []
        for path in local:  # a manifest in a shared folder: the files sit beside it
            try:
                return Fetched(_copy_verified(Path(path), folder / name, sha256), "lora", path)
            except UserError as exc:
                errors.append(str(exc))
        if not remote:
            raise UserError("; ".join(errors) or "no link to fetch from")
        from lora_trainer.download import DownloadRequest, download

        staged = dataclasses.replace(opts, root=folder, route=False, write_sidecar=False, fetch_preview=False)
        result = download(DownloadRequest(remote, name, sha256), staged, emit, stop)
        f = result.files[0]
        return Fetched(Path(f.path), f.kind, result.url)

    return fetch


def _copy_verified(src: Path, dst: Path, sha256: str) -> Path:
    from lora_trainer.download.errors import VerificationError
    from lora_trainer.download.verify import sha256_file

    if not src.is_file():
        raise UserError(f"{src}: not found")
    shutil.copyfile(src, dst)
    got = sha256_file(dst)
    if got != sha256:
        dst.unlink()
        raise VerificationError(f"SHA-256 mismatch for {src.name}: expected {sha256}, got {got} "
                                "(the file in the store was changed or damaged)")
    return dst


STALE_STAGING_S = 6 * 3600


def _clean_stale_staging(root: Path) -> None:
    """Staging folders left by a pull that was killed (a live pull's folder is younger than this)."""
    import time

    for d in root.glob(".lora-pull-*"):
        with contextlib.suppress(OSError):
            if d.is_dir() and time.time() - d.stat().st_mtime > STALE_STAGING_S:
                shutil.rmtree(d, ignore_errors=True)


def _side_paths(model: Path) -> list[Path]:
    return [model.with_name(model.stem + ext) for ext in SIDE_EXTS]


def _move(src: Path, dst: Path) -> None:
    try:
        os.replace(src, dst)
    except OSError:  # another file system: copy beside the target, then rename
        from lora_trainer.atomic import atomic_copy

        atomic_copy(src, dst)
        src.unlink()


def _write_sidecars(model: Path, v: Version, source: str, manifest: str, preview: Path | None) -> None:
    import json

    from lora_trainer.atomic import atomic_write_text
    from lora_trainer.lora.metadata import write_sidecars

    json_path = model.with_suffix(".json")
    own = {"sha256": v.sha256, "version": v.version, "source url": source, "manifest": manifest}
    if v.sd_version and v.sd_version not in _ARCH:  # FLUX.1's "Flux" (Forge's name): kept, write_sidecars maps SD only
        own["sd version"] = v.sd_version
    atomic_write_text(json_path, json.dumps(own, indent=4, ensure_ascii=False))
    write_sidecars(model, trigger_words=v.trigger_words, preferred_weight=v.preferred_weight,
                   arch=_ARCH.get(v.sd_version), description=v.description,
                   notes=f"version {v.version} from {manifest}", preview=preview)


def _one_line(text: str) -> str:
    """The engine lists each mirror's failure on its own line; a pull says one line per LoRA."""
    head, *rest = text.strip().splitlines() or [""]
    return f"{head} {'; '.join(r.strip() for r in rest)}" if rest else head


def _expired(exc: UserError, want: Version) -> UserError:
    """The download failed and the manifest says its links are past their expiry: say that first."""
    import re

    from lora_trainer.download.errors import LinkExpiredError

    again = "ask the manifest's publisher to publish again (that refreshes the links)"
    if isinstance(exc, LinkExpiredError):  # the store answered 401/403/404/410: the expiry is the cause
        status = re.search(r"HTTP \d{3}", str(exc))
        said = f" ({status.group(0)})" if status else ""
        err = UserError(f"the links of v{want.version} expired at {want.expires} and the store refuses them"
                        f"{said}; {again}")
    else:  # not reached at all (offline): that is the first thing to fix
        err = UserError(f"{_one_line(str(exc))} — and the links of v{want.version} expired at {want.expires}; "
                        f"{again}")
    err.exit_code = getattr(exc, "exit_code", 2)  # keeps the download's exit code
    return err


class Puller:
    """One pull run over a models folder (see the module docstring for the steps)."""

    def __init__(self, root: str | Path, opts: DownloadOptions, fetch: Fetch | None = None,
                 emit: EventSink = null_sink, stop: StopFlag | None = None):
        self.root = Path(root)
        self.opts = dataclasses.replace(opts, root=self.root)
        self.fetch = fetch or engine_fetch(self.opts, emit, stop)
        self.record = Record(self.root)

    def status(self, entry: Entry, pinned: int | None = None) -> tuple[str, Version]:
        """(`current` | `outdated` | `missing`, wanted version) without touching anything."""
        want = entry.get(pinned) if pinned else entry.latest
        rec = self.record.loras.get(entry.name)
        if rec is None or not Path(rec.path).is_file():
            return "missing", want
        return ("current" if rec.sha256 == want.sha256 and rec.intact() else "outdated"), want

    def pull_entry(self, entry: Entry, source: Source, pinned: int | None = None) -> Outcome:
        try:
            return self._pull(entry, source, pinned)
        except UserError as exc:
            return Outcome(entry.name, "failed", None, f"FAILED: {_one_line(str(exc))}",
                           getattr(exc, "exit_code", 2) or 2)

    def _pull(self, entry: Entry, source: Source, pinned: int | None) -> Outcome:
        state, want = self.status(entry, pinned)
        rec = self.record.loras.get(entry.name)
        if state == "current":
            return Outcome(entry.name, "current", want.version, f"v{want.version} is current")
        folder = self.opts.folder_for("lora")
        target = folder / want.file
        if rec is None and target.is_file():
            from lora_trainer.download.verify import sha256_file

            if sha256_file(target) != want.sha256:
                raise UserError(f"{target} exists and did not come from this manifest; rename or move it, "
                                "then pull again")
            st = target.stat()  # the same bytes, put there by hand: recorded, not downloaded again
            self.record.loras[entry.name] = Pulled(entry.name, want.version, want.sha256, str(target), st.st_size,
                                                   st.st_mtime, source.text, str(target), now_iso())
            self.record.save()
            return Outcome(entry.name, "current", want.version, f"v{want.version} is current (already in place)",
                           path=str(target))
        self.root.mkdir(parents=True, exist_ok=True)
        _clean_stale_staging(self.root)
        staging = Path(tempfile.mkdtemp(prefix=".lora-pull-", dir=self.root))
        try:
            staged, kind, url, fetched = self._obtain(want, rec, source, staging)
            # routed like any download; a file the classifier cannot place is still a LoRA here
            folder = self.opts.folder_for(kind if kind in ("checkpoint", "vae", "embedding") else "lora")
            folder.mkdir(parents=True, exist_ok=True)
            target = folder / want.file
            preview = self._preview(want, source, staging)
            _write_sidecars(staged, want, url, source.text, preview)
            kept = self._step_aside(rec, target, want)
            for side, final in zip(_side_paths(staged), _side_paths(target), strict=True):
                if side.is_file():
                    _move(side, final)
            _move(staged, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        st = target.stat()
        self.record.loras[entry.name] = Pulled(entry.name, want.version, want.sha256, str(target), st.st_size,
                                               st.st_mtime, source.text, url, now_iso(), kept)
        self.record.save()
        was = f" (was v{rec.version})" if rec is not None and rec.version != want.version else ""
        status = "updated" if rec is not None else "installed"
        return Outcome(entry.name, status, want.version, f"v{want.version} {status}{was} -> {target}",
                       downloaded=fetched, path=str(target))

    def _obtain(self, want: Version, rec: Pulled | None, source: Source,
                staging: Path) -> tuple[Path, str, str, bool]:
        """The wanted file in staging: from a kept older copy on disk, else fetched and verified."""
        for k in rec.kept if rec else []:
            if k.sha256 == want.sha256 and Path(k.path).is_file():  # moved back, not downloaded again
                kept = Path(k.path)
                with contextlib.suppress(UserError):
                    got = _copy_verified(kept, staging / want.file, want.sha256)
                    for f in (kept, *_side_paths(kept)):
                        f.unlink(missing_ok=True)
                    return got, "lora", k.path, False
        if not want.urls:
            raise ManifestError(f"v{want.version} lists no links")
        try:
            got = self.fetch([source.resolve(u) for u in want.urls], want.file, want.sha256, staging)
        except UserError as exc:
            if want.expired():
                raise _expired(exc, want) from exc
            raise
        return got.path, got.kind, got.url, True

    def _preview(self, want: Version, source: Source, staging: Path) -> Path | None:
        """The preview image, verified; a missing preview is not worth failing the LoRA for."""
        if want.preview is None or not want.preview.urls:
            return None
        sub = staging / "preview"
        sub.mkdir()
        try:
            return self.fetch([source.resolve(u) for u in want.preview.urls], want.preview.file,
                              want.preview.sha256, sub).path
        except UserError:
            return None

    def _step_aside(self, rec: Pulled | None, target: Path, want: Version) -> list[Kept]:
        """Rename the version in place to `<name>.v<N>.*` (kept until --prune)."""
        kept = [k for k in (rec.kept if rec else []) if Path(k.path).is_file() and k.sha256 != want.sha256]
        if rec is None or not Path(rec.path).is_file():
            return kept
        old = Path(rec.path)
        if rec.sha256 == want.sha256:  # the same version, damaged on disk: replaced, not kept
            for f in (old, *_side_paths(old)):
                f.unlink(missing_ok=True)
            return kept
        aside = old.with_name(f"{old.stem}.v{rec.version}{old.suffix}")
        for side, final in zip(_side_paths(old), _side_paths(aside), strict=True):
            if side.is_file():
                _move(side, final)
        _move(old, aside)
        kept.append(Kept(rec.version, str(aside), rec.sha256))
        return kept

    def prune(self, names: list[str]) -> list[Outcome]:
        out = []
        for name in names:
            rec = self.record.loras.get(name)
            if rec is None or not rec.kept:
                continue
            for k in rec.kept:
                p = Path(k.path)
                for f in (p, *_side_paths(p)):
                    with contextlib.suppress(FileNotFoundError):
                        f.unlink()
                out.append(Outcome(name, "pruned", k.version, f"removed superseded v{k.version} ({p.name})"))
            rec.kept = []
        self.record.save()
        return out


def parse_pins(pins: list[str]) -> dict[str, int]:
    out = {}
    for pin in pins:
        name, sep, num = pin.partition("=")
        if not sep or not num.strip().isdigit():
            raise UserError(f"--version '{pin}': write it as name=N (e.g. inkstyle=2)")
        out[name.strip()] = int(num)
    return out


def pull(src: str, root: str | Path, opts: DownloadOptions, *, pins: dict[str, int] | None = None,
         names: list[str] | None = None, prune: bool = False, fetch: Fetch | None = None,
         emit: EventSink = null_sink, stop: StopFlag | None = None) -> PullReport:
    """Pull every entry of the manifest (or only `names`) into the models folder `root`."""
    manifest, source = read_manifest(src, opts)
    pins = dict(pins or {})
    wanted = names or [e.name for e in manifest.loras]
    for name in list(pins) + wanted:
        if manifest.entry(name) is None:
            raise ManifestError(f"'{name}' is not in {src} (it has: {', '.join(e.name for e in manifest.loras)})")
    for name, number in pins.items():
        manifest.entry(name).get(number)  # type: ignore[union-attr] - checked above
    report = PullReport()
    from lora_trainer.share.lock import folder_lock

    def waiting(message: str) -> None:
        emit(Event("log", {"level": "warning", "message": message}))

    with folder_lock(root, waiting, stop):  # two pulls into one folder (tab, terminals) take turns
        puller = Puller(root, opts, fetch, emit, stop)  # reads the record the previous pull left
        for name in wanted:
            report.outcomes.append(puller.pull_entry(manifest.entry(name), source, pins.get(name)))  # type: ignore[arg-type]
        if prune:
            report.outcomes += puller.prune(wanted)
    return report

