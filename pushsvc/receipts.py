"""Delivery receipts and acks, batched on their way to the store and the receipt log.

Writing a receipt per frame would put a store write on the hot path of every
delivery; instead they are coalesced (acks keep only the highest seq per user)
and flushed by one greenlet every ``interval`` seconds or when a batch fills:
one ``mark_delivered`` and one ``ack_many`` per flush, whatever the number of
users.

With a receipt log (``StreamReceipts``), each flush also records one event per
(message, recipient): delivered ones with the seq their frame carried, and, for
an ack of seq N by a user whose acked seq was A, one per stored message in
(A, N] -- resolved by one inbox query. The events are appended
before the acks are stored: an ack is never stored without its events (a
concurrent ack on another node that reads the raised acked seq reports only
the range above it). The committed batch is handed to ``on_batch`` (the node:
local subscribers and peers).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import gevent
from gevent.event import Event

from pushsvc.errors import StoreUnavailable
from pushsvc.health import StoreHealth
from pushsvc.owners import owner_of
from pushsvc.store.inbox import InboxStore
from pushsvc.store.receipt_log import Kind, Receipt, ReceiptBatch, ReceiptLog

MAX_PENDING = 100_000  # receipts kept while the store is down; beyond, the oldest go


class Receipts:
    def __init__(
        self,
        inbox: InboxStore,
        health: StoreHealth,
        interval: float = 0.05,
        batch: int = 2000,
        receipt_log: ReceiptLog | None = None,
        on_batch: Callable[[ReceiptBatch], None] | None = None,
    ) -> None:
        self._inbox = inbox
        self._health = health
        self._interval = interval
        self._batch = batch
        self._log = receipt_log
        self._on_batch = on_batch
        # (message id, user id) -> (seq, the message's expiry or None if unknown)
        self._delivered: dict[tuple[str, str], tuple[int, float | None]] = {}
        self._acks: dict[str, int] = {}
        self._wakeup = Event()
        self._stopping = False
        self._greenlet: gevent.Greenlet | None = None

    def start(self) -> None:
        self._greenlet = gevent.spawn(self._run)

    def delivered(self, message_id: str, user_id: str, seq: int, expires_at: float | None) -> None:
        self._delivered[(message_id, user_id)] = (seq, expires_at)
        if len(self._delivered) >= self._batch:
            self._wakeup.set()

    def ack(self, user_id: str, seq: int) -> None:
        if seq > self._acks.get(user_id, 0):
            self._acks[user_id] = seq
            if len(self._acks) >= self._batch:
                self._wakeup.set()

    def _run(self) -> None:
        if self._log is not None:
            try:
                self._log.prepare()
            except StoreUnavailable:
                pass  # the first flush that has events tries again
        while not self._stopping:
            self._wakeup.wait(self._interval)  # the flush period, or a full batch
            self._wakeup.clear()
            self.flush()

    def flush(self) -> None:
        """Write what is pending; on a store failure keep it for the next round."""
        # Both taken at once, receipts written first: a message is never
        # reported acked but not delivered.
        delivered, self._delivered = self._delivered, {}
        acks, self._acks = self._acks, {}
        batch: ReceiptBatch | None = None
        now = time.time()
        try:
            events = self._events(delivered, acks, now) if self._log is not None else []
            if delivered:
                self._inbox.mark_delivered([(m, u, exp) for (m, u), (_, exp) in delivered.items()])
            if events and self._log is not None:
                batch = self._log.append(events, now)
            if acks:
                self._inbox.ack_many(acks)
        except StoreUnavailable as exc:
            # All of it again next time: the writes are idempotent, and events
            # already recorded are not recorded twice.
            self._health.failed(exc)
            delivered.update(self._delivered)
            if len(delivered) > MAX_PENDING:
                delivered = dict(list(delivered.items())[-MAX_PENDING:])
            self._delivered = delivered
            for user_id, seq in acks.items():
                self.ack(user_id, seq)
        if batch is not None and batch.events and self._on_batch is not None:
            self._on_batch(batch)

    def _events(
        self,
        delivered: dict[tuple[str, str], tuple[int, float | None]],
        acks: dict[str, int],
        now: float,
    ) -> list[Receipt]:
        """The events of this flush: deliveries with the seq their frame carried; acks
        resolved against the inbox."""
        assert self._log is not None
        delivered_kind = Kind.DELIVERED
        events: list[Receipt] = [
            Receipt(delivered_kind, message_id, user_id, seq, owner_of(message_id), now)
            for (message_id, user_id), (seq, _) in delivered.items()
        ]
        if acks:
            starts = self._inbox.user_starts(list(acks))
            ranges = {
                u: (starts[u].acked_seq, seq)
                for u, seq in acks.items()
                if u in starts and seq > starts[u].acked_seq
            }
            for user_id, seq, message_id in self._log.acked_messages(ranges, now):
                events.append(
                    Receipt(Kind.ACKED, message_id, user_id, seq, owner_of(message_id), now)
                )
        return events

    def stop(self) -> None:
        self._stopping = True
        self._wakeup.set()
        if self._greenlet is not None:
            self._greenlet.join(timeout=5)
        self.flush()
