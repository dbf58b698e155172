"""The one retry loop: the probe and every connection try their request through `retrying()`.

A busy server, a drop, a stall and a broken answer are treated the same way wherever they happen: the
loop says once why each error is caught. A request's state between tries is a small record (`Tries`).
"""

from __future__ import annotations

import http.client
import random
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from lora_trainer.download.errors import DownloadError, LinkExpiredError, MalformedResponseError, NetworkError
from lora_trainer.download.http import RetryableHTTPError
from lora_trainer.download.options import DownloadOptions

MALFORMED_TRIES = 3  # broken answers in a row (all connections together) before the download fails
NET_ERRORS = (OSError, http.client.HTTPException)
T = TypeVar("T")


class GaveUp(NetworkError):
    """`retries` tries in a row brought no byte; `last` is the last one's error."""

    def __init__(self, last: BaseException | None):
        super().__init__(str(last))
        self.last = last


@dataclass
class Tries:
    """One request's state between tries: tries in a row without a byte, what the server asked for, the
    last error, and whether the next try opens the original link again (its signed URL expired)."""

    count: int = 0
    retry_after: float | None = None
    last_error: BaseException | None = None
    refresh: bool = False


def backoff(opts: DownloadOptions, attempt: int, retry_after: float | None = None) -> float:
    """Seconds before try number `attempt` + 1: the server's Retry-After (capped), else exponential with jitter."""
    if retry_after is not None:
        return min(retry_after, max(opts.backoff_max, 1.0) * 4)
    base = min(opts.backoff_max, opts.backoff * (2 ** (max(1, attempt) - 1)))
    return base * (0.75 + 0.5 * random.random())


def retrying(attempt: Callable[[Tries], T], opts: DownloadOptions, malformed: MalformedBudget,
             close: Callable[[], None], sleep: Callable[[float], None], *,
             progressed: Callable[[], bool] = lambda: False, failed: Callable[[Tries], None] | None = None,
             on_stall: Callable[[], T | None] | None = None, refreshable: bool = False) -> T:
    """attempt(tries) until it returns. After a failed try: `close` the connection, count the try (the count
    starts over when `progressed`), call `failed(tries)` (it may raise to stop), raise GaveUp after
    opts.retries tries in a row, else `sleep` the backoff. `on_stall`: a stalled stream's range can go to
    another connection (a result that is not None is returned). `refreshable`: an expired link is opened
    again from the original link, once in a row."""
    tries = Tries()
    while True:
        tries.retry_after = None
        try:
            return attempt(tries)
        except ssl.SSLCertVerificationError as exc:  # an untrusted certificate stays untrusted: say how to trust it
            close()
            raise NetworkError(
                f"the server's TLS certificate is not trusted ({exc.verify_message}); if you trust this server, "
                "pass its CA certificate with --ca-file") from exc
        except LinkExpiredError as exc:  # a signed CDN URL expired (403/410/login page): the original link gives
            close()  # a fresh one, once in a row (a fresh one that fails too is the user's to fix)
            tries.last_error = exc
            if not refreshable or tries.refresh:
                raise
            tries.refresh = True
            continue
        except MalformedResponseError as exc:  # impossible or mismatched Content-Range, length mismatch, garbage
            close()  # status line: a fresh request may get a sane answer, a few times in all (all connections)
            tries.last_error = exc
            if not malformed.spend():
                raise
        except RetryableHTTPError as exc:  # 5xx/408/429/416: busy or failing; wait as long as it asks
            close()
            tries.last_error, tries.retry_after = exc, exc.retry_after
        except DownloadError:  # the file changed, the size cap, an error page, a token needed: retrying cannot help
            close()
            raise
        except TimeoutError as exc:  # no answer in read_timeout, or no body byte for `stall` seconds: then an
            close()  # idle connection takes the rest of the range over at once
            tries.last_error = exc
            handed = on_stall() if on_stall is not None else None
            if handed is not None:
                return handed
        except NET_ERRORS as exc:  # refused, reset, dropped, ended early: the network may recover
            close()
            tries.last_error = exc
        tries.refresh = False
        tries.count = (0 if progressed() else tries.count) + 1
        if failed is not None:
            failed(tries)
        if tries.count > opts.retries:
            raise GaveUp(tries.last_error) from tries.last_error
        sleep(backoff(opts, tries.count, tries.retry_after))


class MalformedBudget:
    """Broken answers since the last byte arrived, counted over all connections of one transfer: a server
    that only ever answers nonsense fails the download in seconds instead of being retried forever."""

    def __init__(self, limit: int = MALFORMED_TRIES) -> None:
        self.limit = limit
        self.count = 0
        self._lock = threading.Lock()

    def spend(self) -> bool:
        """Count one broken answer; False once more than `limit` came in a row."""
        with self._lock:
            self.count += 1
            return self.count <= self.limit

    def progressed(self) -> None:
        if self.count:
            self.count = 0
