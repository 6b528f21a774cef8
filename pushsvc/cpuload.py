"""How much CPU the node uses, and the GIL switch interval that follows from it.

A node's Python runs under one GIL, so a process that uses about one core is
saturated, however many cores the host has: the share of wall time the process
spent on the CPU over the last ``PERIOD`` is exported
(``pushsvc_cpu_busy_ratio``) and sets how long a thread may hold the GIL.

OS threads wait for the GIL while the event loop runs Python: grpcio's
completion-queue pollers, which hand every RPC event over to the loop, and the
embedded store's SQLite thread. A short interval bounds their wait -- what a
one-message push's latency is made of at moderate load -- and costs throughput:
every forced switch is a context switch. Once the process is saturated, latency
is queueing and throughput is what shortens it. So (``IntervalPolicy``,
sans-I/O): short while there is room, long once the process used ``HIGH`` of a
core over a ``PERIOD``, short again below ``LOW``. (The main thread's own share
is no such signal: with grpcio's pollers taking their part, a node saturated
with one-message calls showed its main thread at about 0.65 of the core.)
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable

import gevent

log = logging.getLogger("pushsvc.cpuload")

SHORT = 0.0005  # seconds: the interval while there is room (latency first)
LONG = 0.005  # CPython's default: once saturated (throughput first)
HIGH = 0.9  # share of a core over a period from which the process counts as saturated
LOW = 0.7  # share under which it has room again
PERIOD = 1.0  # seconds per measurement


class IntervalPolicy:
    """The switch interval for the measured CPU share, with hysteresis."""

    def __init__(self) -> None:
        self.interval = SHORT

    def observe(self, busy: float) -> float | None:
        """The busy share of the last period; the new interval if it changes."""
        if self.interval == SHORT and busy >= HIGH:
            self.interval = LONG
            return LONG
        if self.interval == LONG and busy < LOW:
            self.interval = SHORT
            return SHORT
        return None


class CpuLoad:
    """Measures the process's CPU share every ``PERIOD`` and applies the policy."""

    def __init__(
        self,
        cpu_clock: Callable[[], float] = time.process_time,
        wall_clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.busy = 0.0  # the last period's share
        self._policy = IntervalPolicy()
        self._cpu_clock = cpu_clock  # the process's CPU time, all threads
        self._wall_clock = wall_clock
        self._since = (cpu_clock(), wall_clock())
        self._greenlet: gevent.Greenlet | None = None

    def start(self) -> None:
        sys.setswitchinterval(self._policy.interval)
        self._since = (self._cpu_clock(), self._wall_clock())
        self._greenlet = gevent.spawn(self._run)

    def stop(self) -> None:
        if self._greenlet is not None:
            self._greenlet.kill(block=False)

    def _run(self) -> None:
        while True:
            gevent.sleep(PERIOD)  # the measurement's period, not synchronisation
            self.measure()

    def measure(self) -> None:
        """The share since the last measurement; the switch interval that follows."""
        cpu, wall = self._cpu_clock(), self._wall_clock()
        was_cpu, was_wall = self._since
        self._since = (cpu, wall)
        if wall <= was_wall:
            return
        self.busy = min(1.0, max(0.0, (cpu - was_cpu) / (wall - was_wall)))
        changed = self._policy.observe(self.busy)
        if changed is not None:
            sys.setswitchinterval(changed)
            log.info(
                "node saturated: longer GIL switch interval"
                if changed == LONG
                else "node has room again: short GIL switch interval",
                extra={"busy": round(self.busy, 3), "switch_interval": changed},
            )
