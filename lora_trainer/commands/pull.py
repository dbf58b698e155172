"""`lora-trainer pull MANIFEST [--to MODELS_DIR]`: fetch every LoRA whose wanted version is missing or
outdated, verified by SHA-256; a no-op when all are current.

Exit codes: 0 all current, 2 bad input, 3 a file failed its hash check (the old version is kept),
4 a link expired or needs a token, 5 network failure; with several failures, the first one's code.
"""

from __future__ import annotations

import argparse
import sys


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "pull", help="bring a models folder up to date with a team manifest (like git pull for LoRAs)",
        description="Fetch the latest (or pinned) version of every LoRA in a manifest into Lora/ under --to, "
                    "with its .json sidecar and preview. Superseded versions are kept as NAME.vN.safetensors "
                    "until --prune.")
    p.add_argument("manifest", metavar="MANIFEST_URL|FILE")
    p.add_argument("--to", default=".", help="models folder (LoRAs go to Lora/ under it; default: current folder)")
    p.add_argument("--lora-dir", default="Lora", help="LoRA folder under --to (default Lora)")
    p.add_argument("--only", action="append", default=[], metavar="NAME", help="pull only this LoRA (repeatable)")
    p.add_argument("--version", action="append", default=[], dest="pins", metavar="NAME=N",
                   help="pin a LoRA to version N (repeatable)")
    p.add_argument("--prune", action="store_true", help="delete superseded versions kept from earlier pulls")
    p.add_argument("--proxy", help="http://, socks5:// or socks5h:// proxy (default: environment)")
    p.add_argument("--ca-file", help="extra CA certificates (PEM) for https")
    p.add_argument("--connections", "-x", type=int, default=8, help="connections per file (default 8)")
    p.add_argument("--hf-token", help="HuggingFace token for private repos (default: env HF_TOKEN)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from lora_trainer.download import DownloadOptions
    from lora_trainer.errors import UserError
    from lora_trainer.share.pull import parse_pins, pull

    opts = DownloadOptions(root=Path(args.to), proxy=args.proxy, ca_file=args.ca_file,
                           connections=max(1, args.connections), hf_token=args.hf_token)
    opts.folders["lora"] = args.lora_dir
    from lora_trainer.commands.download import _Bars  # the download command's progress bars

    bars = _Bars(quiet=args.quiet)
    try:
        report = pull(args.manifest, args.to, opts, pins=parse_pins(args.pins), names=args.only or None,
                      prune=args.prune, emit=bars)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return getattr(exc, "exit_code", 2)
    finally:
        bars.close()
    for o in report.outcomes:
        print(o.line(), file=sys.stderr if o.status == "failed" else sys.stdout)
    if not report.downloaded and not report.exit_code:
        print("everything is current; nothing downloaded")
    return report.exit_code
