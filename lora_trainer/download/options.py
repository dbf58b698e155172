"""What one download (or a whole queue) may do: connections, tokens, proxy, limits, folders.

One dataclass so the CLI, the WebUI settings and tests fill the same fields.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

# Folder parameter names per model kind (A1111 layout under models/).
DEFAULT_FOLDERS = {
    "lora": "Lora",
    "checkpoint": "Stable-diffusion",
    "vae": "VAE",
    "embedding": "embeddings",
    "other": "",
}

CIVITAI_HOSTS = ("civitai.com", "civitai.green")
HF_HOSTS = ("huggingface.co", "hf.co")


@dataclass
class DownloadOptions:
    """Knobs for the engine. `root` is the models folder; `folders` maps kind → sub-folder or absolute path."""

    root: Path = field(default_factory=lambda: Path("."))
    folders: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_FOLDERS))
    route: bool = True  # False: everything goes straight into `root`
    connections: int = 16  # like aria2c -x16: netdisk and CDN links limit each connection; a fast one uses one (see engine)
    min_split: int = 1 << 20  # never split a segment below this many bytes
    headers: dict[str, str] = field(default_factory=dict)
    proxy: str | None = None  # http://, https://, socks5://, socks5h:// ; None → environment
    civitai_token: str | None = None
    hf_token: str | None = None
    civitai_hosts: tuple[str, ...] = CIVITAI_HOSTS
    hf_hosts: tuple[str, ...] = HF_HOSTS
    connect_timeout: float = 20.0
    read_timeout: float = 30.0  # longest wait for an answer's headers
    stall_timeout: float = 4.0  # no body byte for this long: the connection's range goes to another one
    retries: int = 8  # consecutive failures without progress, per connection
    backoff: float = 1.0  # first retry delay (doubles, capped at backoff_max)
    backoff_max: float = 30.0
    max_redirects: int = 10
    max_restarts: int = 2  # clean restarts when the remote file changes mid-download
    max_bytes: int | None = None  # size cap
    min_free_bytes: int = 64 << 20  # keep this much free after the file
    block_private: bool = False  # refuse loopback/private/link-local targets (checked after DNS)
    allow_pickle: bool = False  # keep .ckpt/.pt/.bin (never loaded) only when True
    unpack_zip: bool = True
    max_unpacked_bytes: int = 64 << 30
    keep_archive: bool = False
    write_sidecar: bool = True
    fetch_preview: bool = True
    verify_tls: bool = True
    ca_file: str | None = None  # extra CA bundle (company proxies, self-hosted mirrors)
    user_agent: str = "lora-trainer-downloader/0.1"
    progress_interval: float = 0.25

    def token_for(self, host: str) -> str | None:
        """Bearer token for a host: arguments/settings first, then CIVITAI_TOKEN / HF_TOKEN."""
        host = host.lower()
        if _host_in(host, self.civitai_hosts):
            return self.civitai_token or os.environ.get("CIVITAI_TOKEN") or None
        if _host_in(host, self.hf_hosts):
            return (self.hf_token or os.environ.get("HF_TOKEN")
                    or os.environ.get("HUGGING_FACE_HUB_TOKEN") or None)
        return None

    def is_civitai(self, host: str) -> bool:
        return _host_in(host.lower(), self.civitai_hosts)

    def is_hf(self, host: str) -> bool:
        return _host_in(host.lower(), self.hf_hosts)

    def folder_for(self, kind: str) -> Path:
        """Destination folder for a model kind (absolute folder values are used as they are)."""
        root = Path(self.root)
        if not self.route:
            return root
        sub = self.folders.get(kind, self.folders.get("other", ""))
        return root / sub if sub else root


def _host_in(host: str, hosts: tuple[str, ...]) -> bool:
    # exact host (or www.): tokens must not leak to CDN sub-domains a redirect leads to
    return any(host in (h, "www." + h) for h in hosts)
