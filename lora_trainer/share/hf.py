"""Publishing to the HuggingFace Hub with huggingface_hub's `upload_folder`, links pinned to its commit.

Pinned links (`/resolve/<commit>/…`) keep meaning the same bytes even after later pushes. A large
publish may land as several commits (huggingface_hub batches them); the last one holds every file, so
its id pins them all. The token comes from HF_TOKEN or `huggingface-cli login`, as everywhere in the
Hub's own tools; HF_ENDPOINT points at another Hub-compatible server.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path
from urllib.parse import quote

from lora_trainer.share.s3 import StoreError

_REPO_RE = re.compile(r"^hf://([A-Za-z0-9][\w.\-]*/[\w.\-]+)(?:/(.*))?$")


def parse_hf(spec: str) -> tuple[str, str]:
    """`hf://user/repo[/folder]` -> (repo_id, folder inside the repo)."""
    m = _REPO_RE.match(spec)
    if not m:
        raise StoreError(f"--to '{spec}': write it as hf://user/repo (optionally hf://user/repo/folder)")
    return m.group(1), (m.group(2) or "").strip("/")


def resolve_url(endpoint: str, repo_id: str, revision: str, path: str) -> str:
    return f"{endpoint.rstrip('/')}/{repo_id}/resolve/{revision}/{quote(path, safe='/')}"


def store_hf(spec: str, files: dict[str, Path]) -> dict[str, list[str]]:
    """Upload `files` ({path in repo: local file}) in one commit; returns the pinned links."""
    repo_id, folder = parse_hf(spec)
    try:
        from huggingface_hub import HfApi
    except ImportError as exc:
        raise StoreError("--to hf://: needs the huggingface_hub package (pip install huggingface_hub)") from exc
    api = HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None)  # read now, not at import
    with tempfile.TemporaryDirectory(prefix="lora-publish-") as tmp:
        for rel, src in files.items():
            dst = Path(tmp, rel)
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
        try:
            api.create_repo(repo_id, exist_ok=True)
            info = api.upload_folder(folder_path=tmp, repo_id=repo_id, path_in_repo=folder or None,
                                     commit_message=f"publish {', '.join(sorted({r.split('/')[0] for r in files}))}")
        except Exception as exc:  # noqa: BLE001 - the Hub client raises many types; one line for all
            raise StoreError(f"upload to {spec} failed: {_reason(exc)}") from exc
    revision = getattr(info, "oid", None) or "main"
    endpoint = getattr(api, "endpoint", None) or "https://huggingface.co"
    return {rel: [resolve_url(endpoint, repo_id, revision, f"{folder}/{rel}" if folder else rel)] for rel in files}


def _reason(exc: Exception) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    low = text.lower()
    if "401" in low or "token" in low or "unauthorized" in low:
        return f"{text} (log in with `huggingface-cli login` or set HF_TOKEN)"
    if any(w in low for w in ("connect", "resolve", "offline", "timed out", "max retries", "errno", "name or service")):
        return f"{text} (cannot reach the Hub: check the network or HF_ENDPOINT)"
    return text
