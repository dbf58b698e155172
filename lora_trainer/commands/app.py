"""`lora-trainer app`: the Trainer and Downloader tabs as a standalone web app."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("app", help="start the standalone web app (same tabs as in the WebUI)")
    p.add_argument("--root", default=".", help="folder holding models/Lora etc. (default: current folder)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=7870)
    p.add_argument("--share", action="store_true", help="not recommended: exposes the app publicly")
    p.add_argument("--allow-remote-paths", action="store_true",
                   help="let remote browsers read server folders and start downloads when listening beyond localhost")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lora_trainer.hosts.standalone import StandaloneHost
    from lora_trainer.ui.tabs import build_app, launch_kwargs

    host = StandaloneHost(root=args.root, listen=args.host, allow_remote=args.allow_remote_paths)
    app = build_app(host)
    app.queue()
    app.launch(server_name=args.host, server_port=args.port, share=args.share, **launch_kwargs())
    return 0
