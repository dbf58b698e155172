"""A training run with its events recorded, optionally stopped at a step (as the Stop button does)."""

from __future__ import annotations

from typing import Any


def recorded_train(cfg: Any, *, adapter: Any = None, stop_at: int | None = None) -> tuple[Any, list]:
    """(result, events) of `train(cfg)`; `stop_at`: a stop is requested when that step's progress arrives."""
    from lora_trainer.events import Emitter, StopFlag
    from lora_trainer.train.image import train

    events: list = []
    stop = StopFlag()

    def sink(event: Any) -> None:
        events.append(event)
        if stop_at and event.type == "progress" and event.data["step"] == stop_at:
            stop.request("test stop")

    return train(cfg, adapter=adapter, emit=Emitter([sink]), stop=stop), events
