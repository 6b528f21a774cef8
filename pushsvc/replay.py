"""Reading inbox pages for connections: a bounded pool of workers.

A connection never reads the store itself (it has no greenlet of its own, and
a thousand connections replaying at once must not open a thousand store
calls): it asks for the page after a seq, now or a little later, and the page
comes back as an event. "Later" is how a connection waits for a seq still
being written, or for a failing store: it polls with a growing pause, and only
ever moves on when the store shows the seq committed or gone. Every read is
answered, with the token the connection gave it (its ordering takes only the
latest read's answer: two reads of one connection may be under way at once).
"""

from __future__ import annotations

import time
from typing import Any, Protocol

import gevent
from gevent.queue import Queue

from pushsvc.errors import StoreUnavailable
from pushsvc.health import StoreHealth
from pushsvc.store.inbox import InboxPage, InboxStore

WORKERS = 32
LATER_MIN = 0.25  # seconds before re-reading a blocked or failed page, doubling...
LATER_MAX = 5.0  # ...up to this


class Reader(Protocol):
    """A connection as the replay workers see it (``session.Session``)."""

    @property
    def user_id(self) -> str: ...

    @property
    def closing(self) -> bool: ...

    @property
    def read_page_size(self) -> int: ...

    def on_page(self, page: InboxPage, token: int) -> None: ...

    def on_read_failed(self, token: int) -> None: ...


class Replay:
    def __init__(self, inbox: InboxStore, health: StoreHealth, workers: int = WORKERS) -> None:
        self._inbox = inbox
        self._health = health
        self._queue: Queue[tuple[Reader, int, int]] = Queue()  # reader, after, token
        self._later: dict[Reader, tuple[Any, float]] = {}  # reader -> (timer, its pause)
        self._workers = [gevent.spawn(self._work) for _ in range(workers)]

    def read(self, reader: Reader, after: int, later: bool, token: int) -> None:
        pending = self._later.get(reader)
        if not later:
            if pending is not None:
                pending[0].stop()
                del self._later[reader]
            self._enqueue(reader, after, token)
            return
        pause = LATER_MIN if pending is None else min(LATER_MAX, pending[1] * 2)
        if pending is not None:
            pending[0].stop()
        timer = gevent.get_hub().loop.timer(pause)
        self._later[reader] = (timer, pause)
        timer.start(self._due, reader, after, token)

    def forget(self, reader: Reader) -> None:
        """The connection is gone: drop its pending timer."""
        pending = self._later.pop(reader, None)
        if pending is not None:
            pending[0].stop()

    def stop(self) -> None:
        for timer, _ in self._later.values():
            timer.stop()
        self._later.clear()
        gevent.killall(self._workers, block=False)

    def _due(self, reader: Reader, after: int, token: int) -> None:
        # Runs in the event loop, not a greenlet: only hand it to a worker. The
        # pause is remembered, so the next "later" of this reader waits longer.
        self._enqueue(reader, after, token)

    def _enqueue(self, reader: Reader, after: int, token: int) -> None:
        if not reader.closing:
            self._queue.put_nowait((reader, after, token))

    def _work(self) -> None:
        while True:
            # One read per call: nothing of it (the reader, its page) stays referenced
            # while this worker waits for the next, or a closed session would.
            self._read(*self._queue.get())

    def _read(self, reader: Reader, after: int, token: int) -> None:
        if reader.closing:
            return
        try:
            page = self._inbox.read_inbox(reader.user_id, after, reader.read_page_size, time.time())
        except StoreUnavailable as exc:
            self._health.failed(exc)
            reader.on_read_failed(token)
            return
        if page.blocked_at is None:
            # Progress: the next wait starts short. A pause still running belongs to
            # a later read than this one (which its connection will not take): kept.
            pending = self._later.get(reader)
            if pending is not None and not pending[0].active:
                del self._later[reader]
        reader.on_page(page, token)
