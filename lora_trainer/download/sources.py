"""What a source tells us beside the bytes: Civitai's API (hashes, preview, trigger words).

HuggingFace's SHA-256 arrives as `X-Linked-Etag` on the redirect hop (read in http.py).
"""

from __future__ import annotations

import http.client
import json
import re
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

from lora_trainer.download.errors import DownloadError
from lora_trainer.download.http import Client, Slot, drain
from lora_trainer.download.options import DownloadOptions

_CIVITAI_DL = re.compile(r"/api/download/models/(\d+)")
_BASE_TO_SD = {"sd 1": "SD1", "sd 2": "SD2", "sdxl": "SDXL", "pony": "SDXL", "illustrious": "SDXL"}


@dataclass
class SourceInfo:
    sha256_by_name: dict[str, str] = field(default_factory=dict)
    primary_sha256: str | None = None
    primary_name: str | None = None
    preview_url: str | None = None
    trained_words: list[str] = field(default_factory=list)
    sd_version: str = ""
    description: str = ""
    title: str = ""

    def sha256_for(self, name: str) -> str | None:
        return self.sha256_by_name.get(name) or self.primary_sha256


def civitai_info(client: Client, url: str, opts: DownloadOptions) -> SourceInfo | None:
    """Civitai model-version metadata for an `/api/download/models/<id>` link; None when not Civitai."""
    parts = urlsplit(url)
    m = _CIVITAI_DL.search(parts.path)
    if not m or not opts.is_civitai(parts.hostname or ""):
        return None
    api = urlunsplit((parts.scheme, parts.netloc, f"/api/v1/model-versions/{m.group(1)}", "", ""))
    slot = Slot()
    try:
        opened = client.open(api, {"Accept": "application/json"}, slot)
        if opened.resp.status != 200:
            drain(opened.resp, slot)
            return None
        data = json.loads(opened.resp.read(8 << 20))
    except (DownloadError, ValueError, OSError, http.client.HTTPException):
        return None
    finally:
        slot.close()
    info = SourceInfo()
    for f in data.get("files") or []:
        sha = ((f.get("hashes") or {}).get("SHA256") or "").lower()
        if sha:
            info.sha256_by_name[f.get("name", "")] = sha
        if f.get("primary") or info.primary_name is None:
            info.primary_sha256 = sha or info.primary_sha256
            info.primary_name = f.get("name") or info.primary_name
    images = [i for i in data.get("images") or [] if i.get("url") and i.get("type", "image") == "image"]
    info.preview_url = images[0]["url"] if images else None
    info.trained_words = [w for w in data.get("trainedWords") or [] if isinstance(w, str)]
    base = str(data.get("baseModel") or "").lower()
    info.sd_version = next((v for k, v in _BASE_TO_SD.items() if base.startswith(k)), "")
    info.description = str(data.get("description") or "")
    info.title = str((data.get("model") or {}).get("name") or "")
    return info


