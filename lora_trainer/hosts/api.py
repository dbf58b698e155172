"""HTTP API under /lora-trainer/v1/ (FastAPI, the app the WebUI or the standalone app serves).

Routes (JSON in, JSON out; errors: 400 bad input, 403 refused by the access rule, 404 unknown job):
  GET  /lora-trainer/v1/info                      host, access rule, folders, loaded model
  POST /lora-trainer/v1/train                     {"config": {...} | "yaml text" | "file.yaml", "overrides": [..]}
  GET  /lora-trainer/v1/train                     all training jobs
  GET  /lora-trainer/v1/train/{id}?since=N        state, progress, result, events after cursor N
  POST /lora-trainer/v1/train/{id}/stop           stop (saves what it has)
  POST /lora-trainer/v1/downloads                 {"links": "name | url | sha256\\n...", "kind": "lora"|..., "folder": ...}
  GET  /lora-trainer/v1/downloads                 all download jobs
  GET  /lora-trainer/v1/downloads/{id}?since=N    state, progress, events
  POST /lora-trainer/v1/downloads/{id}/cancel
Handlers parse JSON themselves (no pydantic models) so they run on A1111's fastapi 0.94/pydantic 1
and on current fastapi/pydantic 2 alike.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from fastapi import Request  # only this module (imported when routes are added) needs fastapi
from fastapi.responses import JSONResponse

from lora_trainer.errors import UserError
from lora_trainer.jobs import Job, JobRegistry
from lora_trainer.jobs import registry as default_registry

if TYPE_CHECKING:
    from lora_trainer.hosts.base import Host

PREFIX = "/lora-trainer/v1"
STARTUP_TIMINGS: dict[str, float] = {}  # seconds the WebUI spent in our registration (shown by /info)


def _jsonable(value: Any) -> Any:
    """Events and results as plain JSON (dataclasses, paths, tensors' floats)."""
    import dataclasses

    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {k: _jsonable(v) for k, v in dataclasses.asdict(value).items()}
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


def job_view(job: Job, since: int = 0) -> dict[str, Any]:
    events, cursor = job.events_since(since)
    view = job.summary()
    view.update(events=[_jsonable(e.to_json()) for e in events], cursor=cursor,
                result=_jsonable(job.result) if job.result is not None else None)
    return view


class Api:
    """Route handlers bound to one host; plain methods so tests can call them without HTTP."""

    def __init__(self, host: Host, jobs: JobRegistry = default_registry):
        self.host, self.jobs = host, jobs

    def info(self) -> dict[str, Any]:
        from lora_trainer import __version__

        model = None
        try:
            sd_model = getattr(getattr(self.host, "services", None), "sd_model", None)
            info = getattr(sd_model, "sd_checkpoint_info", None)
            # (Forge holds a placeholder until its first generation: the host names the checkpoint it will load)
            model = getattr(info, "name_for_extra", None) or (self.host.loaded_model_name() if sd_model else None)
        except Exception:  # noqa: BLE001 - info must always answer
            pass
        restricted = self.host.restricted
        return {"version": __version__, "host": self.host.name, "restricted": restricted,
                "restriction": self.host.restriction_reason() if restricted else "",
                "lora_dir": None if restricted else self.host.lora_dir(), "model": model,
                "startup_s": dict(STARTUP_TIMINGS)}

    def start_train(self, body: dict[str, Any]) -> dict[str, Any]:
        from lora_trainer.hosts.runs import start_training

        if "config" not in body:
            raise UserError("request: send {\"config\": {...}} (a mapping, YAML text or a .yaml path)")
        overrides = body.get("overrides") or []
        if not isinstance(overrides, list):
            raise UserError("request 'overrides': must be a list of \"key=value\" strings")
        job = start_training(self.host, body["config"], [str(o) for o in overrides], jobs=self.jobs)
        return job_view(job)

    def start_downloads(self, body: dict[str, Any]) -> dict[str, Any]:
        from lora_trainer.hosts import downloads

        return {"jobs": downloads.start_downloads(self.host, body)}

    def download(self, item_id: str, since: int = 0) -> dict[str, Any]:  # noqa: ARG002 - same shape as get()
        from lora_trainer.hosts import downloads

        return downloads.item(self.host, item_id)

    def downloads(self) -> dict[str, Any]:
        from lora_trainer.hosts import downloads

        return {"jobs": downloads.items(self.host)}

    def cancel_download(self, item_id: str) -> dict[str, Any]:
        from lora_trainer.hosts import downloads

        return downloads.cancel(self.host, item_id)

    def get(self, kind: str, job_id: str, since: int = 0) -> dict[str, Any]:
        job = self.jobs.get(job_id)
        if job is None or job.kind != kind:
            raise KeyError(job_id)
        return job_view(job, since)

    def list(self, kind: str) -> dict[str, Any]:
        return {"jobs": [j.summary() for j in self.jobs.list(kind)]}

    def stop(self, kind: str, job_id: str) -> dict[str, Any]:
        job = self.jobs.get(job_id)
        if job is None or job.kind != kind:
            raise KeyError(job_id)
        job.stop("stopped through the API")
        return job.summary()


def register(app: Any, host: Host, jobs: JobRegistry = default_registry) -> Api:
    """Add the routes to a FastAPI app (the WebUI's, given by on_app_started, or the standalone one)."""
    from lora_trainer.hosts.base import AccessDenied

    api = Api(host, jobs)

    def call(fn: Any, *args: Any) -> JSONResponse:
        try:
            return JSONResponse(fn(*args))
        except AccessDenied as exc:
            return JSONResponse({"error": str(exc)}, status_code=403)
        except UserError as exc:
            return JSONResponse({"error": str(exc), "field": getattr(exc, "field", None)}, status_code=400)
        except KeyError as exc:
            return JSONResponse({"error": f"no such job: {exc.args[0]}"}, status_code=404)

    async def body_of(request: Request) -> dict[str, Any]:
        raw = await request.body()
        try:
            data = json.loads(raw or b"{}")
        except ValueError as exc:
            raise UserError(f"request body is not JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise UserError("request body must be a JSON object")
        return data

    async def info() -> JSONResponse:
        return call(api.info)

    async def start_train(request: Request) -> JSONResponse:
        try:
            body = await body_of(request)
        except UserError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return call(api.start_train, body)

    async def start_downloads(request: Request) -> JSONResponse:
        try:
            body = await body_of(request)
        except UserError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return call(api.start_downloads, body)

    def lister(kind: str) -> Any:
        async def handler() -> JSONResponse:
            return call(api.list, kind)
        return handler

    def getter(kind: str) -> Any:
        async def handler(job_id: str, since: int = 0) -> JSONResponse:
            return call(api.get, kind, job_id, since)
        return handler

    def stopper(kind: str) -> Any:
        async def handler(job_id: str) -> JSONResponse:
            return call(api.stop, kind, job_id)
        return handler

    app.add_api_route(f"{PREFIX}/info", info, methods=["GET"])
    app.add_api_route(f"{PREFIX}/train", start_train, methods=["POST"])
    app.add_api_route(f"{PREFIX}/train", lister("train"), methods=["GET"])
    app.add_api_route(f"{PREFIX}/train/{{job_id}}", getter("train"), methods=["GET"])
    app.add_api_route(f"{PREFIX}/train/{{job_id}}/stop", stopper("train"), methods=["POST"])
    app.add_api_route(f"{PREFIX}/downloads", start_downloads, methods=["POST"])
    async def list_downloads() -> JSONResponse:
        return call(api.downloads)

    async def get_download(job_id: str, since: int = 0) -> JSONResponse:
        return call(api.download, job_id, since)

    async def cancel_download(job_id: str) -> JSONResponse:
        return call(api.cancel_download, job_id)

    app.add_api_route(f"{PREFIX}/downloads", list_downloads, methods=["GET"])
    app.add_api_route(f"{PREFIX}/downloads/{{job_id}}", get_download, methods=["GET"])
    app.add_api_route(f"{PREFIX}/downloads/{{job_id}}/cancel", cancel_download, methods=["POST"])
    return api
