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


def _size(path: str) -> str:
    try:
        n = os.path.getsize(path)
    except OSError:
        return ""
    return f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.0f} KB"


@dataclass
class Cadence:
    """When samples come (from the run's config): every N steps and/or every N epochs; 0 = off."""

    steps: int = 0
    epochs: int = 0

    def next_sample(self, step: int, epoch: int) -> str:
        parts = []
        if self.steps:
            parts.append(f"step {(step // self.steps + 1) * self.steps}")
        if self.epochs:
            parts.append(f"the end of epoch {(max(epoch - 1, 0) // self.epochs + 1) * self.epochs}")
        return " or ".join(parts)


@dataclass
class RunView:
    name: str = ""
    loaded_model: str = ""  # inside the WebUI: the checkpoint being trained
    cadence: Cadence | None = None
    started: float | None = None
    ended: float | None = None
    final_loss: float | None = None
    plan: dict[str, Any] = field(default_factory=dict)
    earlier: tuple[list[int], list[float]] | None = None  # loss curve of the run before a resume
    steps: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    val: list[tuple[int, float]] = field(default_factory=list)  # (step, held-out loss) where validation ran
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
            self.started = self.started or ev.time
            if ev.type in ("done", "stopped", "error"):
                self.ended = ev.time
            if ev.type == "progress":
                self.progress = d
                if d.get("loss") is not None and d.get("step") is not None:
                    self.steps.append(int(d["step"]))
                    self.losses.append(float(d["loss"]))
                if d.get("val_loss") is not None and d.get("step") is not None:
                    self.val.append((int(d["step"]), float(d["val_loss"])))
                self.phase = "training"
            elif ev.type == "status":
                self.phase = str(d.get("message", ""))
                self.log.append(self.phase)
            elif ev.type == "plan":
                self.plan = dict(d)
                self.log.append(f"plan: {d.get('total_steps')} steps, {d.get('epochs')} epochs")
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
                if isinstance(d.get("final_loss"), (int, float)):
                    self.final_loss = float(d["final_loss"])
            elif ev.type == "published":  # the final file copied into the host's Lora folder
                self.output = str(d.get("path") or self.output)
                self.log.append(f"published {self.output}")
            elif ev.type == "stopped":
                self.stopped = str(d.get("message") or "stopped").split("; resume with")[0]
                self.phase = "stopped"
                if d.get("state_path"):
                    self.log.append(f"resumable state: {d['state_path']}")
            elif ev.type == "error":
                self.error = str(d.get("message", "error"))
                self.phase = "failed"
                self.log.append(f"[error] {self.error}")
        del self.log[:-300]

    @property
    def last_loss(self) -> float | None:
        return self.final_loss if self.final_loss is not None else (self.losses[-1] if self.losses else None)

    def elapsed(self) -> str:
        if self.started is None:
            return "–"
        import time

        return _eta((self.ended or time.time()) - self.started)

    def status_markdown(self) -> str:
        p = self.progress
        if self.error:
            return f"**Failed:** {self.error}"
        if self.phase in ("done", "stopped") or self.stopped:
            return self.end_markdown()
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
        line = " · ".join(x for x in parts if x)
        if self.name:
            line = f"Training **{self.name}**: " + line
        nxt = self.cadence.next_sample(int(p.get("step") or 0), int(p.get("epoch") or 0)) if self.cadence else ""
        return line + (f"  \nNext sample at {nxt}." if nxt else "")

    def end_markdown(self) -> str:
        """Done / Stopped: final loss, time, file and size in one line."""
        head = "**Done.**" if self.phase == "done" and not self.stopped else f"**Stopped:** {self.stopped}."
        steps = self.steps[-1] if self.steps else self.progress.get("step")
        parts = [f"{steps} steps" if steps else "", f"final loss {self.last_loss:.4f}" if self.last_loss is not None
                 else "", f"time {self.elapsed()}"]
        if self.output:
            parts.append(f"`{os.path.basename(self.output)}` ({_size(self.output)})")
        return head + " " + " · ".join(x for x in parts if x)

    def plan_markdown(self) -> str:
        """The run's plan as a small table (empty until the plan event)."""
        p = self.plan
        if not p:
            return ""
        model = (f"{self.loaded_model} (loaded in the WebUI)" if self.loaded_model
                 else f"{p['arch']} ({p.get('arch_source') or 'detected'})" if p.get("arch")
                 else "architecture read when the model loads")
        buckets = p.get("buckets") or {}
        rows = [("Images", f"{p.get('images')} ({p.get('samples_per_epoch')} per epoch with repeats)"),
                ("Buckets", ", ".join(f"{k}: {v}" for k, v in list(buckets.items())[:6]) or "–"),
                ("Batch", f"{p.get('batch_size')} × {p.get('gradient_accumulation_steps')} accumulation"),
                ("Steps", f"{p.get('total_steps')} ({p.get('steps_per_epoch')} per epoch × {p.get('epochs')} epochs)"),
                ("Model", model)]
        if p.get("trainable_params"):
            rows.append(("LoRA", f"{p['trainable_params']:,} parameters"
                         + (f", ~{p['lora_file_mb']:.1f} MB file" if p.get("lora_file_mb") else "")))
        if p.get("memory_gib"):
            rows.append(("Memory", f"~{p['memory_gib']:.1f} GiB"))
        if p.get("skipped"):
            rows.append(("Skipped", f"{p['skipped']} file(s), see the log"))
        return "| Plan | |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)

    def curve(self) -> tuple[list[int], list[float], int | None]:
        """Steps and losses of the whole run (earlier parts first) and the step it was resumed at."""
        if self.earlier and self.earlier[0]:
            return self.earlier[0] + self.steps, self.earlier[1] + self.losses, self.steps[0] if self.steps else None
        return self.steps, self.losses, None

    def result_name(self) -> str:
        if not self.output:
            return ""
        base = os.path.basename(self.output)
        return base[: -len(".safetensors")] if base.endswith(".safetensors") else os.path.splitext(base)[0]
