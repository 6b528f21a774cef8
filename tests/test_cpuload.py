"""The node's CPU share and the GIL switch interval it sets (cpuload.py)."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest

from pushsvc.cpuload import HIGH, LONG, LOW, SHORT, CpuLoad, IntervalPolicy


def test_short_while_the_loop_has_room_long_once_saturated_with_hysteresis() -> None:
    policy = IntervalPolicy()
    assert policy.interval == SHORT
    assert [policy.observe(b) for b in (0.0, 0.5, HIGH - 0.01)] == [None, None, None]
    assert policy.observe(HIGH) == LONG
    # Between the two thresholds it keeps what it has, either way.
    assert [policy.observe(b) for b in (0.99, LOW, (LOW + HIGH) / 2)] == [None, None, None]
    assert policy.observe(LOW - 0.01) == SHORT
    assert policy.observe((LOW + HIGH) / 2) is None
    assert policy.interval == SHORT
    assert SHORT < LONG and LOW < HIGH


class Clocks:
    """The process's CPU time and the wall clock, moved by the test."""

    def __init__(self) -> None:
        self.cpu = 100.0
        self.wall = 5000.0

    def period(self, seconds: float, busy: float) -> None:
        self.wall += seconds
        self.cpu += seconds * busy


@pytest.fixture
def restore_interval() -> Iterator[None]:
    before = sys.getswitchinterval()
    yield
    sys.setswitchinterval(before)


def test_the_load_is_cpu_over_wall_time_and_sets_the_interval(restore_interval: None) -> None:
    clocks = Clocks()
    load = CpuLoad(cpu_clock=lambda: clocks.cpu, wall_clock=lambda: clocks.wall)
    sys.setswitchinterval(0.01)
    load.start()
    load.stop()  # measured by hand below, not by its greenlet
    assert sys.getswitchinterval() == SHORT
    seen = []
    for seconds, busy in [(1.0, 0.4), (2.0, 0.97), (1.0, 1.0), (1.0, 0.8), (0.5, 0.2)]:
        clocks.period(seconds, busy)
        load.measure()
        seen.append((round(load.busy, 6), sys.getswitchinterval()))
    assert seen == [
        (0.4, SHORT),
        (0.97, LONG),  # saturated: throughput first
        (1.0, LONG),
        (0.8, LONG),  # between the thresholds: kept
        (0.2, SHORT),  # room again: latency first
    ]
    # A clock that did not move (or went back) changes nothing.
    load.measure()
    assert (round(load.busy, 6), sys.getswitchinterval()) == (0.2, SHORT)
