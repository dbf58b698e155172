"""The one waiting helper: returns the first truthy value, fails at its deadline."""

from __future__ import annotations

import time

import pytest

from tests.helpers.wait import wait_for


def test_returns_the_first_truthy_value():
    calls = iter([None, 0, "", "ready"])
    assert wait_for(lambda: next(calls), 5, interval=0) == "ready"


def test_fails_at_the_deadline_naming_what_it_waited_for():
    t0 = time.monotonic()
    with pytest.raises(TimeoutError, match="waited 0.2 s for the moon"):
        wait_for(lambda: False, 0.2, interval=0.01, what="the moon")
    assert 0.2 <= time.monotonic() - t0 < 2


def test_errors_of_the_predicate_propagate():
    with pytest.raises(ZeroDivisionError):
        wait_for(lambda: 1 / 0, 1)
