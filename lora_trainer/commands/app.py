"""`lora-trainer app`: the Trainer and Downloader tabs as a standalone web app, with the same HTTP API
as inside the WebUI (`/lora-trainer/v1/...`, see `hosts/api.py`)."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("app", help="start the standalone web app (same tabs and HTTP API as in the WebUI)")
    p.add_argument("--root", default=".", help="folder holding models/Lora etc. (default: current folder)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1; 0.0.0.0 = every network interface)")
    p.add_argument("--port", type=int, default=7870)
    p.add_argument("--share", action="store_true", help="not recommended: exposes the app through a public link")
    p.add_argument("--allow-remote-paths", action="store_true",
                   help="when listening beyond localhost or shared: still let browsers use any server path "
                        "(datasets, models, LoRAs, states, output folders) and start downloads")
    p.add_argument("--no-api", action="store_true", help="do not serve the HTTP API under /lora-trainer/v1/")
    p.set_defaults(func=run)


def make_host(args: argparse.Namespace) -> Any:
    """The app's host; its access rule follows --host / --share / --allow-remote-paths."""
    from lora_trainer.hosts.standalone import StandaloneHost

    return StandaloneHost(root=args.root, listen=args.host, allow_remote=args.allow_remote_paths, share=args.share)


def run(args: argparse.Namespace) -> int:
    from lora_trainer.ui.compat import enable_queue
    from lora_trainer.ui.tabs import build_app, launch_kwargs

    host = make_host(args)
    app = build_app(host)
    enable_queue(app)
    server = app.launch(server_name=args.host, server_port=args.port, share=args.share, prevent_thread_lock=True,
                        **launch_kwargs())[0]  # the FastAPI app, as the WebUI hands it to on_app_started
    if not args.no_api:
        from lora_trainer.hosts.api import register as add_routes

        add_routes(server, host)
    app.block_thread()
    return 0
