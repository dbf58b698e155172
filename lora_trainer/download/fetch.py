"""One download from link to verified, routed file: mirrors, resume, checks, naming, sidecar.

`download(request, opts, emit, stop)` is what the queue, the CLI and the WebUI call.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from lora_trainer.download.claim import PartClaim, claim_part
from lora_trainer.download.engine import Transfer, probe
from lora_trainer.download.errors import (
    BadRequestError,
    CancelledError,
    DownloadError,
    LinkExpiredError,
    NetworkError,
    RemoteChangedError,
    SpaceError,
    UnsafeError,
    VerificationError,
)
from lora_trainer.download.http import Client, Slot
from lora_trainer.download.naming import choose_name
from lora_trainer.download.options import DownloadOptions
from lora_trainer.download.place import check_free, place
from lora_trainer.download.safety import check_url
from lora_trainer.download.sources import SourceInfo, civitai_info
from lora_trainer.download.state import PartState, Remote, state_path_for
from lora_trainer.download.verify import (
    PICKLE_SUFFIX,
    check_sha256,
    is_zip,
    looks_like_pickle,
    read_safetensors_header,
    sha256_file,
    sniff_error_page,
)
from lora_trainer.events import Event, EventSink, StopFlag, null_sink

SHA_RE = re.compile(r"^[0-9a-fA-F]{64}$")


@dataclass
class DownloadRequest:
    """One file: its links (first = primary, rest = mirrors), optional name, expected SHA-256, headers."""

    urls: list[str]
    name: str | None = None
    sha256: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def validate(self) -> None:
        if not self.urls:
            raise BadRequestError("no link given")
        for url in self.urls:
            check_url(url)
        if self.sha256 and not SHA_RE.match(self.sha256):
            raise BadRequestError(f"'{self.sha256}' is not a SHA-256 (64 hex digits)")


@dataclass
class FileResult:
    path: str
    kind: str
    sha256: str
    size: int
    sd_version: str = ""
    existed: bool = False
    pickle: bool = False
    sidecar: str | None = None
    preview: str | None = None


@dataclass
class DownloadResult:
    url: str
    files: list[FileResult]
    skipped: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def path(self) -> str:
        return self.files[0].path if self.files else ""

    def to_dict(self) -> dict:
        return asdict(self)


class _Ctx:
    """Per-download state shared by the steps below."""

    def __init__(self, req: DownloadRequest, opts: DownloadOptions, emit: EventSink, stop: StopFlag | None,
                 item_id: str):
        self.req, self.opts, self.emit, self.stop, self.id = req, opts, emit, stop, item_id
        self.client = Client(opts, req.headers)
        self.name = ""
        self.warnings: list[str] = []
        self.info: SourceInfo | None = None
        self.sha256: str | None = None  # hashed during the transfer
        self.claim: PartClaim | None = None  # our hold on the .part file
        self._t0 = time.monotonic()

    def log(self, level: str, message: str) -> None:
        self.emit(Event("log", {"level": level, "message": message, "id": self.id}))
        if level == "warning":
            self.warnings.append(message)

    def progress(self, done: int, total: int | None, speed: float) -> None:
        eta = (total - done) / speed if total and speed > 0 else None
        self.emit(Event("progress", {"id": self.id, "name": self.name, "done_bytes": done, "total_bytes": total,
                                     "speed_bps": speed, "eta_s": eta}))


def download(req: DownloadRequest, opts: DownloadOptions, emit: EventSink = null_sink,
             stop: StopFlag | None = None, item_id: str = "") -> DownloadResult:
    """Fetch, verify and place one file (or the models inside one zip). Raises a DownloadError subclass."""
    req.validate()
    ctx = _Ctx(req, opts, emit, stop, item_id)
    root = Path(opts.root)
    root.mkdir(parents=True, exist_ok=True)
    try:
        return _download(ctx)
    finally:
        if ctx.claim is not None:
            ctx.claim.release()


def _download(ctx: _Ctx) -> DownloadResult:
    req, opts, stop = ctx.req, ctx.opts, ctx.stop
    ctx.info = civitai_info(ctx.client, req.urls[0], opts)
    errors: list[str] = []
    last: DownloadError | None = None
    for index, url in enumerate(req.urls):
        if stop is not None and stop.requested:
            raise CancelledError("download cancelled")
        if index:
            ctx.log("warning", f"trying mirror {index + 1}/{len(req.urls)}: {url}")
        try:
            part, remote, expected = _transfer(ctx, url)
            return _finish(ctx, url, part, remote, expected)
        except (LinkExpiredError, NetworkError, UnsafeError, VerificationError) as exc:
            if isinstance(exc, VerificationError) and len(req.urls) == 1:
                raise
            errors.append(f"{url}: {exc}")
            last = exc
            if index + 1 < len(req.urls):  # the last link's error is the one raised
                ctx.log("warning", f"{url}: {exc}")
    assert last is not None
    if len(req.urls) > 1:
        raise type(last)("all links failed:\n  " + "\n  ".join(errors))
    raise last


def _expected_sha(ctx: _Ctx, remote: Remote, name: str) -> tuple[str | None, str]:
    if ctx.req.sha256:
        return ctx.req.sha256.lower(), "given"
    if ctx.info is not None and ctx.info.sha256_for(name):
        return ctx.info.sha256_for(name), "from Civitai"
    if remote.linked_sha256:
        return remote.linked_sha256, "from HuggingFace"
    return None, ""


def _transfer(ctx: _Ctx, url: str) -> tuple[Path, Remote, tuple[str | None, str]]:
    """Probe url, decide resume/restart, move the bytes into the part file (kept across mirrors)."""
    opts = ctx.opts
    part = ctx.claim.path if ctx.claim is not None else None
    for _restart in range(opts.max_restarts + 1):
        slot = Slot()
        remote, opened, head = probe(ctx.client, url, opts, slot)
        try:
            if part is None:
                hints = (ctx.info.primary_name,) if ctx.info is not None and ctx.info.primary_name else ()
                ctx.name = choose_name(ctx.req.name, remote.disposition, [url, remote.url], hints)
                ctx.claim = claim_part(Path(opts.root), ctx.name, url)
                part = ctx.claim.path
            expected = _expected_sha(ctx, remote, ctx.name)
            if remote.size is not None and opts.max_bytes is not None and remote.size > opts.max_bytes:
                raise SpaceError(f"{ctx.name} is {remote.size} bytes, above the size cap of {opts.max_bytes}; "
                                 "raise --max-size to allow it")
            # sniff the first bytes: a login page or JSON error must never become a model file
            sniff_error_page(head, remote.content_type, remote.size, ctx.name,
                             opts.is_civitai(urlsplit(url).hostname or ""))
            pending = _resume_plan(ctx, part, remote, url, expected[0] is not None)
            have = 0 if pending is None else (remote.size or 0) - sum((e or 0) - s for s, e in pending)
            if remote.size is not None:
                check_free(Path(opts.root), remote.size - have, opts.min_free_bytes)
            fresh = pending is None
            with open(part, "r+b" if part.exists() else "wb") as f:
                f.write(head)
            if not fresh:  # resuming: the probe's stream (at byte len(head)) is not what is missing
                slot.close()
                opened = None
            transfer = Transfer(ctx.client, url, remote, part, opts, pending=pending, first=opened,
                                first_slot=slot, first_at=len(head), stop=ctx.stop, on_progress=ctx.progress)
            ctx.log("info", f"{ctx.name}: {remote.size if remote.size is not None else '?'} bytes, "
                            f"{transfer.workers} connection(s){'' if fresh else ', resuming'}")
            transfer.run()
            ctx.sha256 = transfer.sha256
            return part, remote, expected
        except RemoteChangedError as exc:
            slot.close()
            ctx.log("warning", f"{exc}; starting over")
            _reset(part)
            continue
        except BaseException:
            slot.close()
            raise
    raise RemoteChangedError("the file kept changing on the server while downloading; try again later")


def _resume_plan(ctx: _Ctx, part: Path, remote: Remote, url: str, sha_known: bool) -> list | None:
    """Pending ranges from the state file when the remote file is the same one; else start clean."""
    state = PartState.load(state_path_for(part))
    if state is not None and part.exists() and state.remote.same_file(remote, sha_known, state.source != url) \
            and part.stat().st_size == remote.size and remote.ranges:
        ctx.log("info", f"{part.name}: resuming, the remote file is the same one")
        return [[s, e] for s, e in state.pending]
    if state is not None or (part.exists() and part.stat().st_size > 0):
        why = "the remote file changed" if state is not None else "no resume record"
        ctx.log("info", f"{part.name}: starting over ({why})")
        _reset(part)
    return None


def _reset(part: Path | None) -> None:
    """Empty the part file in place (we hold its lock) and forget its resume record."""
    if part is None:
        return
    with contextlib.suppress(FileNotFoundError):
        os.truncate(part, 0)
    state_path_for(part).unlink(missing_ok=True)


def _finish(ctx: _Ctx, url: str, part: Path, remote: Remote, expected: tuple[str | None, str]) -> DownloadResult:
    """Verify the part file, then place it (or what is inside the zip) at its routed final path."""
    opts = ctx.opts
    ctx.emit(Event("status", {"message": f"verifying {ctx.name}", "id": ctx.id}))
    try:
        digest = ctx.sha256 or sha256_file(part)
        check_sha256(part, digest, expected[0], f" ({expected[1]} hash)" if expected[1] else "")
        if is_zip(part) and opts.unpack_zip and not looks_like_pickle(part):
            files, skipped = _unpack(ctx, part, url)
            state_path_for(part).unlink(missing_ok=True)
            if opts.keep_archive:
                path, existed = place(part, opts.folder_for("other"), ctx.name, digest)
                files.append(FileResult(str(path), "archive", digest, path.stat().st_size, existed=existed))
            else:
                part.unlink()
            _done(ctx, files)
            return DownloadResult(url, files, skipped, ctx.warnings)
        files = [_place_model(ctx, part, ctx.name, digest)]
    except (VerificationError, UnsafeError):
        _reset(part)  # a wrong file is not worth resuming (emptied; removed when we let go of it)
        raise
    state_path_for(part).unlink(missing_ok=True)
    if files[0].existed:
        ctx.log("info", f"{files[0].path} already exists with the same SHA-256; kept it")
    _sidecars(ctx, url, files)
    _done(ctx, files)
    return DownloadResult(url, files, [], ctx.warnings)


def _place_model(ctx: _Ctx, tmp: Path, name: str, digest: str) -> FileResult:
    """Classify a verified file by its bytes and move it to its folder. A pickle (decided by content, never
    by name) is never loaded by us; unless pickles are allowed it stays out of the WebUI's model folders,
    under a name the WebUI does not load (`x.ckpt` → `x.ckpt.pickle`), and one line says so."""
    opts = ctx.opts
    if looks_like_pickle(tmp):
        if opts.allow_pickle:
            path, existed = place(tmp, opts.folder_for(_pickle_kind(name)), name, digest)
            ctx.log("warning", f"{path.name}: pickle format kept but never loaded by us; load it only if you "
                               "trust the source")
        else:
            path, existed = place(tmp, Path(opts.root), name + PICKLE_SUFFIX, digest)
            ctx.log("warning", f"{name} is a pickle (it can run code when loaded): kept as {path}, outside the "
                               "WebUI's model folders; use it only if you trust the source (--allow-pickle "
                               "routes pickles into the model folders)")
        kind = _pickle_kind(name) if opts.allow_pickle else "other"  # "other": no sidecar, not a WebUI model
        return FileResult(str(path), kind, digest, path.stat().st_size, existed=existed, pickle=True)
    kind, sd = "other", ""
    if name.lower().endswith(".safetensors"):
        from lora_trainer.download.classify import classify_header  # only for .safetensors

        found = classify_header(read_safetensors_header(tmp))
        kind, sd = found.kind, found.sd_version
    path, existed = place(tmp, opts.folder_for(kind), name, digest)
    return FileResult(str(path), kind, digest, path.stat().st_size, sd, existed=existed)


def _pickle_kind(name: str) -> str:
    lower = name.lower()
    if "vae" in lower:
        return "vae"
    if lower.endswith(".ckpt"):
        return "checkpoint"
    return "other"


def _unpack(ctx: _Ctx, part: Path, url: str) -> tuple[list[FileResult], list[str]]:
    from lora_trainer.download import archive  # zipfile only when there is an archive

    opts = ctx.opts
    files: list[FileResult] = []
    skipped: list[str] = []
    with archive.open_zip(part) as zf:
        members = list(archive.safe_members(zf, opts.max_unpacked_bytes))
        check_free(Path(opts.root), sum(i.file_size for i, _ in members), opts.min_free_bytes)
        wanted = {i.filename for i, _ in members}
        skipped = [i.filename for i in zf.infolist() if not i.is_dir() and i.filename not in wanted]
        for info, name in members:
            tmp = archive.tmp_name(Path(opts.root), name)
            try:
                archive.extract_member(zf, info, tmp)
                files.append(_place_model(ctx, tmp, name, sha256_file(tmp)))
            finally:
                tmp.unlink(missing_ok=True)
    if not files:
        raise VerificationError(f"{ctx.name}: the archive holds no model files (.safetensors, .ckpt, .pt, .bin); "
                                f"it contains: {', '.join(skipped[:10]) or 'nothing'}")
    _sidecars(ctx, url, files)
    return files, skipped


def _sidecars(ctx: _Ctx, url: str, files: list[FileResult]) -> None:
    if not ctx.opts.write_sidecar:
        return
    for f in files:
        if f.kind in ("other", "archive"):
            continue
        from lora_trainer.download.sidecar import fetch_preview, write_sidecar  # only for WebUI model files

        path = Path(f.path)
        try:
            f.sidecar = str(write_sidecar(path, url, f.sha256, f.sd_version, ctx.info,
                                          {"pickle": True} if f.pickle else None))
            if ctx.opts.fetch_preview and ctx.info is not None and ctx.info.preview_url and len(files) == 1:
                preview = fetch_preview(ctx.client, ctx.info.preview_url, path)
                f.preview = str(preview) if preview else None
        except OSError as exc:
            ctx.log("warning", f"could not write the sidecar for {path.name}: {exc}")


def _done(ctx: _Ctx, files: list[FileResult]) -> None:
    first = files[0]
    ctx.emit(Event("done", {"id": ctx.id, "output": first.path, "sha256": first.sha256, "kind": first.kind,
                            "existed": first.existed, "files": [asdict(f) for f in files]}))
