"""Jobs: a long task run in a thread, with its event history kept for pollers (UI, HTTP API).

A job's target is `fn(emit: Emitter, stop: StopFlag) -> Any`. The UI and the API start jobs and
read `events_since(cursor)`; they hold no training or download logic themselves.
"""

from __future__ import annotations

import itertools
import threading
import traceback
from collections.abc import Callable
from typing import Any

from lora_trainer.errors import UserError
from lora_trainer.events import Emitter, Event, EventSink, StopFlag

_ids = itertools.count(1)

QUEUED, RUNNING, DONE, FAILED, STOPPED = "queued", "running", "done", "failed", "stopped"


class Job:
    def __init__(self, kind: str, target: Callable[[Emitter, StopFlag], Any], *,
                 title: str = "", sinks: tuple[EventSink, ...] = (), max_events: int = 10000):
        self.id = f"{kind}-{next(_ids)}"
        self.kind = kind
        self.title = title or self.id
        self.state = QUEUED
        self.result: Any = None
        self.error: str = ""
        self.stop_flag = StopFlag()
        self._target = target
        self._events: list[Event] = []
        self._dropped = 0
        self._max_events = max_events
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.emitter = Emitter([self._record, *sinks], job=self.id)

    def _record(self, event: Event) -> None:
        with self._lock:
            self._events.append(event)
            # keep memory bounded for long runs: drop the oldest progress events first
            if len(self._events) > self._max_events:
                for i, old in enumerate(self._events):
                    if old.type == "progress":
                        del self._events[i]
                        self._dropped += 1
                        break

    def start(self) -> Job:
        self._thread = threading.Thread(target=self._run, name=self.id, daemon=True)
        self._thread.start()
        return self

    def run_here(self) -> Any:
        """Run in the calling thread (CLI)."""
        self._run()
        return self.result

    def _run(self) -> None:
        self.state = RUNNING
        try:
            self.result = self._target(self.emitter, self.stop_flag)
            self.state = STOPPED if self.stop_flag.requested else DONE
        except UserError as exc:
            self.state, self.error = FAILED, str(exc)
            self.emitter.emit("error", message=str(exc), field=getattr(exc, "field", None))
        except Exception as exc:  # noqa: BLE001 - reported to the user, with the traceback in the log
            self.state, self.error = FAILED, f"{type(exc).__name__}: {exc}"
            self.emitter.emit("log", level="error", message=traceback.format_exc())
            self.emitter.emit("error", message=self.error)

    def stop(self, reason: str = "stop requested") -> None:
        self.stop_flag.request(reason)

    def join(self, timeout: float | None = None) -> None:
        if self._thread:
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self.state in (QUEUED, RUNNING)

    def events_since(self, cursor: int = 0) -> tuple[list[Event], int]:
        """Events after `cursor` (a count of events seen) and the new cursor."""
        with self._lock:
            start = max(0, cursor - self._dropped)
            return list(self._events[start:]), len(self._events) + self._dropped

    def last(self, type_: str) -> Event | None:
        with self._lock:
            for event in reversed(self._events):
                if event.type == type_:
                    return event
        return None

    def summary(self) -> dict[str, Any]:
        progress = self.last("progress")
        return {"id": self.id, "kind": self.kind, "title": self.title, "state": self.state,
                "error": self.error, "progress": progress.data if progress else None}


class JobRegistry:
    """The jobs of one process (the WebUI or the app), by id."""

    def __init__(self) -> None:
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()

    def add(self, job: Job) -> Job:
        with self._lock:
            self._jobs[job.id] = job
        return job

    def get(self, job_id: str) -> Job | None:
        return self._jobs.get(job_id)

    def list(self, kind: str | None = None) -> list[Job]:
        return [j for j in self._jobs.values() if kind is None or j.kind == kind]


registry = JobRegistry()
