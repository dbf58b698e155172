"""`python -m lora_trainer auto_label --input DIR --output DIR/metadata.csv` (the lora-scripts form).

Same engine as `caption`; writes the CSV given by --output (and .txt files too with --format both).
"""

from __future__ import annotations

import argparse
from typing import Any

from lora_trainer.commands.caption import add_captioner_args, caption_folder


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "auto_label", help="caption a folder into metadata.csv (lora-scripts form of `caption`)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--input", required=True, help="image folder")
    parser.add_argument("--output", default=None, help="metadata.csv to write (default: INPUT/metadata.csv)")
    parser.add_argument("--format", choices=("csv", "both"), default="csv")
    add_captioner_args(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    return caption_folder(args, args.input, args.format, args.output)
