"""Whether stored writes work right now: what ``/readyz`` and the logs say.

Every store failure anywhere in the node is reported here: readiness turns
false at once, the failure is counted, and it is logged once as what it is (one
line when the store goes away, one when it is back), not as a traceback per
call. A probe (a small durable write) runs every ``PROBE_INTERVAL`` seconds, so
a store that fails while no traffic flows is noticed within that time, and a
store that came back is noticed the same way. While stored pushes are being
written (``wrote``) they are that proof, and the probe is skipped: a round trip
less every ``PROBE_INTERVAL`` on a busy node. (A store that hangs right after a
push is then noticed up to ``WROTE_RECENTLY`` later than by the probe alone.)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import gevent

from pushsvc.errors import StoreUnavailable
from pushsvc.metrics import Metrics

log = logging.getLogger("pushsvc.store")

PROBE_INTERVAL = 0.5
PROBE_TIMEOUT = 1.0
#: A stored push this recent stands in for the probe (twice the period: pushes that
#: take about as long as the period, as on a slow store, still replace it).
WROTE_RECENTLY = 2 * PROBE_INTERVAL
_NO_ANSWER = f"the store did not answer within {PROBE_TIMEOUT:g} s"
LOG_QUIET = 30.0  # seconds: a store that keeps failing and recovering is logged once per this

P = ParamSpec("P")
T = TypeVar("T")


def within(timeout: float, what: str, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """``fn(*args)`` with a deadline on waiting for it, never on the call itself.

    The call runs in a greenlet of its own and is left to finish when the time
    is up (StoreUnavailable is raised here). Interrupting a database driver in
    the middle of a call (``gevent.Timeout``) would break its locks and pools;
    this only stops waiting.
    """
    outcome: list[T | BaseException] = []

    def run() -> None:
        try:
            outcome.append(fn(*args, **kwargs))
        except Exception as exc:  # handed to the waiting caller below
            outcome.append(exc)

    worker = gevent.spawn(run)
    worker.join(timeout)
    if not outcome:
        raise StoreUnavailable(f"{what} did not answer within {timeout:g} s")
    result = outcome[0]
    if isinstance(result, BaseException):
        raise result
    return result


class StoreHealth:
    __slots__ = (
        "_greenlet",
        "_logged_at",
        "_metrics",
        "_probe",
        "_probing",
        "_quiet",
        "_stopped",
        "_why",
        "_wrote_at",
        "ok",
    )

    def __init__(self, probe: Callable[[], None], metrics: Metrics) -> None:
        self._probe = probe
        self._metrics = metrics
        self._greenlet: gevent.Greenlet | None = None
        self._probing: gevent.Greenlet | None = None
        self._why = ""
        self._logged_at = -LOG_QUIET
        self._quiet = 0  # failures since the last line logged
        self._wrote_at = -PROBE_INTERVAL
        self._stopped = False
        self.ok = True

    def failed(self, exc: BaseException) -> None:
        """A store call failed (StoreUnavailable, or a timeout waiting for it)."""
        self._metrics.store_errors.inc()
        if self._stopped:
            # The node is shutting down and has closed its store: work still
            # finishing (a replay read, a flush) finds it closed; no outage.
            return
        why = str(exc) or type(exc).__name__
        if self.ok:
            now = time.monotonic()
            if now - self._logged_at >= LOG_QUIET:
                again = (
                    f" ({self._quiet} more outages since the last report)" if self._quiet else ""
                )
                log.warning("store unavailable: %s%s", why, again)
                self._logged_at = now
                self._quiet = 0
            else:
                self._quiet += 1
        self.ok = False
        self._why = why

    def wrote(self) -> None:
        """A durable write (a stored push) just succeeded: no probe is needed
        for ``WROTE_RECENTLY`` while the store is deemed available."""
        self._wrote_at = time.monotonic()

    def succeeded(self) -> None:
        if not self.ok and not self._quiet:
            log.info("store available again")
        self.ok = True
        self._why = ""

    @property
    def reason(self) -> str:
        return "ok" if self.ok else f"store unavailable: {self._why}"

    def start(self) -> None:
        self._greenlet = gevent.spawn(self._run)

    def stop(self) -> None:
        self._stopped = True
        if self._greenlet is not None:
            self._greenlet.kill(block=False)

    def check(self) -> None:
        """Probe once, with a deadline. A probe still running from last time is
        not joined by another: a hung store is not handed a pile of probes."""
        if self._probing is not None and not self._probing.dead:
            self._probing.join(PROBE_TIMEOUT)
            if not self._probing.dead:
                self.failed(
                    StoreUnavailable(f"the store did not answer within {PROBE_TIMEOUT:g} s")
                )
                return
        outcome: list[BaseException | None] = []

        def probe() -> None:
            try:
                self._probe()
                outcome.append(None)
            except StoreUnavailable as exc:
                outcome.append(exc)

        self._probing = gevent.spawn(probe)
        self._probing.join(PROBE_TIMEOUT)
        if not outcome:
            self.failed(StoreUnavailable(_NO_ANSWER))
        elif outcome[0] is not None:
            self.failed(outcome[0])
        else:
            self.succeeded()

    def _run(self) -> None:
        while True:
            if not self.ok or time.monotonic() - self._wrote_at >= WROTE_RECENTLY:
                self.check()
            gevent.sleep(PROBE_INTERVAL)  # the probe's period, not synchronisation
