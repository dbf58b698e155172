"""`lora-trainer info FILE`: what a LoRA is (name, architecture, hashes, trigger words, training
settings), and with `--civitai` what Civitai knows about it (into the sidecar) and whether a newer
version exists there."""

from __future__ import annotations

import argparse
import sys


def register(subparsers) -> None:
    p = subparsers.add_parser("info", help="show a LoRA's name, architecture, hashes, trigger words, settings",
                              description="Read a .safetensors LoRA's header and sidecar; with --civitai, look "
                                          "it up on Civitai by hash, fill <name>.json and the preview, and say "
                                          "when a newer version exists.")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--civitai", action="store_true", help="look the file up on Civitai by hash")
    p.add_argument("--civitai-url", help="Civitai base URL (default https://civitai.com or env "
                                         "LORA_TRAINER_CIVITAI_URL)")
    p.add_argument("--civitai-token", help="Civitai API token (default: env CIVITAI_TOKEN)")
    p.add_argument("--proxy", help="http://, socks5:// or socks5h:// proxy (default: environment)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json

    from lora_trainer.errors import UserError
    from lora_trainer.share.facts import read_facts
    from lora_trainer.share.hashes import file_hashes

    try:
        facts = read_facts(args.file)
        hashes = file_hashes(args.file)
        found = _civitai(args, hashes) if args.civitai else None
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return getattr(exc, "exit_code", 2)
    data = {"file": str(facts.path), "name": facts.name, "architecture": facts.architecture,
            "base_model_version": facts.base_model_version, "sd_version": facts.sd_version, **hashes.to_dict(),
            "trigger_words": facts.trigger_words, "preferred_weight": facts.preferred_weight,
            "training": facts.training, "team_version": facts.shared_version, "team_manifest": facts.shared_from}
    if args.civitai:
        data["civitai"] = found
    if args.json:
        print(json.dumps(data, indent=2, ensure_ascii=False))
        return 0
    rows = [("name", facts.name), ("architecture", facts.architecture or "unknown"),
            ("base model version", facts.base_model_version), ("size", f"{hashes.size} bytes"),
            ("sha256", hashes.sha256), ("AutoV2", hashes.autov2), ("AutoV3", hashes.autov3),
            ("tensor sha256", hashes.tensor_sha256), ("trigger words", ", ".join(facts.trigger_words) or "none"),
            ("preferred weight", facts.preferred_weight)]
    rows += [(k, v) for k, v in facts.training.items()]
    if facts.shared_version:
        rows += [("team version", f"v{facts.shared_version} from {facts.shared_from}")]
    if args.civitai:
        rows += [("civitai", found.get("summary") if found else "not found on Civitai")]
        if found and found.get("newer"):
            rows += [("update", found["newer"])]
    for key, value in rows:
        if value not in (None, ""):
            print(f"{key:>18}: {value}")
    return 0


def _civitai(args: argparse.Namespace, hashes) -> dict | None:
    from pathlib import Path

    from lora_trainer.download import DownloadOptions
    from lora_trainer.share.civitai import civitai_base, lookup, write_civitai_sidecar

    base = civitai_base(args.civitai_url)
    opts = DownloadOptions(proxy=args.proxy, civitai_token=args.civitai_token)
    found = lookup([hashes.sha256, hashes.autov3], opts, base)
    if found is None:
        return None
    written = write_civitai_sidecar(Path(args.file), found, opts, base)
    out = {"model": found.model_name, "version": found.version_name, "model_id": found.model_id,
           "version_id": found.version_id, "base_model": found.base_model, "page": found.page(base),
           "summary": f"{found.model_name} / {found.version_name} ({found.page(base)})",
           "written": [str(p) for p in written]}
    if found.newer:
        out["newer"] = f"a newer version exists on Civitai: {found.newer[1]} (id {found.newer[0]})"
    return out
