"""`lora-trainer publish FILE|DIR... --manifest team.json`: add LoRAs to a team manifest as new versions.

Exit codes: 0 published, 2 bad input, 5 the store could not be reached or refused the upload.
"""

from __future__ import annotations

import argparse
import sys


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "publish", help="add LoRA files to a team manifest as new versions (and upload them)",
        description="Write or update a manifest listing each LoRA's versions with hashes (SHA-256, AutoV2, "
                    "AutoV3), architecture, trigger words, preview and download links. Without --to the files "
                    "are copied into the manifest's folder (serve or sync that folder).",
        epilog="examples: publish output/ --manifest share/team.json --base-url https://cdn.example/loras ; "
               "publish my.safetensors --manifest team.json --to s3://bucket/loras --endpoint-url http://minio:9000")
    p.add_argument("paths", nargs="+", metavar="FILE|DIR")
    p.add_argument("--manifest", required=True, help="the manifest .json to create or update")
    p.add_argument("--base-url", help="link prefix where the manifest's folder is served (default: relative links)")
    p.add_argument("--mirror", action="append", default=[], metavar="URL",
                   help="another link prefix holding the same tree (repeatable; tried in order)")
    p.add_argument("--to", help="upload to s3://bucket/prefix (presigned links) or hf://user/repo")
    p.add_argument("--endpoint-url", help="S3-compatible endpoint (MinIO, R2); default env AWS_ENDPOINT_URL or AWS")
    p.add_argument("--region", help="S3 region (default env AWS_REGION or us-east-1)")
    p.add_argument("--expires", default="7d", type=_duration,
                   help="lifetime of presigned S3 links, e.g. 12h, 7d (max 7d; default 7d)")
    p.add_argument("--name", help="name for a single file (default: its ss_output_name or file name)")
    p.add_argument("--title", help="a title for the manifest")
    p.set_defaults(func=run)


def _duration(text: str) -> int:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    t = text.strip().lower()
    try:
        return int(float(t[:-1]) * units[t[-1]]) if t and t[-1] in units else int(t)
    except (ValueError, KeyError) as exc:
        raise argparse.ArgumentTypeError(f"'{text}' is not a duration like 3600, 12h or 7d") from exc


def run(args: argparse.Namespace) -> int:
    from lora_trainer.errors import UserError
    from lora_trainer.share.publish import publish

    try:
        done = publish(args.paths, args.manifest, base_url=args.base_url, to=args.to, mirrors=args.mirror,
                       name=args.name, expires_s=args.expires, endpoint=args.endpoint_url, region=args.region,
                       title=args.title)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return getattr(exc, "exit_code", 2)
    for item in done:
        print(item.line())
    print(f"manifest: {args.manifest}")
    return 0
