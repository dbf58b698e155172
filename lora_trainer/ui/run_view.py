"""What the Trainer tab shows about one run, folded from the job's events (no gradio here)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from lora_trainer.events import Event


def _eta(seconds: float | None) -> str:
    if seconds is None or seconds != seconds or seconds < 0:
        return "–"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


@dataclass
class RunView:
    steps: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    samples: list[tuple[str, str]] = field(default_factory=list)  # (path, caption)
    log: list[str] = field(default_factory=list)
    progress: dict[str, Any] = field(default_factory=dict)
    phase: str = "starting"
    output: str = ""
    error: str = ""
    stopped: str = ""

    def feed(self, events: list[Event]) -> None:
        for ev in events:
            d = ev.data
            if ev.type == "progress":
                self.progress = d
                if d.get("loss") is not None and d.get("step") is not None:
                    self.steps.append(int(d["step"]))
                    self.losses.append(float(d["loss"]))
                self.phase = "training"
            elif ev.type == "status":
                self.phase = str(d.get("message", ""))
                self.log.append(self.phase)
            elif ev.type == "plan":
                self.log.append("plan: " + ", ".join(f"{k}={v}" for k, v in d.items()
                                                      if v is not None and not isinstance(v, (dict, list))))
            elif ev.type == "log":
                self.log.append(f"[{d.get('level', 'info')}] {d.get('message', '')}")
            elif ev.type == "sample":
                prompts = d.get("prompts") or []
                for i, path in enumerate(d.get("paths") or []):
                    caption = f"step {d.get('step')}: {prompts[i] if i < len(prompts) else ''}"
                    self.samples.append((path, caption))
            elif ev.type == "checkpoint":
                self.log.append(f"saved {d.get('kind', '')} {d.get('path', '')}")
            elif ev.type == "done":
                self.output = self.output or str(d.get("output") or "")
                self.phase = "done"
            elif ev.type == "published":  # the final file copied into the host's Lora folder
                self.output = str(d.get("path") or self.output)
                self.log.append(f"published {self.output}")
            elif ev.type == "stopped":
                self.stopped = str(d.get("message") or "stopped")
                self.phase = "stopped"
                if d.get("state_path"):
                    self.log.append(f"resumable state: {d['state_path']}")
            elif ev.type == "error":
                self.error = str(d.get("message", "error"))
                self.phase = "failed"
                self.log.append(f"[error] {self.error}")
        del self.log[:-300]

    def status_markdown(self) -> str:
        p = self.progress
        if self.error:
            return f"**Failed:** {self.error}"
        if self.phase == "done":
            return f"**Done.** {len(self.steps) and self.steps[-1]} steps."
        if self.stopped:
            return f"**Stopped:** {self.stopped}"
        if not p:
            return f"**{self.phase or 'starting'}…**"
        loss = p.get("loss")
        avg = p.get("avg_loss")
        lr = p.get("lr")
        parts = [f"step **{p.get('step')}/{p.get('total_steps')}**",
                 f"epoch {p.get('epoch')}/{p.get('total_epochs')}",
                 f"loss {loss:.4f}" if isinstance(loss, (int, float)) else "",
                 f"avg {avg:.4f}" if isinstance(avg, (int, float)) else "",
                 f"lr {lr:.2e}" if isinstance(lr, (int, float)) else "",
                 f"{p.get('it_per_s', 0):.2f} it/s" if isinstance(p.get("it_per_s"), (int, float)) else "",
                 f"ETA {_eta(p.get('eta_s'))}"]
        return " · ".join(x for x in parts if x)

    def result_name(self) -> str:
        if not self.output:
            return ""
        base = os.path.basename(self.output)
        return base[: -len(".safetensors")] if base.endswith(".safetensors") else os.path.splitext(base)[0]
