"""DownloadManager: the queue the WebUI tab and the CLI drive — concurrency limit, cancel, retry,
events per item, and a JSON file so the queue continues after a restart (parts resume).

`DownloadManager.for_host(host)` builds one from a WebUI/standalone host (duck-typed: `model_dirs()`,
`setting(key)`, `restricted`, `work_dir()`, optional `file_landed(path, kind)`), without importing it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lora_trainer.atomic import atomic_write_text
from lora_trainer.download.errors import BadRequestError, CancelledError, DownloadError
from lora_trainer.download.fetch import DownloadRequest, download
from lora_trainer.download.lines import parse_line, parse_text
from lora_trainer.download.options import DownloadOptions
from lora_trainer.download.state import state_path_for
from lora_trainer.events import Emitter, Event, EventSink, StopFlag

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"


@dataclass
class QueueItem:
    id: str
    request: DownloadRequest
    state: str = QUEUED
    error: str = ""
    exit_code: int = 0
    result: dict | None = None
    progress: dict = field(default_factory=dict)
    added: float = field(default_factory=time.time)
    to: str | None = None  # a folder for this item only (no routing)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def row(self) -> dict[str, Any]:
        """Flat view for tables and the HTTP API."""
        p = self.progress or {}
        files = (self.result or {}).get("files") or []
        return {"id": self.id, "name": p.get("name") or self.request.name or _short(self.request.urls[0]),
                "state": self.state, "done_bytes": p.get("done_bytes", 0), "total_bytes": p.get("total_bytes"),
                "speed_bps": p.get("speed_bps", 0.0) if self.state == RUNNING else 0.0,
                "eta_s": p.get("eta_s") if self.state == RUNNING else None,
                "path": files[0]["path"] if files else "", "kind": files[0]["kind"] if files else "",
                "sha256": files[0]["sha256"] if files else "", "existed": bool(files and files[0]["existed"]),
                "error": self.error, "exit_code": self.exit_code, "urls": list(self.request.urls),
                "files": [f["path"] for f in files]}


def _short(url: str) -> str:
    return url.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1] or url


class DownloadManager:
    """Runs queued downloads, at most `concurrency` at once. Events carry the item id in data["id"]."""

    def __init__(self, opts: DownloadOptions, *, concurrency: int = 2, state_file: str | Path | None = None,
                 sinks: tuple[EventSink, ...] = (), on_file: Any = None):
        self.opts = opts
        self.on_file = on_file  # called as on_file(path, kind) for every file that landed
        self.concurrency = max(1, concurrency)
        self.state_file = Path(state_file) if state_file else None
        self.emitter = Emitter(list(sinks), job="download")
        self._items: dict[str, QueueItem] = {}
        self._stops: dict[str, StopFlag] = {}
        self._discard: set[str] = set()
        self._lock = threading.Condition()
        self._threads: list[threading.Thread] = []
        self._closing = False
        self._ids = itertools.count(1)
        self._load()

    @classmethod
    def for_host(cls, host: Any, *, concurrency: int = 2, sinks: tuple[EventSink, ...] = ()) -> DownloadManager:
        """Folders, tokens and proxy from the host's settings; private addresses refused when the
        host is exposed (`host.restricted`); the queue file lives in the host's work folder."""
        dirs = dict(host.model_dirs())
        root = Path(dirs.get("lora") or ".").parent
        opts = DownloadOptions(root=root, folders=dirs, civitai_token=host.setting("civitai_token"),
                               hf_token=host.setting("hf_token"), block_private=bool(host.restricted))
        if host.setting("proxy"):
            opts.proxy = host.setting("proxy")
        if host.setting("download_connections"):
            opts.connections = int(host.setting("download_connections"))
        opts.allow_pickle = bool(host.setting("allow_pickle", False))
        state = Path(host.work_dir()) / "downloads.json"
        landed = getattr(host, "file_landed", None)
        return cls(opts, concurrency=concurrency, state_file=state, sinks=sinks, on_file=landed)

    # -- queue editing -----------------------------------------------------------------------
    def add(self, request: DownloadRequest | str, to: str | None = None, name: str | None = None,
            sha256: str | None = None) -> str:
        """Queue a request, or one `name | url | sha256` line / URL; `to` = a folder for this item only."""
        if isinstance(request, str):
            parsed = parse_line(request)
            if parsed is None:
                raise BadRequestError("nothing to download: the line is empty")
            request = parsed
        if name or sha256:
            request = DownloadRequest(request.urls, name or request.name, sha256 or request.sha256, request.headers)
        request.validate()
        with self._lock:
            for old in self._items.values():  # the same request already waiting (e.g. a restarted CLI run)
                if old.request == request and old.to == to and old.state in (QUEUED, RUNNING):
                    return old.id
            item = QueueItem(f"dl-{int(time.time() * 1000) % 10**9}-{next(self._ids)}", request, to=to)
            self._items[item.id] = item
            self._save()
            self._lock.notify_all()
        self.emitter(Event("status", {"id": item.id, "message": f"queued {request.urls[0]}"}))
        return item.id

    def add_text(self, text: str) -> list[str]:
        """Queue every line of a pasted list (`name | url | sha256`)."""
        return [self.add(req) for req in parse_text(text)]

    def cancel(self, item_id: str, discard: bool = True) -> None:
        """Stop an item; with discard its partial file goes too (else it can be resumed by retry)."""
        with self._lock:
            item = self._items[item_id]
            if item.state == QUEUED:
                item.state = CANCELLED
                self._save()
            elif item.state == RUNNING:
                if discard:
                    self._discard.add(item_id)
                self._stops[item_id].request("cancelled")

    def retry(self, item_id: str) -> None:
        with self._lock:
            item = self._items[item_id]
            if item.state in (FAILED, CANCELLED, DONE):
                item.state, item.error, item.exit_code, item.result = QUEUED, "", 0, None
                self._save()
                self._lock.notify_all()

    def remove(self, item_id: str) -> None:
        with self._lock:
            if self._items.get(item_id) and self._items[item_id].state != RUNNING:
                del self._items[item_id]
                self._save()

    def items(self) -> list[dict[str, Any]]:
        """One flat row per item (id, name, state, done_bytes, total_bytes, speed_bps, eta_s, path, error...)."""
        with self._lock:
            return [i.row() for i in self._items.values()]

    def get(self, item_id: str) -> QueueItem:
        return self._items[item_id]

    # -- running -----------------------------------------------------------------------------
    def start(self) -> DownloadManager:
        with self._lock:
            self._closing = False
            self._threads = [t for t in self._threads if t.is_alive()]
            while len(self._threads) < self.concurrency:
                t = threading.Thread(target=self._run, daemon=True, name=f"dlq-{len(self._threads)}")
                self._threads.append(t)
                t.start()
        return self

    def wait(self, timeout: float | None = None) -> bool:
        """Block until nothing is queued or running; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while any(i.state in (QUEUED, RUNNING) for i in self._items.values()):
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._lock.wait(0.2 if left is None else min(left, 0.2))
        return True

    def shutdown(self, wait: bool = True) -> None:
        """Stop the runners; running items stop and stay queued (they resume next start)."""
        with self._lock:
            self._closing = True
            for flag in self._stops.values():
                if not flag.requested:  # a cancel already asked for stays a cancel
                    flag.request("shutdown")
            self._lock.notify_all()
        if wait:
            for t in self._threads:
                t.join(timeout=30)

    def _next(self) -> QueueItem | None:
        with self._lock:
            while not self._closing:
                for item in self._items.values():
                    if item.state == QUEUED:
                        item.state = RUNNING
                        self._stops[item.id] = StopFlag()
                        self._save()
                        return item
                self._lock.wait(0.5)
        return None

    def _run(self) -> None:
        while (item := self._next()) is not None:
            self._run_item(item)

    def _run_item(self, item: QueueItem) -> None:
        stop = self._stops[item.id]

        def sink(event: Event) -> None:
            if event.type == "progress":
                item.progress = dict(event.data)
            self.emitter(event)

        opts = self.opts
        if item.to:
            opts = dataclasses.replace(self.opts, root=Path(item.to), route=False)
        try:
            result = download(item.request, opts, sink, stop, item.id)
            state, error, code, data = DONE, "", 0, result.to_dict()
            if self.on_file is not None:
                for f in result.files:
                    with contextlib.suppress(Exception):
                        self.on_file(f.path, f.kind)
        except CancelledError as exc:
            state, error, code, data = CANCELLED, str(exc), exc.exit_code, None
        except DownloadError as exc:
            state, error, code, data = FAILED, str(exc), exc.exit_code, None
        except Exception as exc:  # noqa: BLE001 - one broken item must not kill the queue
            state, error, code, data = FAILED, f"{type(exc).__name__}: {exc}", 1, None
        with self._lock:
            if state == CANCELLED and self._closing and stop.reason == "shutdown":
                state = QUEUED  # interrupted by shutdown: continue after restart
            if state == CANCELLED and item.id in self._discard:
                self._discard.discard(item.id)
                self._discard_part(item)
            item.state, item.error, item.exit_code, item.result = state, error, code, data
            self._stops.pop(item.id, None)
            self._save()
            self._lock.notify_all()
        if state == FAILED:
            self.emitter(Event("error", {"id": item.id, "message": error}))
        elif state == CANCELLED:
            self.emitter(Event("stopped", {"id": item.id, "message": error, "state_path": None}))

    def _discard_part(self, item: QueueItem) -> None:
        name = (item.progress or {}).get("name")
        if name:
            part = Path(self.opts.root) / f"{name}.part"
            for p in (part, state_path_for(part)):
                with contextlib.suppress(OSError):
                    p.unlink()

    # -- persistence -------------------------------------------------------------------------
    def _save(self) -> None:
        if self.state_file is None:
            return
        data = {"version": 1, "items": [i.to_dict() for i in self._items.values()]}
        atomic_write_text(self.state_file, json.dumps(data, ensure_ascii=False, indent=1))

    def _load(self) -> None:
        if self.state_file is None or not self.state_file.exists():
            return
        try:
            data = json.loads(self.state_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return
        for raw in data.get("items", []):
            req = DownloadRequest(**raw["request"])
            item = QueueItem(raw["id"], req, raw.get("state", QUEUED), raw.get("error", ""),
                             raw.get("exit_code", 0), raw.get("result"), raw.get("progress") or {},
                             raw.get("added", time.time()), raw.get("to"))
            if item.state == RUNNING:
                item.state = QUEUED  # the process died while it ran: the .part resumes
            self._items[item.id] = item
