"""`lora-trainer demo`: the built-in tiny-model demo (same as `make demo` / `python -m lora_trainer.demo`)."""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: Any) -> None:
    from lora_trainer.demo import DEMO_STEPS

    p = subparsers.add_parser("demo", help="train a demo LoRA on the built-in tiny model (CPU, ~2 min)",
                              description="Writes a synthetic dataset and config into ./output/demo, trains a LoRA "
                                          "on the built-in tiny SD1 model (or FLUX.1 with --model flux) and prints an honest "
                                          "quality measurement.")
    p.add_argument("--output", default="output/demo", help="demo folder (default ./output/demo)")
    p.add_argument("--steps", type=int, default=DEMO_STEPS, help="training steps")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (fixed for repeatable numbers)")
    p.add_argument("--model", choices=("sd1", "flux"), default="sd1",
                   help="the built-in tiny model to train: sd1 (default) or flux (FLUX.1-dev layout)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lora_trainer.demo import main

    return main(["--output", args.output, "--steps", str(args.steps), "--threads", str(args.threads),
                 "--model", args.model])
