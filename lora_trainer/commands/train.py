"""`lora-trainer train --config my.yaml [--set k=v ...] [--dry-run] [--resume PATH|latest]`.

Renders the training events as a tqdm progress bar and one-line messages. The first Ctrl-C asks the
run to stop at the next step boundary (it saves a resumable state); a second one aborts at once.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lora_trainer.config import TrainConfig


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("train", help="train a LoRA from a YAML config",
                              description="Train a kohya-format LoRA (SD1/SD2/SDXL, or an LLM with "
                                          "task_type: text-generation) from a YAML config.")
    p.add_argument("--config", "-c", required=True, help="YAML config file (flat or nested sections)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key (repeatable), e.g. --set learning_rate=5e-5")
    p.add_argument("--dry-run", action="store_true",
                   help="check config and dataset and print the plan without loading the model")
    p.add_argument("--resume", metavar="PATH|latest", help="continue from a saved state folder (or 'latest')")
    p.add_argument("--json", action="store_true", help="print events as JSON lines instead of a progress bar")
    p.set_defaults(func=run)


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
        self.bar.set_postfix(post, refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _load(args: argparse.Namespace) -> TrainConfig:
    from lora_trainer.config import load_config

    overrides = list(args.overrides or [])
    if args.resume:
        overrides.append(f"resume_from_checkpoint={args.resume}")
    return load_config(args.config, overrides)


def run(args: argparse.Namespace) -> int:
    from lora_trainer.errors import UserError
    from lora_trainer.events import Emitter, StopFlag

    renderer = CliRenderer(json_lines=getattr(args, "json", False))
    try:
        cfg = _load(args)
        if args.dry_run:
            return _dry_run(cfg, renderer)
        stop = StopFlag()
        previous = _install_sigint(stop, renderer)
        try:
            if cfg.task_type == "text-generation":
                from lora_trainer.llm import train_llm

                result = train_llm(cfg, emit=Emitter([renderer]), stop=stop)
            else:
                from lora_trainer.train.loop import train

                result = train(cfg, emit=Emitter([renderer]), stop=stop)
        finally:
            signal.signal(signal.SIGINT, previous)
            renderer.close()
    except UserError as exc:
        renderer.close()
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    if getattr(result, "stopped", False):
        return 130 if stop.reason == "Ctrl-C" else 0
    out = getattr(result, "output_path", None)
    if out and int(os.environ.get("RANK", "0") or 0) == 0:
        if cfg.task_type == "text-generation":
            print(f"LoRA adapter written to {out}\nTry it: python -m lora_trainer generate --base {cfg.base_model} "
                  f"--adapter {out} \"your prompt\"", file=sys.stderr)
        else:
            name = os.path.splitext(os.path.basename(out))[0]
            print(f"LoRA written to {out}\nUse it in a prompt as <lora:{name}:0.8>", file=sys.stderr)
    return 0


def _dry_run(cfg: TrainConfig, renderer: CliRenderer) -> int:
    for note in cfg.notes:
        print(f"note: {note}", file=sys.stderr)
    if cfg.task_type == "text-generation":
        from lora_trainer import llm

        plan_fn = getattr(llm, "plan_llm", None)
        if plan_fn is None:
            print("dry run: config is valid (no plan for text-generation runs)", file=sys.stderr)
            return 0
        plan = plan_fn(cfg)
    else:
        from lora_trainer.train.loop import prepare_plan

        index, _, plan = prepare_plan(cfg)
        if index.skipped:
            print(f"warning: {len(index.skipped)} file(s) will be skipped: "
                  + "; ".join(f"{p}: {r}" for p, r in index.skipped[:10]), file=sys.stderr)
    if renderer.json_lines:
        print(json.dumps(plan if isinstance(plan, dict) else plan.to_dict(), default=str))
    else:
        print(format_plan(plan))
    return 0


def _install_sigint(stop: Any, renderer: CliRenderer) -> Any:
    """First Ctrl-C: stop cleanly with a resumable state. Second: abort now."""

    def handler(signum: int, frame: Any) -> None:  # noqa: ARG001
        if stop.requested:
            raise KeyboardInterrupt
        stop.request("Ctrl-C")
        renderer._write("stopping after this step (saving a resumable state); Ctrl-C again to abort")

    try:
        return signal.signal(signal.SIGINT, handler)
    except ValueError:  # not the main thread
        return signal.getsignal(signal.SIGINT)
