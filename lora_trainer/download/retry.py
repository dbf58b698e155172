"""How long to wait before trying again, and how many malformed answers to put up with.

The probe and every connection use these, so a busy server, a drop and a broken answer are treated
the same way wherever they happen (the loops that catch them say why each error is caught).
"""

from __future__ import annotations

import random
import threading

from lora_trainer.download.options import DownloadOptions

MALFORMED_TRIES = 3  # broken answers in a row (all connections together) before the download fails


def backoff(opts: DownloadOptions, attempt: int, retry_after: float | None = None) -> float:
    """Seconds before try number `attempt` + 1: the server's Retry-After (capped), else exponential with jitter."""
    if retry_after is not None:
        return min(retry_after, max(opts.backoff_max, 1.0) * 4)
    base = min(opts.backoff_max, opts.backoff * (2 ** (max(1, attempt) - 1)))
    return base * (0.75 + 0.5 * random.random())


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
