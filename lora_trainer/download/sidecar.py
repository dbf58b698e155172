"""A1111 user-metadata sidecar `<stem>.json` (+ source URL, SHA-256) and `<stem>.preview.<ext>`."""

from __future__ import annotations

import json
from pathlib import Path

from lora_trainer.atomic import atomic_write_bytes, atomic_write_text
from lora_trainer.download.http import Client, Slot, drain
from lora_trainer.download.sources import SourceInfo

_IMAGE_EXT = {"image/png": ".png", "image/jpeg": ".jpeg", "image/webp": ".webp", "image/gif": ".gif"}
MAX_PREVIEW = 20 << 20


def write_sidecar(model: Path, url: str, sha256: str, sd_version: str, info: SourceInfo | None,
                  extra: dict | None = None) -> Path:
    """Create or update `<stem>.json`; fields the user already edited in A1111 are kept."""
    path = model.with_suffix(".json")
    data: dict = {}
    if path.exists():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            data = {}
    defaults = {
        "description": (info.description if info else "") or "",
        "sd version": (info.sd_version if info and info.sd_version else sd_version) or "",
        "activation text": ", ".join(info.trained_words) if info else "",
        "preferred weight": 0,
        "notes": f"Downloaded from {url}",
    }
    for key, value in defaults.items():
        data.setdefault(key, value)
    data["source url"] = url
    data["sha256"] = sha256
    data.update(extra or {})
    atomic_write_text(path, json.dumps(data, ensure_ascii=False, indent=2))
    return path


def fetch_preview(client: Client, url: str, model: Path) -> Path | None:
    """Download a small preview image next to the model; any failure just means no preview."""
    slot = Slot()
    try:
        opened = client.open(url, {}, slot)
        ctype = (opened.resp.getheader("Content-Type") or "").split(";")[0].strip().lower()
        if opened.resp.status != 200 or ctype not in _IMAGE_EXT:
            drain(opened.resp, slot)
            return None
        data = opened.resp.read(MAX_PREVIEW + 1)
        if len(data) > MAX_PREVIEW:
            return None
    except Exception:  # noqa: BLE001 - the preview is optional
        return None
    finally:
        slot.close()
    path = model.with_name(model.stem + ".preview" + _IMAGE_EXT[ctype])
    atomic_write_bytes(path, data)
    return path
