"""Downloads on a host: one persisted queue per host (the engine's DownloadManager), shared by the
Downloader tab and the HTTP API, with the host's folders, tokens, proxy and access rule."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from lora_trainer.errors import UserError

if TYPE_CHECKING:
    from lora_trainer.hosts.base import Host

_managers: dict[int, Any] = {}
_lock = threading.Lock()


def manager(host: Host) -> Any:
    """The host's one download queue (persisted in its work dir, resumed on first use)."""
    from lora_trainer.download.manager import DownloadManager

    with _lock:
        mgr = _managers.get(id(host))
        if mgr is None:
            mgr = _managers[id(host)] = DownloadManager.for_host(host).start()
        return mgr


def _destination(host: Host, body: dict[str, Any]) -> str | None:
    """`kind` (lora, checkpoint, vae, embedding) or a server `folder`; None = routed by content."""
    if body.get("folder"):
        return host.check_server_path(str(body["folder"]), "download folder")
    kind = body.get("kind")
    if kind:
        dirs = host.model_dirs()
        if kind not in dirs:
            raise UserError(f"download 'kind': '{kind}' is not one of {', '.join(dirs)}")
        return dirs[kind]
    return None


def start_downloads(host: Host, body: dict[str, Any]) -> list[dict[str, Any]]:
    """Queue `{"links": "name | url mirror | sha256\\n..."}` or `{"url"/"urls", "name", "sha256"}`;
    every line is checked before any is queued. Returns the queued items."""
    host.check_download()
    from lora_trainer.download import DownloadRequest, parse_text

    if body.get("links"):
        requests = parse_text(str(body["links"]))
    elif body.get("url") or body.get("urls"):
        urls = body.get("urls") or [body["url"]]
        requests = [DownloadRequest([str(u) for u in urls], body.get("name"), body.get("sha256"))]
    else:
        raise UserError('request: send {"links": "name | url | sha256 ..."} or {"url": ...}')
    for req in requests:
        req.validate()
    folder = _destination(host, body)
    mgr = manager(host)
    if body.get("connections"):
        mgr.opts.connections = max(1, min(32, int(body["connections"])))
    ids = [mgr.add(req, to=folder) for req in requests]
    return [item(host, i) for i in ids]


def item(host: Host, item_id: str) -> dict[str, Any]:
    """One queue row (id, name, state, done_bytes, total_bytes, speed_bps, eta_s, path, error, ...)."""
    for row in manager(host).items():
        if row.get("id") == item_id:
            return row
    raise KeyError(item_id)


def items(host: Host) -> list[dict[str, Any]]:
    return manager(host).items()


def cancel(host: Host, item_id: str) -> dict[str, Any]:
    item(host, item_id)
    manager(host).cancel(item_id)
    return item(host, item_id)


def retry(host: Host, item_id: str) -> dict[str, Any]:
    item(host, item_id)
    manager(host).retry(item_id)
    return item(host, item_id)
