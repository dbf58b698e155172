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


FINAL_STATES = ("done", "failed", "cancelled")


def clear_finished(host: Host) -> int:
    """Drop finished, failed and cancelled rows from the queue; returns how many went."""
    mgr = manager(host)
    gone = [row["id"] for row in mgr.items() if row.get("state") in FINAL_STATES]
    for item_id in gone:
        mgr.remove(item_id)
    return len(gone)


def open_folder(host: Host, item_id: str) -> str:
    """Open the folder of a finished download in the desktop's file manager (local use only)."""
    import os
    import shutil
    import subprocess
    import sys

    if host.restricted:
        raise UserError(f"opening folders is disabled here: {host.restriction_reason()}")
    row = item(host, item_id)
    if not row.get("path"):
        raise UserError("this download has no file yet")
    folder = os.path.dirname(row["path"])
    opener = "explorer" if sys.platform == "win32" else "open" if sys.platform == "darwin" else "xdg-open"
    desktop = sys.platform in ("win32", "darwin") or os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    if not desktop or shutil.which(opener) is None:
        return f"The file is in {folder} (no file manager to open it on this machine)."
    subprocess.Popen([opener, folder], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # noqa: S603
    return f"Opened {folder}."


# settings the standalone app edits in the tab (the WebUI has its Settings page for the same keys)
APP_SETTINGS = ("civitai_token", "hf_token", "proxy")


def apply_settings(host: Host, values: dict[str, str]) -> str:
    """Store tokens/proxy on the host, give them to the running queue at once, and keep them for the next
    start where the host can; returns that file ("" = this session only)."""
    for key in APP_SETTINGS:
        host.settings[key] = (values.get(key) or "").strip()
    mgr = manager(host)
    mgr.opts.civitai_token = host.setting("civitai_token") or None
    mgr.opts.hf_token = host.setting("hf_token") or None
    mgr.opts.proxy = host.setting("proxy") or None
    return host.save_settings(APP_SETTINGS)


def _models_root(host: Host) -> str:
    import os

    return os.path.dirname(host.lora_dir())


def read_team_manifest(host: Host, src: str) -> tuple[Any, Any, dict[str, tuple[str, Any]]]:
    """(manifest, source, {name: (local status, wanted version)}) for a manifest link or server file."""
    import dataclasses

    from lora_trainer.share.pull import Puller, read_manifest

    src = (src or "").strip()
    if not src:
        raise UserError("manifest: paste a manifest link (https://…/team.json) or a file path")
    host.check_download()
    if "://" not in src:
        src = host.check_server_path(src, "manifest file")
    opts = dataclasses.replace(manager(host).opts)
    manifest, source = read_manifest(src, opts)
    puller = Puller(_models_root(host), opts)
    return manifest, source, {e.name: puller.status(e) for e in manifest.loras}


def _queue_fetch(host: Host) -> Any:
    """Fetch through the host's queue, so a pulled file gets a row with its progress bar and Cancel
    while it downloads; the row goes when it ends (the outcome shows on the card)."""
    import time

    from lora_trainer.download import DownloadRequest
    from lora_trainer.share.pull import Fetched, engine_fetch

    mgr = manager(host)
    direct = engine_fetch(mgr.opts)

    def fetch(urls: list[str], name: str, sha256: str, folder: Any) -> Fetched:
        if not all(u.startswith(("http://", "https://")) for u in urls):
            return direct(urls, name, sha256, folder)  # a manifest on a server folder: plain copies
        item_id = mgr.add(DownloadRequest(list(urls), name, sha256), to=str(folder))
        while (row := item(host, item_id))["state"] not in FINAL_STATES:
            time.sleep(0.2)
        result = mgr.get(item_id).result or {}
        mgr.remove(item_id)  # also when it failed: the staging folder goes, so a row Retry would lead nowhere;
        if row["state"] != "done":  # the card's Update button is the retry
            raise UserError(row["error"] or f"download {row['state']}")
        from pathlib import Path

        return Fetched(Path(row["path"]), row["kind"] or "lora", str(result.get("url") or urls[0]))

    return fetch


def pull_team(host: Host, src: str, names: list[str] | None = None) -> Any:
    """Pull entries of a manifest into the host's model folders, through the host's queue."""
    import dataclasses

    from lora_trainer.share.pull import pull

    host.check_download()
    if "://" not in src:
        src = host.check_server_path(src, "manifest file")
    opts = dataclasses.replace(manager(host).opts)
    report = pull(src, _models_root(host), opts, names=names, fetch=_queue_fetch(host))
    landed = getattr(host, "file_landed", None)
    for o in report.outcomes:
        if o.status in ("installed", "updated") and landed is not None:
            landed(o.path, "lora")
    return report
