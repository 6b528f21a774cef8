"""The order in which one connection receives its user's stored messages.

A plain state machine, sans I/O: events in (the start point is known, a page
of the inbox was read, a read failed, a live message was announced, the client
acked), actions out (send this entry, read the inbox after a seq now or a
little later). No gevent, no socket, no store: ``session.py`` drives it, and
``tests/test_ordering.py`` drives it through arbitrary interleavings.

What it guarantees, given the store's seq-visibility invariant (a hole below a
visible entry is a deletion; a seq still being written is reported as
``blocked_at``, see ``store/inbox.py``):

- Seqs go out strictly increasing: never a duplicate, never out of order.
- No gap: the connection moves past a seq only by sending it, or because the
  store showed it is gone (a hole below a visible entry, or a seq announced
  before a complete read that did not return it). Never because time passed:
  a seq in flight blocks the connection, which reads again later.
- A client acks only what was sent on this connection (or its start point).

How it stays live: a live message with the next seq is sent at once; any
other (a gap: something was committed that this connection has not read)
starts a read. A read that started before an announcement may have missed
it, so the page is followed by another read.

Each read carries a token, and only the answer to the latest read counts: a
``ReadLater`` whose pause ended may already be at the store when a ``Read``
replaces it, and its page, begun before announcements the newer read was issued
after, must not be taken for the newer one's (it would skip a seq still in flight).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Generic, NamedTuple, TypeVar

T = TypeVar("T")


class Send(NamedTuple, Generic[T]):
    """Write this entry to the connection (a tuple: one is made per message)."""

    seq: int
    item: T


@dataclass(frozen=True, slots=True)
class Read:
    """Read the inbox after ``after`` now (cancelling a pending ``ReadLater``); its
    answer is given back with ``token``."""

    after: int
    token: int = field(default=0, compare=False)


@dataclass(frozen=True, slots=True)
class ReadLater:
    """Read the inbox after ``after`` after a pause: a seq is still being
    written, or the store failed. Polling, never skipping. Its answer is given
    back with ``token``."""

    after: int
    token: int = field(default=0, compare=False)


Action = Send[T] | Read | ReadLater


class AckError(ValueError):
    """The client acked a seq this connection never sent."""


class _Reading(Enum):
    IDLE = 0
    NOW = 1  # a Read is outstanding
    LATER = 2  # a ReadLater is outstanding


class Ordering(Generic[T]):
    """One connection's position in its user's seqs."""

    __slots__ = (
        "_announced",
        "_announced_at_issue",
        "_blocked_at",
        "_closed",
        "_reading",
        "_token",
        "acked",
        "last_sent",
        "position",
        "started",
    )

    def __init__(self) -> None:
        #: Every seq <= position was sent here or is gone from the store.
        self.position = 0
        #: The highest seq sent as a frame (or the start point): acks may not pass it.
        self.last_sent = 0
        self.acked = 0
        self.started = False
        self._closed = False
        self._reading = _Reading.IDLE
        self._announced = 0  # highest live seq seen
        self._announced_at_issue = 0  # _announced when the outstanding read was issued
        self._blocked_at: int | None = None
        self._token = 0  # the latest read's: only its answer counts

    # -- state, for the driver and the tests ---------------------------------------

    @property
    def live(self) -> bool:
        """Caught up: no read outstanding, nothing announced beyond the position."""
        return (
            self.started
            and self._reading is _Reading.IDLE
            and self._blocked_at is None
            and self._announced <= self.position
        )

    @property
    def blocked_at(self) -> int | None:
        return self._blocked_at

    @property
    def reading(self) -> bool:
        return self._reading is not _Reading.IDLE

    # -- events ---------------------------------------------------------------------

    def start(self, after: int, latest: int | None = None) -> list[Action[T]]:
        """The client has everything up to ``after``: replay from there.

        ``latest`` is the user's latest seq as the store gave it at the welcome
        (every seq committed before that read is at or below it). Nothing above
        ``after`` to replay: the connection is live at once, no read. A seq
        committed later is announced to it live (it was registered for live
        messages before that read), and the periodic position check catches an
        announcement that was lost.
        """
        if self.started or self._closed:
            return []
        self.started = True
        self.position = self.last_sent = max(0, after)
        if latest is not None and latest <= self.position and self._announced <= self.position:
            return []
        return [self._read_now()]

    def on_page(
        self,
        entries: Sequence[tuple[int, T]],
        *,
        blocked_at: int | None = None,
        more: bool = False,
        token: int | None = None,
    ) -> list[Action[T]]:
        """The outstanding read returned (entries ascending, as ``InboxPage`` gives).
        ``token``: the read's; the answer to an earlier read than the latest changes
        nothing (None: the latest's)."""
        if self._closed or not self.started or self._stale(token):
            return []
        self._reading = _Reading.IDLE
        actions: list[Action[T]] = []
        for seq, item in entries:
            if seq > self.position:
                actions.append(self._send(seq, item))
        if self._blocked_at is not None and self.position >= self._blocked_at:
            self._blocked_at = None
        if more:
            actions.append(self._read_now())
        elif blocked_at is not None:
            if blocked_at <= self.position:
                # Sent live while this page was read: it says nothing beyond.
                actions.append(self._read_now())
            else:
                self._blocked_at = blocked_at
                if self._announced > self._announced_at_issue:
                    actions.append(self._read_now())  # announced since: may have committed
                else:
                    actions.append(self._read_later())
        else:
            self._blocked_at = None
            if self._announced > self.position:
                if self._announced <= self._announced_at_issue:
                    # Committed before this complete read began, yet not returned:
                    # deleted (expired). So is everything between.
                    self.position = self._announced
                else:
                    actions.append(self._read_now())
        return actions

    def on_read_failed(self, token: int | None = None) -> list[Action[T]]:
        """The outstanding read failed (store unavailable): try again later."""
        if self._closed or not self.started or self._stale(token):
            return []
        self._reading = _Reading.IDLE
        return [self._read_later()]

    def on_live(self, seq: int, item: T) -> list[Action[T]]:
        """A message was committed with this seq for the user (announced live)."""
        if self._closed or seq <= self.position:
            return []
        if not self.started:
            self._announced = max(self._announced, seq)
            return []  # the start's read covers it
        if seq == self.position + 1:
            actions: list[Action[T]] = [self._send(seq, item)]
            if self._blocked_at is not None and self.position >= self._blocked_at:
                self._blocked_at = None
                # Unblocked: what was committed beyond it was never announced here.
                if self._reading is not _Reading.NOW:
                    actions.append(self._read_now())
            return actions
        self._announced = max(self._announced, seq)
        if self._reading is _Reading.IDLE:
            return [self._read_now()]
        # NOW: the page handler sees the newer announcement and reads again.
        # LATER: blocked or failing; the pending read comes soon enough.
        return []

    def take_live(self, seq: int) -> bool:
        """``on_live`` for its common case, without making actions: ``seq`` is the
        next one and nothing waits on the position (started, open, not blocked).
        True: the caller sends it now (the position moved to it), as the one
        ``Send`` ``on_live`` would return. False: nothing changed; call ``on_live``."""
        if (
            seq == self.position + 1
            and self.started
            and not self._closed
            and self._blocked_at is None
        ):
            self.position = self.last_sent = seq
            return True
        return False

    def on_behind(self, seq: int) -> list[Action[T]]:
        """The store says the user's seqs reach ``seq`` (a periodic check of every
        connection's position, for messages whose announcement was lost): read if
        this connection is behind. ``seq`` may still be in flight: the read then
        reports it blocked, and nothing is skipped."""
        if self._closed or not self.started or seq <= self.position:
            return []
        self._announced = max(self._announced, seq)
        if self._reading is _Reading.IDLE:
            return [self._read_now()]
        return []

    def on_ack(self, seq: int) -> bool:
        """A cumulative ack; True when it raises the acked seq (worth storing)."""
        if seq > self.last_sent:
            raise AckError(
                f"ack of seq {seq}, but this connection was sent only up to {self.last_sent}"
            )
        if seq <= self.acked:
            return False
        self.acked = seq
        return True

    def close(self) -> None:
        self._closed = True

    # -- helpers --------------------------------------------------------------------

    def _send(self, seq: int, item: T) -> Send[T]:
        self.position = self.last_sent = seq
        return Send(seq, item)

    def _read_now(self) -> Read:
        self._reading = _Reading.NOW
        self._announced_at_issue = self._announced
        self._token += 1
        return Read(self.position, self._token)

    def _read_later(self) -> ReadLater:
        self._reading = _Reading.LATER
        self._announced_at_issue = self._announced
        self._token += 1
        return ReadLater(self.position, self._token)

    def _stale(self, token: int | None) -> bool:
        """An answer to a read issued before the latest one."""
        return token is not None and token != self._token
