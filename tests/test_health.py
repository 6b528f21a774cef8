"""StoreHealth: how store failures are reported."""

from __future__ import annotations

import logging

import pytest

from pushsvc.errors import StoreUnavailable
from pushsvc.health import StoreHealth
from pushsvc.metrics import Metrics


def _never_called() -> None:
    raise AssertionError("no probe in these tests")


def test_a_failure_is_logged_once_as_what_it_is(caplog: pytest.LogCaptureFixture) -> None:
    health = StoreHealth(_never_called, Metrics())
    with caplog.at_level(logging.WARNING, logger="pushsvc.store"):
        health.failed(StoreUnavailable("the presence lookup did not answer within 1 s"))
    assert [r.getMessage() for r in caplog.records] == [
        "store unavailable: the presence lookup did not answer within 1 s"
    ]
    assert not any(r.exc_info for r in caplog.records)


def test_failures_after_stop_are_counted_not_reported(caplog: pytest.LogCaptureFixture) -> None:
    """A draining node closes its store last; work still finishing that finds it
    closed is no outage to report."""
    metrics = Metrics()
    health = StoreHealth(_never_called, metrics)
    health.stop()
    with caplog.at_level(logging.WARNING, logger="pushsvc.store"):
        health.failed(
            StoreUnavailable("the message store failed: Cannot use MongoClient after close")
        )
    assert caplog.records == []
    assert health.ok
