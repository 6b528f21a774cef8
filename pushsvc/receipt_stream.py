"""StreamReceipts on one node: its subscribers, their cursors, and how events reach them.

Events come from the receipt log (``store/receipt_log.py``), in batches per
source (the node that recorded them): this node's own batches as its receipts
are flushed, and other nodes' batches over ``NodeService.Deliver`` while this
node has subscribers (it asks its peers for them with a renewed interest). A
batch carries its range (prev, upto] of its source's counter, so a gap (a
batch lost on the way, a peer that did not know of our interest yet) is seen
and read from the log; and the log's committed marks are read every second
while there are subscribers, so even a source whose batches never arrive is
read from the log within about a second.

A ``Subscription`` keeps, per source, how far its events were queued
(``_queued``) and how far they were handed to the caller (``_sent``, what its
cursor says). A live batch that starts where the subscription stands is queued
at once; otherwise the subscription reads the log from its position up to the
hub's mark, a page at a time, whenever its queue is empty -- the same path a
resumed cursor takes. So each event is queued at most once, in order per source.
The bound is on how far a subscription is behind what this node saw recorded:
events queued from live batches plus those of batches that came while it was
reading the log. Past ``buffer``, the caller is cut off with ``ConsumerTooSlow``
naming its cursor, and resuming from it reads the log at the caller's pace
(pages of at most ``buffer`` events, read only when its queue is empty).

The cursor is ``r1.`` + base64url(JSON ``{"p": {source: n}, "t": issued at}``).
A cursor older than the retention window may have missed swept events and is
refused, as is one below a source's swept mark.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import gevent
from gevent.event import Event

from pushsvc.errors import (
    FailedPrecondition,
    InvalidArgument,
    PushError,
    RateLimited,
    StoreUnavailable,
    Unavailable,
)
from pushsvc.health import StoreHealth, within
from pushsvc.store.receipt_log import ReceiptBatch, ReceiptEvent, ReceiptFilter, ReceiptLog

log = logging.getLogger("pushsvc.receipts")

CURSOR_PREFIX = "r1."
MAX_CURSOR_LEN = 64 * 1024
MAX_CURSOR_SOURCES = 10_000
KEEPALIVE = 15.0  # seconds of silence before an empty response with the cursor
PAGE = 500  # events read from the log at once
RESPONSE_EVENTS = 200  # events per response at most
POLL = 1.0  # seconds between reads of the log's marks while there are subscribers
INTEREST = 30.0  # seconds peers send us their batches after we ask (renewed at a third)
LOG_TIMEOUT = 5.0  # seconds a read of the log may take before the stream gives up


class ConsumerTooSlow(RateLimited):
    """The subscriber's queue overflowed."""


@dataclass(frozen=True, slots=True)
class Cursor:
    positions: dict[str, int]
    issued_at: float


def encode_cursor(positions: dict[str, int], issued_at: float) -> str:
    body = json.dumps({"p": positions, "t": round(issued_at, 3)}, separators=(",", ":"))
    return CURSOR_PREFIX + base64.urlsafe_b64encode(body.encode()).decode().rstrip("=")


def decode_cursor(text: str) -> Cursor:
    """Parse a cursor; InvalidArgument with a reason when it is not one of ours."""
    bad = "cursor is malformed: pass a cursor exactly as a StreamReceipts response gave it"
    if len(text) > MAX_CURSOR_LEN or not text.startswith(CURSOR_PREFIX):
        raise InvalidArgument(bad)
    raw = text[len(CURSOR_PREFIX) :]
    try:
        obj = json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
    except (ValueError, binascii.Error):
        raise InvalidArgument(bad) from None
    if not isinstance(obj, dict):
        raise InvalidArgument(bad)
    positions, issued = obj.get("p"), obj.get("t")
    if (
        not isinstance(positions, dict)
        or len(positions) > MAX_CURSOR_SOURCES
        or not isinstance(issued, int | float)
        or isinstance(issued, bool)
        or not all(
            isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in positions.values()
        )
    ):
        raise InvalidArgument(bad)
    return Cursor({str(s): int(n) for s, n in positions.items()}, float(issued))


class _Moved(NamedTuple):
    """In a queue: the cursor moves to ``n`` of ``source`` (past events not queued)."""

    source: str
    n: int


class _Live(NamedTuple):
    """In a queue: an event queued from a live batch (what the bound counts)."""

    event: ReceiptEvent


Item = ReceiptEvent | _Live | _Moved


class Subscription:
    """One StreamReceipts call: its filter, queue and cursor. Driven by the caller's
    greenlet through ``next``; fed by the hub through ``offer``."""

    def __init__(
        self, hub: ReceiptHub, flt: ReceiptFilter, positions: dict[str, int], buffer: int
    ) -> None:
        self._hub = hub
        self.filter = flt
        self._queued = dict(positions)
        self._sent = dict(positions)
        self._queue: deque[Item] = deque()
        self._buffer = buffer
        self._page = max(1, min(PAGE, buffer))
        # The bound: events this subscription is behind by, as far as this node saw
        # them come -- live ones queued, and those of batches that came while it was
        # behind (to be read from the log). A page read from the log for it is
        # bounded by the page size, and read only once its queue is empty.
        self._live = 0
        self._unread = 0
        self._wakeup = Event()
        self._error: PushError | None = None
        self.cancelled = False

    # -- from the hub ---------------------------------------------------------------------

    def offer(self, batch: ReceiptBatch) -> None:
        """A committed batch: queued if it starts where this subscription stands,
        else left for ``next`` to read from the log."""
        if self._error is not None or self.cancelled:
            return
        source = batch.source
        at = self._queued.get(source, 0)
        if batch.upto <= at:
            return  # seen already
        matching = [e for e in batch.events if e.n > at and self.filter.matches(e)]
        if at < batch.prev:
            self._unread += len(matching)  # a gap: read from the log by ``next``
        else:
            self._queue.extend(_Live(e) for e in matching)
            self._live += len(matching)
            self._advance(source, batch.upto)
        if self._live + self._unread > self._buffer:
            self._queue.clear()
            self.fail(
                ConsumerTooSlow(
                    f"consumer fell too far behind (over {self._buffer} events waiting):"
                    f" resume from cursor {self.cursor()}"
                )
            )
        self._wakeup.set()

    def _advance(self, source: str, n: int) -> None:
        self._queued[source] = n
        last = self._queue[-1] if self._queue else None
        if isinstance(last, _Moved) and last.source == source:
            self._queue[-1] = _Moved(source, n)  # one marker per source in a row
        else:
            self._queue.append(_Moved(source, n))

    def fail(self, error: PushError) -> None:
        if self._error is None:
            self._error = error
            self._wakeup.set()

    def wake(self) -> None:
        self._wakeup.set()

    def cancel(self) -> None:
        """The caller went away."""
        self.cancelled = True
        self._wakeup.set()

    # -- the caller's side ------------------------------------------------------------------

    def cursor(self) -> str:
        return encode_cursor(self._sent, time.time())

    def next(self, keepalive: float = KEEPALIVE) -> list[tuple[ReceiptEvent, str]] | None:
        """The next events with the cursor after each; [] after ``keepalive`` seconds
        of silence; None once cancelled. Raises the error that ended the stream."""
        deadline = time.monotonic() + keepalive
        while True:
            self._wakeup.clear()
            if self._error is not None:
                raise self._error
            if self.cancelled:
                return None
            out = self._take()
            if out:
                return out
            if self._catch_up():
                continue
            left = deadline - time.monotonic()
            if left <= 0:
                return []
            self._wakeup.wait(left)

    def _take(self) -> list[tuple[ReceiptEvent, str]]:
        out: list[tuple[ReceiptEvent, str]] = []
        now = time.time()
        while self._queue and len(out) < RESPONSE_EVENTS:
            item = self._queue.popleft()
            if isinstance(item, _Moved):
                self._sent[item.source] = max(self._sent.get(item.source, 0), item.n)
                continue
            if isinstance(item, _Live):
                self._live -= 1
                item = item.event
            self._sent[item.source] = item.n
            out.append((item, encode_cursor(self._sent, now)))
        return out

    def _catch_up(self) -> bool:
        """Read one page of the log for a source this subscription is behind on."""
        for source, mark in list(self._hub.marks.items()):
            at = self._queued.get(source, 0)
            if at >= mark:
                continue
            swept = self._hub.swept.get(source, 0)
            if at < swept:
                raise FailedPrecondition(
                    f"the stream fell behind the receipt retention window: events of node"
                    f" {source} up to {swept} were removed; start again without a cursor"
                )
            events = self._hub.read(source, at, mark, self.filter, self._page)
            now_at = self._queued.get(source, 0)  # a live batch may have come meanwhile
            for event in events:
                if event.n > now_at:
                    self._queue.append(event)
            self._unread = max(0, self._unread - len(events))
            reached = mark if len(events) < self._page else events[-1].n
            if reached > now_at:
                self._advance(source, reached)
            return True
        self._unread = 0  # caught up with everything this node knows of
        return False


class ReceiptHub:
    """This node's StreamReceipts subscribers and what the node knows of the log."""

    def __init__(
        self,
        receipt_log: ReceiptLog | None,
        health: StoreHealth,
        *,
        buffer: int,
        max_subscribers: int,
        ask_peers: Callable[[float], None],
    ) -> None:
        self._log = receipt_log
        self._health = health
        self._buffer = buffer
        self._max = max_subscribers
        self._ask_peers = ask_peers
        #: Per source: every committed event up to it was offered to the subscribers
        #: (or is to be read from the log by those behind).
        self.marks: dict[str, int] = {}
        #: Per source: everything up to it was swept from the log.
        self.swept: dict[str, int] = {}
        self._subs: dict[Subscription, None] = {}
        self._poller: gevent.Greenlet | None = None
        self._closing = False

    @property
    def log(self) -> ReceiptLog | None:
        return self._log

    @property
    def subscribers(self) -> int:
        return len(self._subs)

    def on_batch(self, batch: ReceiptBatch) -> None:
        """A committed batch, of this node or a peer."""
        if batch.upto > self.marks.get(batch.source, 0):
            self.marks[batch.source] = batch.upto
        for sub in tuple(self._subs):
            sub.offer(batch)

    def subscribe(self, flt: ReceiptFilter, cursor: Cursor | None) -> Subscription:
        if self._log is None:
            raise FailedPrecondition(
                "receipt streaming is off on this node (PUSHSVC_RECEIPT_RETENTION is 0)"
            )
        if self._closing:
            raise Unavailable("node is draining: call StreamReceipts on another node")
        if len(self._subs) >= self._max:
            raise RateLimited(
                f"this node serves {self._max} StreamReceipts calls already"
                " (PUSHSVC_RECEIPT_SUBSCRIBERS): try another node or later"
            )
        self._refresh()  # raises StoreUnavailable
        if cursor is None:
            positions = dict(self.marks)
        else:
            age = time.time() - cursor.issued_at
            if age > self._log.retention:
                raise FailedPrecondition(
                    f"cursor is {age:.0f} s old, beyond the receipt retention of"
                    f" {self._log.retention:g} s: events may have been removed; start again"
                    " without a cursor"
                )
            for source, n in cursor.positions.items():
                if n < self.swept.get(source, 0):
                    raise FailedPrecondition(
                        f"cursor is behind the receipt retention window for node {source}:"
                        " events were removed; start again without a cursor"
                    )
            positions = cursor.positions
        sub = Subscription(self, flt, positions, self._buffer)
        self._subs[sub] = None
        if self._poller is None or self._poller.dead:
            self._poller = gevent.spawn(self._poll)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self._subs.pop(sub, None)

    def read(
        self, source: str, after: int, upto: int, flt: ReceiptFilter, limit: int
    ) -> list[ReceiptEvent]:
        """A page of the log, for a subscription catching up (bounded wait)."""
        assert self._log is not None
        try:
            return within(
                LOG_TIMEOUT, "the receipt log", self._log.read, source, after, upto, limit, flt
            )
        except StoreUnavailable as exc:
            self._health.failed(exc)
            raise

    def _refresh(self) -> None:
        """Read the log's marks: sources whose batches did not reach us are read there."""
        assert self._log is not None
        try:
            marks = within(LOG_TIMEOUT, "the receipt log", self._log.marks)
        except StoreUnavailable as exc:
            self._health.failed(exc)
            raise
        moved = False
        for source, mark in marks.items():
            if mark.committed > self.marks.get(source, 0):
                self.marks[source] = mark.committed
                moved = True
            if mark.swept > self.swept.get(source, 0):
                self.swept[source] = mark.swept
        if moved:
            for sub in tuple(self._subs):
                sub.wake()

    def _poll(self) -> None:
        asked = -INTEREST
        while self._subs and not self._closing:
            now = time.monotonic()
            if now - asked >= INTEREST / 3:
                asked = now
                self._ask_peers(INTEREST)
            gevent.sleep(POLL)  # the poll's period, not synchronisation
            try:
                self._refresh()
            except StoreUnavailable:
                pass  # counted; the subscribers wait, and the next round tries again

    def close(self) -> None:
        """Draining: end every stream with the cursor to resume from elsewhere."""
        self._closing = True
        for sub in tuple(self._subs):
            sub.fail(
                Unavailable(f"node is draining: resume from cursor {sub.cursor()} on another node")
            )
        if self._poller is not None:
            self._poller.kill(block=False)
