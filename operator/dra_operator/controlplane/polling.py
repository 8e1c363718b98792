"""Waiting on cluster state: poll a predicate until it holds or a deadline passes (no fixed sleeps)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")
POLL_INTERVAL = 0.1


def wait_until(predicate: Callable[[], T], timeout: float = 30.0, message: str = "") -> T:
    """Return the first truthy value of `predicate()`; raise TimeoutError naming `message` after `timeout` s.

    An exception from the predicate counts as "not yet" (e.g. an object that does not exist yet); the last
    value or exception is quoted in the TimeoutError so a failing wait says what it saw.
    """
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = predicate()
        except Exception as error:  # not-yet-existing object, transient conflict: poll again
            last = error
        else:
            if value:
                return value
            last = value
        if time.monotonic() >= deadline:
            raise TimeoutError(
                f"timed out after {timeout:g}s waiting for: {message or predicate!r} (last: {last!r})"
            )
        time.sleep(POLL_INTERVAL)
