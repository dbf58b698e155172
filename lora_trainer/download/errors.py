"""Download failures users see: each says what happened and what to do, and maps to a CLI exit code.

Exit codes (documented in docs/download.md): 2 bad input, 3 verification failed, 4 link expired /
login or token needed, 5 network or server failure after retries, 6 no disk space / size cap,
7 refused for safety (address, scheme, pickle), 8 cancelled.
"""

from __future__ import annotations

from lora_trainer.errors import UserError


class DownloadError(UserError):
    """Base class; `exit_code` is what the CLI returns for it."""

    exit_code = 5
    retryable = False


class BadRequestError(DownloadError):
    """The link or list line itself is wrong (not http/https, bad sha256, unreadable list)."""

    exit_code = 2


class VerificationError(DownloadError):
    """The bytes arrived but are not the file: SHA-256 mismatch, truncated or corrupt safetensors."""

    exit_code = 3


class LinkExpiredError(DownloadError):
    """The server answered with a login page / error instead of the file (expired or private link)."""

    exit_code = 4


class AuthRequiredError(LinkExpiredError):
    """The source needs an API token (Civitai, HuggingFace gated repo)."""


class NetworkError(DownloadError):
    """Connection or server trouble that outlasted the retries; the `.part` file is kept for resume."""

    exit_code = 5
    retryable = True


class MalformedResponseError(NetworkError):
    """The server's answer breaks HTTP: an impossible or mismatched Content-Range, a length that does not
    match it, a garbage status line. A fresh request may get a sane answer, but only a few are tried."""


class RemoteChangedError(NetworkError):
    """The remote file changed while we downloaded it (size, ETag or Last-Modified differ)."""


class SpaceError(DownloadError):
    """Not enough free disk space, or the file is bigger than the configured size cap."""

    exit_code = 6


class UnsafeError(DownloadError):
    """Refused for safety: non-http scheme, private/loopback address, pickle not allowed, bad archive."""

    exit_code = 7


class PickleRefusedError(UnsafeError):
    """A pickle file (.ckpt/.pt/.bin) and pickles are not allowed; other mirrors would not change that."""


class CancelledError(DownloadError):
    """The user cancelled the download."""

    exit_code = 8
