"""The one retry loop on its own: which errors are tried again, how tries are counted, what ends it."""

from __future__ import annotations

import pytest

from lora_trainer.download.errors import LinkExpiredError, MalformedResponseError, RemoteChangedError
from lora_trainer.download.http import RetryableHTTPError
from lora_trainer.download.retry import GaveUp, MalformedBudget, Tries, retrying


def _run(errors: list[BaseException | None], opts, **kw):
    """retrying() over an attempt that raises errors[i] on try i (None: succeed); returns (result, log)."""
    log: dict[str, list] = {"tries": [], "closed": [], "slept": []}

    def attempt(tries: Tries):
        log["tries"].append((tries.count, tries.refresh))
        err = errors[len(log["tries"]) - 1]
        if err is not None:
            raise err
        return "ok"

    result = retrying(attempt, opts, MalformedBudget(), lambda: log["closed"].append(1), log["slept"].append, **kw)
    return result, log


def test_drops_and_busy_answers_are_retried_with_the_servers_wait(opts):
    result, log = _run([ConnectionResetError(), RetryableHTTPError("503", 503, retry_after=0.1), None], opts)
    assert result == "ok"
    assert [c for c, _ in log["tries"]] == [0, 1, 2] and len(log["closed"]) == 2
    assert log["slept"][1] == 0.1  # Retry-After wins over the backoff


def test_gives_up_after_retries_in_a_row_unless_bytes_came(opts):
    opts.retries = 2
    with pytest.raises(GaveUp) as info:
        _run([TimeoutError()] * 5, opts)
    assert isinstance(info.value.last, TimeoutError)
    progress = iter([False, True, False, True, False, False])  # a byte came in on tries 2 and 4
    result, log = _run([TimeoutError()] * 5 + [None], opts, progressed=lambda: next(progress))
    assert result == "ok" and [c for c, _ in log["tries"]][1:] == [1, 1, 2, 1, 2]


def test_only_what_a_retry_can_fix_is_retried(opts):
    with pytest.raises(RemoteChangedError):  # the file changed: retrying cannot help
        _run([RemoteChangedError("changed"), None], opts)
    with pytest.raises(LinkExpiredError):  # expired, and nothing to re-resolve it from
        _run([LinkExpiredError("expired"), None], opts)
    result, log = _run([LinkExpiredError("expired"), None], opts, refreshable=True)
    assert result == "ok" and log["tries"][1] == (0, True) and not log["slept"]  # at once, from the original link
    with pytest.raises(LinkExpiredError):  # the fresh link expired too: once in a row only
        _run([LinkExpiredError("expired")] * 2 + [None], opts, refreshable=True)
    with pytest.raises(MalformedResponseError):  # broken answers: a few in a row, then the download fails
        _run([MalformedResponseError("bad")] * 4 + [None], opts)


def test_a_stall_can_hand_the_range_over_and_failed_can_stop(opts):
    result, log = _run([TimeoutError(), None], opts, on_stall=lambda: "handed over")
    assert result == "handed over" and len(log["tries"]) == 1

    def failed(tries: Tries) -> None:
        if tries.count >= 2:
            raise RuntimeError("stop")

    with pytest.raises(RuntimeError, match="stop"):
        _run([ConnectionResetError()] * 5, opts, failed=failed)
