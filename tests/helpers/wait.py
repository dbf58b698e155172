"""One way for a test to wait: poll a condition until it holds or a deadline passes.

Why: a fixed sleep is either too short on a loaded machine (a flaky test) or too long everywhere
(a slow one); a deadline fails loudly, with what was awaited, instead of hanging.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(predicate: Callable[[], T], timeout: float, interval: float = 0.02, what: str = "") -> T:
    """Call `predicate` until it returns something truthy, and return that; raise TimeoutError naming
    `what` (or the predicate) after `timeout` seconds. Exceptions from `predicate` propagate."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            name = what or getattr(predicate, "__name__", repr(predicate))
            raise TimeoutError(f"waited {timeout:g} s for {name}")
        time.sleep(interval)
