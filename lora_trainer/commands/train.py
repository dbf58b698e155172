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

from lora_trainer.train.console import CliRenderer, format_plan

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
            from lora_trainer.tasks import train

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
        from lora_trainer.tasks import usage_hint

        print(usage_hint(cfg, out), file=sys.stderr)
    return 0


def _dry_run(cfg: TrainConfig, renderer: CliRenderer) -> int:
    for note in cfg.notes:
        print(f"note: {note}", file=sys.stderr)
    from lora_trainer.tasks import plan as make_plan

    plan, skipped = make_plan(cfg)
    if skipped:
        print(f"warning: {len(skipped)} file(s) will be skipped: "
              + "; ".join(f"{p}: {r}" for p, r in skipped[:10]), file=sys.stderr)
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
