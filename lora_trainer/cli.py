"""Command line: one sub-command per module in `lora_trainer.commands`.

Each command module exposes `register(subparsers)` (adds its parser, sets `func`) and keeps its
heavy imports inside the function it runs, so `--help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# module name inside lora_trainer.commands, in the order shown by --help
COMMANDS = ("train", "demo", "caption", "auto_label", "download", "publish", "pull", "info", "app", "generate")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """All commands, or only `only` (the one being run: the others' modules are not imported)."""
    parser = argparse.ArgumentParser(
        prog="lora-trainer",
        description="Train kohya-format LoRAs (SD1/SD2/SDXL, LLMs) and download models.",
    )
    from lora_trainer import __version__

    parser.add_argument("--version", action="version", version=f"lora-trainer {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS if only is None else (only,):
        try:
            module = importlib.import_module(f"lora_trainer.commands.{name}")
        except ModuleNotFoundError as exc:  # a command not built yet
            if exc.name == f"lora_trainer.commands.{name}":
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # a command's name comes first: build only that command's parser, so running one command does not
    # import the others' modules (a download starts without the captioning and training imports)
    parser = build_parser(argv[0] if argv and argv[0] in COMMANDS else None)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
