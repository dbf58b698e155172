"""Identify a LoRA on Civitai by its hash and write what Civitai knows into the A1111 sidecar.

Civitai's public API (developer docs, "GET /api/v1/model-versions/by-hash/:hash") answers a model
version for a file's SHA-256 (AutoV2/AutoV3 work too): its name, model, base model, trained words,
description and images. `GET /api/v1/models/:id` lists the model's versions newest first, which is
how we tell that a newer version exists. The base URL is configurable (self-hosted mirrors, tests).
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urljoin, urlsplit

from lora_trainer.download.options import DownloadOptions
from lora_trainer.errors import UserError
from lora_trainer.share.net import HTTPStatusError, get_bytes, get_json

DEFAULT_BASE = "https://civitai.com"
_SD = {"sd 1": "sd1", "sd 2": "sd2", "sdxl": "sdxl", "pony": "sdxl", "illustrious": "sdxl"}
MAX_PREVIEW = 20 << 20


@dataclass
class CivitaiVersion:
    model_id: int
    version_id: int
    model_name: str
    version_name: str
    base_model: str
    trained_words: list[str] = field(default_factory=list)
    description: str = ""
    image_urls: list[str] = field(default_factory=list)
    newer: tuple[int, str] | None = None  # (version id, name) of a newer version, when one exists

    def page(self, base: str) -> str:
        return f"{base.rstrip('/')}/models/{self.model_id}?modelVersionId={self.version_id}"


def civitai_base(base: str | None = None) -> str:
    return (base or os.environ.get("LORA_TRAINER_CIVITAI_URL") or DEFAULT_BASE).rstrip("/")


def _opts(opts: DownloadOptions, base: str) -> DownloadOptions:
    host = (urlsplit(base).hostname or "").lower()
    return dataclasses.replace(opts, civitai_hosts=tuple({*opts.civitai_hosts, host}))


def lookup(hashes: list[str], opts: DownloadOptions, base: str | None = None) -> CivitaiVersion | None:
    """The model version for the first hash Civitai knows (None when it knows none of them)."""
    base = civitai_base(base)
    o = _opts(opts, base)
    data = None
    for h in [h for h in hashes if h]:
        try:
            data = get_json(f"{base}/api/v1/model-versions/by-hash/{h}", o)
            break
        except HTTPStatusError as exc:
            if exc.status == 404:
                continue
            hint = " (set a Civitai API token)" if exc.status in (401, 403) else ""
            raise UserError(f"Civitai look-up failed: HTTP {exc.status}{hint}") from exc
    if not isinstance(data, dict) or "modelId" not in data:
        return None
    found = CivitaiVersion(
        model_id=int(data["modelId"]), version_id=int(data.get("id") or 0),
        model_name=str((data.get("model") or {}).get("name") or ""), version_name=str(data.get("name") or ""),
        base_model=str(data.get("baseModel") or ""),
        trained_words=[w for w in data.get("trainedWords") or [] if isinstance(w, str)],
        description=str(data.get("description") or (data.get("model") or {}).get("description") or ""),
        image_urls=[i["url"] for i in data.get("images") or [] if isinstance(i, dict) and i.get("url")
                    and i.get("type", "image") == "image"])
    found.newer = _newer(found, o, base)
    return found


def _newer(found: CivitaiVersion, opts: DownloadOptions, base: str) -> tuple[int, str] | None:
    try:
        model = get_json(f"{base}/api/v1/models/{found.model_id}", opts)
    except HTTPStatusError:
        return None
    versions = [v for v in (model.get("modelVersions") or []) if isinstance(v, dict) and v.get("id")]
    if versions and int(versions[0]["id"]) != found.version_id:
        return int(versions[0]["id"]), str(versions[0].get("name") or "")
    return None


def write_civitai_sidecar(model: Path, found: CivitaiVersion, opts: DownloadOptions,
                          base: str | None = None) -> list[Path]:
    """Fill `<stem>.json` (keeping what the user wrote) and a preview when there is none yet.
    The preview is fetched before anything is written, so a failure leaves the folder unchanged."""
    from lora_trainer.atomic import atomic_write_text
    from lora_trainer.lora.metadata import sidecar_paths, write_sidecars

    base = civitai_base(base)
    json_path, png_path = sidecar_paths(model)
    preview_tmp = None
    if found.image_urls and not png_path.exists():
        try:  # the preview is optional: an image host that fails costs the picture, not the look-up
            data = get_bytes(urljoin(base + "/", found.image_urls[0]), _opts(opts, base), "image/*", MAX_PREVIEW)
        except UserError:
            data = b""
        if data:
            preview_tmp = model.with_name(f".{model.stem}.preview.download")
            preview_tmp.write_bytes(data)
    try:
        old: dict = {}
        if json_path.is_file():
            try:
                old = json.loads(json_path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                old = {}
        old["civitai"] = {"modelId": found.model_id, "modelVersionId": found.version_id,
                          "model": found.model_name, "version": found.version_name, "baseModel": found.base_model,
                          "page": found.page(base)}
        atomic_write_text(json_path, json.dumps(old, indent=4, ensure_ascii=False))
        words = old.get("activation text") or found.trained_words
        arch = next((v for k, v in _SD.items() if found.base_model.lower().startswith(k)), None)
        fields = {"trigger_words": words, "preferred_weight": old.get("preferred weight") or None,
                  "arch": None if old.get("sd version") else arch,
                  "description": old.get("description") or _plain(found.description),
                  "notes": old.get("notes") or found.page(base)}
        try:
            out = write_sidecars(model, preview=preview_tmp, **fields)
        except OSError:  # not an image after all: keep the facts, skip the picture
            out = write_sidecars(model, **fields)
    finally:
        if preview_tmp is not None:
            preview_tmp.unlink(missing_ok=True)
    return list(out.values())


def _plain(html_text: str) -> str:
    """Civitai descriptions are HTML; A1111 shows the sidecar text as it is."""
    import html
    import re

    return html.unescape(re.sub(r"<[^>]+>", " ", html_text)).strip()
