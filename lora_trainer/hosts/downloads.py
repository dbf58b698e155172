"""Download jobs on a host: links in, one job per file, files routed into the host's model folders."""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING, Any

from lora_trainer.errors import UserError
from lora_trainer.jobs import Job, JobRegistry
from lora_trainer.jobs import registry as default_registry

if TYPE_CHECKING:
    from lora_trainer.hosts.base import Host

_SHA = re.compile(r"^[0-9a-fA-F]{64}$")


def parse_links(text: str) -> list[dict[str, Any]]:
    """`name | url [mirror ...] | sha256` per line (name and sha256 optional, any order);
    blank lines and `#` comments are skipped."""
    items = []
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        urls: list[str] = []
        name = sha = None
        for field in (f.strip() for f in line.split("|")):
            if not field:
                continue
            if "://" in field:
                urls += [u for u in re.split(r"[\s,]+", field) if u]
            elif _SHA.match(field):
                sha = field.lower()
            elif name is None:
                name = field
            else:
                raise UserError(f"links line {lineno}: cannot tell what '{field}' is (expected name | url | sha256)")
        if not urls:
            raise UserError(f"links line {lineno}: no http(s) link in '{line}'")
        items.append({"urls": urls, "name": name, "sha256": sha})
    if not items:
        raise UserError("links: paste at least one link")
    return items


def download_options(host: Host, kind: str | None = None, folder: str | None = None) -> Any:
    """DownloadOptions with the host's folders and tokens; `kind`/`folder` force a destination."""
    from lora_trainer.download.options import DownloadOptions

    dirs = host.model_dirs()
    opts = DownloadOptions(root=os.path.dirname(dirs["lora"]), folders=dict(dirs),
                           civitai_token=host.setting("civitai_token"), hf_token=host.setting("hf_token"))
    proxy = host.setting("proxy")
    if proxy:
        opts.proxy = proxy
    if folder:
        folder = host.check_server_path(folder, "download folder")
        opts.root, opts.route = folder, False
    elif kind:
        if kind not in dirs:
            raise UserError(f"download 'kind': '{kind}' is not one of {', '.join(dirs)}")
        opts.root, opts.route = dirs[kind], False
    return opts


def start_downloads(host: Host, body: dict[str, Any], *, jobs: JobRegistry = default_registry) -> list[Job]:
    """One job per file from `{"links": text}` or `{"url"/"urls", "name", "sha256"}`; `kind` or
    `folder` choose the destination (default: routed by what the file turns out to be)."""
    host.check_download()
    from lora_trainer.download.fetch import DownloadRequest

    if body.get("links"):
        items = parse_links(str(body["links"]))
    elif body.get("url") or body.get("urls"):
        urls = body.get("urls") or [body["url"]]
        items = [{"urls": [str(u) for u in urls], "name": body.get("name"), "sha256": body.get("sha256")}]
    else:
        raise UserError("request: send {\"links\": \"name | url | sha256 ...\"} or {\"url\": ...}")
    opts = download_options(host, body.get("kind"), body.get("folder"))
    if body.get("connections"):
        try:
            opts.connections = max(1, min(32, int(body["connections"])))
        except (TypeError, ValueError) as exc:
            raise UserError(f"download 'connections': '{body['connections']}' is not a whole number") from exc
    reqs = [DownloadRequest(urls=i["urls"], name=i["name"], sha256=i["sha256"]) for i in items]
    for req in reqs:
        req.validate()  # bad links fail the request, before any job starts
    return [_start(host, req, opts, jobs) for req in reqs]


def _start(host: Host, req: Any, opts: Any, jobs: JobRegistry) -> Job:
    from lora_trainer.download.fetch import download

    def target(emit: Any, stop: Any) -> Any:
        result = download(req, opts, emit, stop, item_id=emit.job)
        for f in result.files:
            host.file_landed(f.path, f.kind)
        emit.emit("done", output=result.path, files=[f.path for f in result.files])
        return result.to_dict()

    job = Job("download", target, title=req.name or req.urls[0].split("?")[0].rsplit("/", 1)[-1])
    job.request, job.options = req, opts  # type: ignore[attr-defined]  (kept for retry)
    jobs.add(job)
    return job.start()


def retry_download(host: Host, job: Job, *, jobs: JobRegistry = default_registry) -> Job:
    """Start the same request again as a new job (a `.part` file left behind resumes)."""
    if job.alive:
        raise UserError(f"download {job.id} is still running")
    req, opts = getattr(job, "request", None), getattr(job, "options", None)
    if req is None or opts is None:
        raise UserError(f"{job.id} is not a download started here")
    host.check_download()
    return _start(host, req, opts, jobs)


_managers: dict[int, Any] = {}
_managers_lock = __import__("threading").Lock()


def manager(host: Host) -> Any:
    """The host's one download queue (persisted in its work dir, resumed on first use)."""
    from lora_trainer.download.manager import DownloadManager

    with _managers_lock:
        mgr = _managers.get(id(host))
        if mgr is None:
            mgr = _managers[id(host)] = DownloadManager.for_host(host).start()
        return mgr
