"""Training events on a terminal: a tqdm progress bar for steps, one line for everything else.

Shared by `lora-trainer train` and the demo (both print the same way).
"""

from __future__ import annotations

import json
import sys
from typing import Any


def format_plan(plan: Any) -> str:
    """The plan as the data area formats it (a Plan, or its to_dict())."""
    from lora_trainer.data import Plan
    from lora_trainer.data import format_plan as data_format_plan

    if isinstance(plan, dict):
        try:
            plan = Plan(**plan)
        except TypeError:  # a plan of another shape (e.g. an LLM run): show its keys
            return "\n".join(f"{k.replace('_', ' ')}: {v}" for k, v in plan.items())
    return data_format_plan(plan)


class CliRenderer:
    """Event sink for a terminal: a tqdm bar for progress, one line for everything else."""

    def __init__(self, stream: Any = None, json_lines: bool = False):
        self.stream = stream or sys.stderr
        self.json_lines = json_lines
        self.bar: Any = None
        self.val_loss: float | None = None  # the last validation loss, shown until the next one

    def _write(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def __call__(self, event: Any) -> None:
        if self.json_lines:
            print(json.dumps(event.to_json(), default=str), file=sys.stdout, flush=True)
            return
        d = event.data
        if event.type == "progress":
            self._progress(d)
        elif event.type == "plan":
            self._write(format_plan(d))
        elif event.type == "status":
            self._write(f"» {d.get('message', '')}")
        elif event.type == "log":
            level = d.get("level", "info")
            self._write(("" if level == "info" else f"{level}: ") + str(d.get("message", "")))
        elif event.type == "checkpoint":
            self._write(f"saved {d.get('kind')} {d.get('path')}")
        elif event.type == "sample":
            self._write(f"samples at step {d.get('step')}: {', '.join(map(str, d.get('paths', [])))}")
        elif event.type in ("done", "stopped", "error"):
            self.close()
            if event.type == "done":
                self._write(f"done: {d.get('output')}")
            elif event.type == "stopped":
                self._write(f"stopped: {d.get('message')} (state: {d.get('state_path')})")
            else:
                self._write(f"error: {d.get('message')}")

    def _progress(self, d: dict[str, Any]) -> None:
        total = d.get("total_steps")
        if self.bar is None:
            from tqdm import tqdm

            tty = hasattr(self.stream, "isatty") and self.stream.isatty()
            self.bar = tqdm(total=total, file=self.stream, unit="step", dynamic_ncols=True, initial=0,
                            mininterval=0.2 if tty else 5.0)
        if total and self.bar.total != total:
            self.bar.total = total
        step = int(d.get("step", 0))
        self.bar.update(step - self.bar.n)
        post = {"epoch": f"{d.get('epoch')}/{d.get('total_epochs')}", "loss": f"{d.get('avg_loss', 0):.4f}",
                "lr": f"{d.get('lr', 0):.2e}"}
        if d.get("val_loss") is not None:
            self.val_loss = float(d["val_loss"])
        if self.val_loss is not None:
            post["val"] = f"{self.val_loss:.4f}"
        self.bar.set_postfix(post, refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
