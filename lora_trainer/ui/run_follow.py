"""Following one training job on one page: its events folded into what the Trainer tab shows, and
the saved states a stopped run can be resumed from. Shared by Train, Resume, Stop and page load."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from lora_trainer.ui.compat import update
from lora_trainer.ui.plot import loss_plot
from lora_trainer.ui.run_view import RunView

if TYPE_CHECKING:
    from lora_trainer.hosts.base import Host

POLL_S = 1.0


def state_choices(host: Host) -> dict[str, str]:
    """Resumable states as shown in the Resume list ("run · step N · date") -> state folder."""
    from lora_trainer.hosts.runs import resumable_states

    return {f"{s['run']} · step {s['step']} · {time.strftime('%Y-%m-%d %H:%M', time.localtime(s['mtime']))}":
            s["path"] for s in resumable_states(host)}


def resume_config(state_path: str) -> dict[str, Any]:
    """The stopped run's own settings (saved in its state) plus `resume_from_checkpoint`: Resume
    continues exactly that run, whatever the form shows now."""
    import json

    from lora_trainer.errors import ConfigError

    try:
        with open(os.path.join(state_path, "trainer_state.json"), encoding="utf-8") as fh:
            saved = json.load(fh).get("config") or {}
    except (OSError, ValueError) as exc:
        raise ConfigError("resume_from_checkpoint", f"cannot read the saved state {state_path}: {exc}") from exc
    config = {k: v for k, v in saved.items() if v is not None}
    config["resume_from_checkpoint"] = state_path
    return config


class Following:
    """What one page shows about one training job, re-rendered from the job's events."""

    def __init__(self, job: Any, host: Host):
        from lora_trainer.ui.run_view import Cadence

        cfg = job.config
        self.job, self.cursor = job, 0
        self.view = RunView(name=cfg.output_name or "", loaded_model=host.loaded_model_name(),
                            cadence=Cadence(cfg.sample_every_n_steps, cfg.sample_every_n_epochs)
                            if cfg.sample_prompts else None)
        self.resumed = bool(cfg.resume_from_checkpoint)

    def poll(self) -> tuple[Any, ...]:
        from lora_trainer.hosts.runs import loss_history

        events, self.cursor = self.job.events_since(self.cursor)
        self.view.feed(events)
        if self.resumed and self.view.earlier is None and self.view.steps:
            self.view.earlier = loss_history(self.job.config.output_dir, self.view.steps[0])
        return self.render()

    def render(self) -> tuple[Any, ...]:
        v = self.view
        steps, losses, resumed_at = v.curve()
        card, prompt = self.card()
        return (v.status_markdown(), v.plan_markdown(), loss_plot(steps, losses, resumed_at, v.val), v.samples[-12:],
                update(visible=bool(card)), card, prompt, "\n".join(v.log[-80:]))

    def card(self) -> tuple[str, str]:
        v, cfg = self.view, self.job.config
        if self.job.alive or not v.output or v.error or not os.path.isfile(v.output):
            return "", ""
        name = v.result_name()
        prompt = f"<lora:{name}:{cfg.preferred_weight}>"
        trig = cfg.trigger_word
        what = ("is ready in" if not v.stopped else "(stopped early; Resume continues the run and replaces it) is in")
        card = (f"**{name}** {what} `{os.path.dirname(v.output)}`.  \n"
                f"Trigger word: `{trig or '(none)'}` · {v.end_markdown().split(' ', 1)[1]}")
        return card, f"{trig}, {prompt}" if trig else prompt

    def follow(self) -> Iterator[tuple[Any, ...]]:
        """Yield the view until the job ends (one last yield after)."""
        while True:
            alive = self.job.alive
            yield self.poll()
            if not alive:
                return
            time.sleep(POLL_S)
