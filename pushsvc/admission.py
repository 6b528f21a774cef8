"""Admission: new connections waiting for their welcome.

A connection reads its client's frames from its first moment; its welcome (and
replay) need the store: presence written, the user's latest and acked seq read.
Admission does that for many connections at once -- one presence write and one
read per batch -- at a bounded rate, so a reconnect storm (a drained or lost
node's clients all arriving here) is absorbed instead of timing everyone out:

- connections queue in arrival order; a full queue sheds new ones at once;
- each batch runs with a deadline; a connection not welcomed within
  ``welcome_timeout`` of its arrival -- the store did not answer in time -- is
  closed with 1013 (try again later, after a jittered pause), never left silent;
- a store error retries the batch until those deadlines.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Protocol

import gevent
from gevent.event import Event
from gevent.lock import BoundedSemaphore

from pushsvc.errors import StoreUnavailable
from pushsvc.health import StoreHealth, within
from pushsvc.metrics import Metrics
from pushsvc.protocol import Close
from pushsvc.ratelimit import TokenBucket
from pushsvc.store.inbox import UserStart

log = logging.getLogger("pushsvc.admission")

BATCH = 500  # connections started by one store round
IN_FLIGHT = 2  # batches whose store work may run at once
RETRY_PAUSE = 0.2  # seconds between tries of a batch whose store call failed


class Waiting(Protocol):
    """A connection as admission sees it (``session.Session``)."""

    @property
    def user_id(self) -> str: ...

    @property
    def opened_at(self) -> float: ...

    @property
    def closing(self) -> bool: ...

    def welcome(self, start: UserStart, node_id: str) -> None: ...

    def close(self, reason: Close, text: str | None = None) -> None: ...


StartBatch = Callable[[Sequence[str]], dict[str, UserStart]]


class Admission:
    def __init__(
        self,
        start_batch: StartBatch,
        node_id: str,
        *,
        rate: float,
        queue_size: int,
        welcome_timeout: float,
        metrics: Metrics,
        health: StoreHealth,
    ) -> None:
        self._start_batch = start_batch
        self._node_id = node_id
        self._bucket = TokenBucket(rate, max(1, min(BATCH, int(rate))))
        self._rate = rate
        self._queue: deque[Waiting] = deque()
        self._queue_size = queue_size
        self._timeout = welcome_timeout
        self._metrics = metrics
        self._health = health
        self._wakeup = Event()
        self._slots = BoundedSemaphore(IN_FLIGHT)
        self._greenlet: gevent.Greenlet | None = None
        metrics.gauge(
            "pushsvc_connects_waiting",
            "Connections upgraded and waiting for their welcome",
            lambda: float(len(self._queue)),
        )

    def admit(self, conn: Waiting) -> None:
        if len(self._queue) >= self._queue_size:
            self._shed(conn, "queue full")
            return
        self._queue.append(conn)
        self._wakeup.set()

    def start(self) -> None:
        self._greenlet = gevent.spawn(self._run)

    def stop(self) -> None:
        if self._greenlet is not None:
            self._greenlet.kill(block=False)

    def _shed(self, conn: Waiting, why: str) -> None:
        self._metrics.connects_shed.labels(why).inc()
        conn.close(Close.TRY_AGAIN)

    def _run(self) -> None:
        while True:
            self._wakeup.wait()
            self._wakeup.clear()
            while self._queue:
                self._expire(time.monotonic())
                batch = self._take()
                if not batch:
                    if self._queue:
                        # Out of tokens: wait for the bucket to refill a little.
                        gevent.sleep(min(1.0, max(1, len(self._queue)) / max(self._rate, 1.0)))
                    continue
                self._slots.acquire()
                gevent.spawn(self._admit_batch, batch)
                # Its greenlet holds the batch; this loop must not while it waits for
                # the next connects, or closed sessions would stay alive until then.
                del batch

    def _take(self) -> list[Waiting]:
        batch: list[Waiting] = []
        while self._queue and len(batch) < BATCH:
            conn = self._queue[0]
            if conn.closing:
                self._queue.popleft()
                continue
            if not self._bucket.take():
                break
            batch.append(self._queue.popleft())
        return batch

    def _expire(self, now: float) -> None:
        """Shed whoever waited longer than the welcome timeout."""
        while self._queue and (
            self._queue[0].closing or now - self._queue[0].opened_at > self._timeout
        ):
            conn = self._queue.popleft()
            if not conn.closing:
                self._shed(conn, "store too slow")

    def _admit_batch(self, batch: list[Waiting]) -> None:
        give_up = False
        try:
            while True:
                deadline = min(c.opened_at for c in batch) + self._timeout
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                users = list(dict.fromkeys(c.user_id for c in batch if not c.closing))
                if not users:
                    return
                try:
                    # On a timeout the call finishes on its own; nobody waits for it.
                    starts = within(left, "the store", self._start_batch, users)
                except StoreUnavailable as exc:
                    self._health.failed(exc)
                    gevent.sleep(RETRY_PAUSE)  # the store failed: try again until the deadline
                    continue
                except Exception:
                    log.exception("starting connections failed")
                    give_up = True
                    break
                for conn in batch:
                    if not conn.closing:
                        conn.welcome(starts.get(conn.user_id, UserStart(0, 0)), self._node_id)
                return
            now = time.monotonic()
            for conn in batch:
                if not conn.closing:
                    if give_up or now - conn.opened_at >= self._timeout:
                        self._shed(conn, "store too slow")
                    else:
                        self._queue.appendleft(conn)  # not its turn to give up yet
            self._wakeup.set()
        finally:
            self._slots.release()
