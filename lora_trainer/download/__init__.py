"""Model downloader engine (core: stdlib + safetensors header parsing only).

Entry points: `download(DownloadRequest, DownloadOptions, emit, stop)` for one file,
`DownloadManager` for a persisted queue, `parse_text` for `name | url | sha256` lists.
"""

from lora_trainer.download.errors import DownloadError
from lora_trainer.download.fetch import DownloadRequest, DownloadResult, FileResult, download
from lora_trainer.download.lines import parse_line, parse_text
from lora_trainer.download.manager import DownloadManager
from lora_trainer.download.options import DownloadOptions

__all__ = ["DownloadError", "DownloadManager", "DownloadOptions", "DownloadRequest", "DownloadResult",
           "FileResult", "download", "parse_line", "parse_text"]
