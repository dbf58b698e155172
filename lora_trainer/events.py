"""Events: the one channel through which long jobs (training, downloads, captioning) report.

The CLI renders them as progress bars, the UI as plots and tables, the API as JSON, TensorBoard
as scalars. Producers never print; they call `emit(Event(...))`.

Event types (`Event.type`) and their `data` keys:
- "status":     message                                  (a phase started: "caching latents")
- "plan":       the dry-run plan dict                     (before the model loads)
- "progress":   step, total_steps, epoch, total_epochs, loss, avg_loss, lr, it_per_s, eta_s
                 (downloads: id, name, done_bytes, total_bytes, speed_bps, eta_s)
- "log":        level ("info"|"warning"|"error"), message
- "sample":     step, paths (list of image files), prompts
- "checkpoint": step, path, kind ("lora"|"state")
- "done":       output (path), plus job-specific keys (gain, sha256, ...)
- "stopped":    message, state_path (resumable state written on stop)
- "error":      message, field (optional)
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

EventSink = Callable[["Event"], None]


@dataclass
class Event:
    type: str
    data: dict[str, Any] = field(default_factory=dict)
    time: float = field(default_factory=time.time)
    job: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class Emitter:
    """Fans one event out to several sinks; a failing sink never breaks the job."""

    def __init__(self, sinks: Iterable[EventSink] = (), job: str = ""):
        self._sinks = list(sinks)
        self.job = job

    def add(self, sink: EventSink) -> None:
        self._sinks.append(sink)

    def __call__(self, event: Event) -> None:
        if not event.job:
            event.job = self.job
        for sink in list(self._sinks):
            try:  # noqa: SIM105
                sink(event)
            except Exception:  # noqa: BLE001 - a broken renderer must not stop training
                pass

    def emit(self, type_: str, **data: Any) -> None:
        self(Event(type_, data))


def null_sink(event: Event) -> None:  # noqa: ARG001
    """Sink that drops everything (library use without a UI)."""


class StopFlag:
    """Cooperative stop request shared by a job and whoever may stop it (UI, API, Ctrl-C)."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason = ""

    def request(self, reason: str = "stop requested") -> None:
        self.reason = reason
        self._event.set()

    @property
    def requested(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float) -> bool:
        return self._event.wait(timeout)
