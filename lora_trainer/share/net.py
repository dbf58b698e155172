"""Small GETs (manifests, Civitai's JSON API) through the download engine's HTTP client, so they use
the same proxy, CA file, tokens and address rules as every download. The one place this package
reaches inside the engine."""

from __future__ import annotations

import json
from typing import Any

from lora_trainer.download.options import DownloadOptions
from lora_trainer.errors import UserError

MAX_TEXT = 8 << 20


class OfflineError(UserError):
    """The network (or that server) cannot be reached; nothing was changed."""

    exit_code = 5


class HTTPStatusError(UserError):
    def __init__(self, url: str, status: int, body: bytes):
        self.status, self.body = status, body
        super().__init__(f"{url}: the server answered HTTP {status}")


def get_bytes(url: str, opts: DownloadOptions, accept: str = "*/*", limit: int = MAX_TEXT) -> bytes:
    """The body of a 200 answer; OfflineError when unreachable, HTTPStatusError for other statuses."""
    import http.client

    from lora_trainer.download.errors import DownloadError
    from lora_trainer.download.http import Client, Slot, drain

    slot = Slot()
    try:
        opened = Client(opts).open(url, {"Accept": accept}, slot)
        if opened.resp.status != 200:
            raise HTTPStatusError(url, opened.resp.status, drain(opened.resp, slot))
        data = opened.resp.read(limit + 1)
    except (OSError, http.client.HTTPException) as exc:
        host = url.split("/")[2] if "://" in url else url
        raise OfflineError(f"cannot reach {host} ({exc}); check the network or the proxy setting") from exc
    except DownloadError as exc:
        if isinstance(exc.__cause__, OSError) or exc.retryable:
            raise OfflineError(f"cannot reach {url.split('/')[2]}: {exc}") from exc
        raise
    finally:
        slot.close()
    if len(data) > limit:
        raise UserError(f"{url}: the answer is larger than {limit >> 20} MiB; is this the right link?")
    return data


def get_json(url: str, opts: DownloadOptions) -> Any:
    data = get_bytes(url, opts, "application/json")
    try:
        return json.loads(data)
    except ValueError as exc:
        raise UserError(f"{url}: the answer is not JSON ({exc})") from exc
