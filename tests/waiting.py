"""Polling with a deadline: wait for a condition instead of sleeping a guessed time."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal, TypeVar

T = TypeVar("T")


def wait_for(
    cond: Callable[[], T | Literal[False] | None], timeout: float = 10.0, what: str = "condition"
) -> T:
    """Poll ``cond()`` until it returns something truthy and return that value.

    Fails with ``what`` if it has not happened within ``timeout`` seconds. To wait
    for a value that must pass a check, return it from the check:
    ``wait_for(lambda: (m := fetch()) and good(m) and m, what=...)``.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {value!r})")
        time.sleep(0.02)  # polling a condition with a deadline
