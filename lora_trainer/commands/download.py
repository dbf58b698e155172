"""`python -m lora_trainer download URL|LIST_FILE ...`: verified downloads with progress bars.

Exit codes: 0 all done, 2 bad input, 3 verification failed, 4 link expired / login or token
needed, 5 network/server failure (run again to resume), 6 disk space / size cap, 7 refused for
safety, 8 cancelled, 130 interrupted. With several files, the code of the first one that failed.
"""

from __future__ import annotations

import argparse
import sys
import threading
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "download", help="download models (parallel, resumable, verified, routed to model folders)",
        description="Download model files from direct links, Civitai or HuggingFace. A LIST_FILE holds one "
                    "file per line: `name | url [mirror-url ...] | sha256` (name and sha256 optional).",
        epilog="exit codes: 0 ok, 2 bad input, 3 verification failed, 4 link expired or token needed, "
               "5 network failure (run again to resume), 6 disk space/size cap, 7 refused for safety, "
               "8 cancelled, 130 interrupted")
    p.add_argument("sources", nargs="+", metavar="URL|LIST_FILE")
    p.add_argument("--to", default=".", help="models folder; files are routed into Lora/, Stable-diffusion/, "
                                             "VAE/, embeddings/ under it (default: current folder)")
    p.add_argument("--flat", action="store_true", help="put every file directly into --to (no routing)")
    for kind, flag, default in (("lora", "--lora-dir", "Lora"), ("checkpoint", "--ckpt-dir", "Stable-diffusion"),
                                ("vae", "--vae-dir", "VAE"), ("embedding", "--embeddings-dir", "embeddings")):
        p.add_argument(flag, dest=f"dir_{kind}", default=default, help=f"folder for {kind} files (default {default})")
    p.add_argument("--name", help="file name to use (single link)")
    p.add_argument("--connections", "-x", type=int, default=16, help="connections per file (default 16)")
    p.add_argument("--jobs", "-j", type=int, default=2, help="files downloaded at once (default 2)")
    p.add_argument("--sha256", help="expected SHA-256 (single file)")
    p.add_argument("--mirror", action="append", default=[], help="another link to the same file (repeatable)")
    p.add_argument("--header", action="append", default=[], metavar="'K: V'", help="extra request header")
    p.add_argument("--proxy", help="http://, socks5:// or socks5h:// proxy (default: environment)")
    p.add_argument("--ca-file", help="extra CA certificates (PEM) to trust for https")
    p.add_argument("--token", help="API token for Civitai / HuggingFace links")
    p.add_argument("--civitai-token", help="Civitai API token (default: env CIVITAI_TOKEN)")
    p.add_argument("--hf-token", help="HuggingFace token (default: env HF_TOKEN)")
    p.add_argument("--max-size", type=_size, help="refuse files larger than this (e.g. 8G, 500M)")
    p.add_argument("--allow-pickle", action="store_true",
                   help="put pickle files (told by their bytes) into the model folders; without it they are kept "
                        "as NAME.pickle in --to (never loaded by us either way)")
    p.add_argument("--no-unzip", action="store_true", help="keep zip archives as they are")
    p.add_argument("--block-private", action="store_true",
                   help="refuse loopback/private/link-local addresses (checked after DNS and on redirects)")
    p.add_argument("--retries", type=int, default=8, help="retries per connection without progress")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for a server's answer (default 30)")
    p.add_argument("--stall", type=float, default=4.0,
                   help="seconds without a byte before a connection's range goes to another one (default 4)")
    p.add_argument("--queue-file", help="persist the queue here (continues after a restart)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def _size(text: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    t = text.strip().lower().rstrip("b")
    try:
        return int(float(t[:-1]) * units[t[-1]]) if t and t[-1] in units else int(t)
    except (ValueError, KeyError) as exc:
        raise argparse.ArgumentTypeError(f"'{text}' is not a size like 500M or 8G") from exc


def build(args):
    """Options and requests from the arguments (raises UserError on bad input)."""
    from lora_trainer.download import DownloadOptions, DownloadRequest, parse_line, parse_text
    from lora_trainer.download.errors import BadRequestError

    if args.stall <= 0 or args.timeout <= 0:
        raise BadRequestError(f"--{'stall' if args.stall <= 0 else 'timeout'}: give a number of seconds above 0")
    headers = {}
    for h in args.header:
        if ":" not in h:
            raise BadRequestError(f"--header '{h}': write it as 'Name: value'")
        k, v = h.split(":", 1)
        headers[k.strip()] = v.strip()
    opts = DownloadOptions(
        root=Path(args.to), route=not args.flat, connections=max(1, args.connections), headers=headers,
        proxy=args.proxy, civitai_token=args.civitai_token or args.token, hf_token=args.hf_token or args.token,
        max_bytes=args.max_size, allow_pickle=args.allow_pickle, unpack_zip=not args.no_unzip,
        block_private=args.block_private, retries=args.retries, read_timeout=args.timeout, stall_timeout=args.stall,
        ca_file=args.ca_file)
    opts.folders.update({k: getattr(args, f"dir_{k}") for k in ("lora", "checkpoint", "vae", "embedding")})
    requests = []
    for src in args.sources:
        path = Path(src)
        if "://" not in src and path.is_file():
            try:
                requests.extend(parse_text(path.read_text(encoding="utf-8-sig")))
            except OSError as exc:
                raise BadRequestError(f"cannot read the list file {src}: {exc}") from exc
        else:
            req = parse_line(src)
            if req is not None:
                requests.append(req)
    if not requests:
        raise BadRequestError("nothing to download: give links or a list file")
    if args.mirror or args.sha256 or args.name:
        if len(requests) != 1:
            raise BadRequestError("--mirror, --sha256 and --name apply to a single file; use a list file "
                                  "(`name | url mirror | sha256`) for several")
        r = requests[0]
        requests[0] = DownloadRequest(r.urls + args.mirror, args.name or r.name, args.sha256 or r.sha256)
    for r in requests:
        r.validate()
    return opts, requests


def run(args) -> int:
    from lora_trainer.download import DownloadManager
    from lora_trainer.errors import UserError

    try:
        opts, requests = build(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return getattr(exc, "exit_code", 2)
    bars = _Bars(quiet=args.quiet)
    manager = DownloadManager(opts, concurrency=args.jobs, state_file=args.queue_file, sinks=(bars,))
    ids = [manager.add(r) for r in requests]
    manager.start()
    try:
        manager.wait()
    except KeyboardInterrupt:
        manager.shutdown(wait=True)
        bars.close()
        print("interrupted: run the same command again to resume", file=sys.stderr)
        return 130
    manager.shutdown(wait=False)
    bars.close()
    code = 0
    for item_id in ids:
        item = manager.get(item_id)
        if item.state == "done" and item.result:
            for f in item.result["files"]:
                note = " (already there, same SHA-256)" if f["existed"] else ""
                flag = " [pickle: never loaded, use with care]" if f["pickle"] else ""
                print(f"{f['kind']:10} {f['path']}  sha256 {f['sha256']}{note}{flag}")
        else:
            print(f"error: {item.request.urls[0]}: {item.error}", file=sys.stderr)
            code = code or item.exit_code or 1
    return code


class _Bars:
    """Renders download events as tqdm bars (one per file); warnings go above the bars."""

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.bars: dict[str, object] = {}
        self.lock = threading.Lock()

    def __call__(self, event) -> None:
        if self.quiet:
            return
        from tqdm import tqdm

        data = event.data
        with self.lock:
            if event.type == "progress":
                bar = self.bars.get(data["id"])
                if bar is None:
                    bar = self.bars[data["id"]] = tqdm(
                        total=data.get("total_bytes"), unit="B", unit_scale=True, unit_divisor=1024,
                        desc=(data.get("name") or "")[:40], position=len(self.bars), leave=True)
                if data.get("total_bytes") and bar.total != data["total_bytes"]:
                    bar.total = data["total_bytes"]
                bar.update(data["done_bytes"] - bar.n)
            elif event.type == "log" and data.get("level") in ("warning", "error"):
                tqdm.write(f"warning: {data['message']}", file=sys.stderr)

    def close(self) -> None:
        with self.lock:
            for bar in self.bars.values():
                bar.close()
