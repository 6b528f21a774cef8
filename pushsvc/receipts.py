"""Delivery receipts and acks, batched on their way to the store.

Writing a receipt per frame would put a store write on the hot path of every
delivery; instead they are coalesced (acks keep only the highest seq per user)
and flushed by one greenlet every ``interval`` seconds or when a batch fills:
one ``mark_delivered`` and one ``ack_many`` per flush, whatever the number of
users.
"""

from __future__ import annotations

import gevent
from gevent.event import Event

from pushsvc.errors import StoreUnavailable
from pushsvc.health import StoreHealth
from pushsvc.store.inbox import InboxStore

MAX_PENDING = 100_000  # receipts kept while the store is down; beyond, the oldest go


class Receipts:
    def __init__(
        self, inbox: InboxStore, health: StoreHealth, interval: float = 0.05, batch: int = 2000
    ) -> None:
        self._inbox = inbox
        self._health = health
        self._interval = interval
        self._batch = batch
        self._delivered: dict[tuple[str, str], None] = {}
        self._acks: dict[str, int] = {}
        self._wakeup = Event()
        self._stopping = False
        self._greenlet: gevent.Greenlet | None = None

    def start(self) -> None:
        self._greenlet = gevent.spawn(self._run)

    def delivered(self, message_id: str, user_id: str) -> None:
        self._delivered[(message_id, user_id)] = None
        if len(self._delivered) >= self._batch:
            self._wakeup.set()

    def ack(self, user_id: str, seq: int) -> None:
        if seq > self._acks.get(user_id, 0):
            self._acks[user_id] = seq
            if len(self._acks) >= self._batch:
                self._wakeup.set()

    def _run(self) -> None:
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
        try:
            if delivered:
                self._inbox.mark_delivered(list(delivered))
                delivered = {}
            if acks:
                self._inbox.ack_many(acks)
        except StoreUnavailable as exc:
            self._health.failed(exc)
            delivered.update(self._delivered)
            if len(delivered) > MAX_PENDING:
                delivered = dict(list(delivered.items())[-MAX_PENDING:])
            self._delivered = delivered
            for user_id, seq in acks.items():
                self.ack(user_id, seq)

    def stop(self) -> None:
        self._stopping = True
        self._wakeup.set()
        if self._greenlet is not None:
            self._greenlet.join(timeout=5)
        self.flush()
