"""The inbox: per-user seqs, message bodies, acks and delivery receipts (DESIGN §3).

``EmbeddedStore`` (SQLite, one node) and ``MongoInbox`` (the fleet) implement it
and pass the one behavioural suite in ``tests/store/``. Every method is
synchronous and cooperative under gevent; every method raises
``StoreUnavailable`` when the backend cannot be reached.

The seq-visibility invariant
----------------------------
Per user, seqs are strictly increasing, and a reader sees seq N+1 only once N is
visible or durably gone (expired, or abandoned by a push that failed). Readers
therefore never wait on a clock to move past a hole: a hole below a visible
entry is always a deletion, and a seq whose push is still in flight is reported
as ``InboxPage.blocked_at`` -- the reader stops there and reads again later.

Group commit
------------
``store_messages`` is the one write path for pushes. Concurrent callers (pushes
from many greenlets, a ``PushStream``, a ``PushBatch``) are coalesced by the
store into shared transactions or round trips; each call returns once its own
requests are durable, with one outcome per request.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from pushsvc.errors import InvalidArgument, PushError
from pushsvc.messages import Message

IDEMPOTENCY_WINDOW = 24 * 3600.0


class StoreRequest(NamedTuple):
    """One push to store: a body for the inboxes of ``user_ids``."""

    message: Message  # expires_at must be set
    user_ids: tuple[str, ...]  # distinct, 1 or more
    idempotency_key: str = ""


class StoreResult(NamedTuple):
    """What storing one request did: the message id and each recipient's seq."""

    message_id: str
    seqs: tuple[int, ...]  # in the order of the request's user ids
    duplicate: bool = False  # the idempotency key was seen: nothing new stored


@dataclass(frozen=True, slots=True)
class InboxEntry:
    """One stored message in one user's inbox."""

    user_id: str
    seq: int
    message: Message


@dataclass(frozen=True, slots=True)
class InboxPage:
    """A page of one user's inbox after a seq.

    ``entries`` are committed, unexpired, ascending and all above the seq asked
    for; holes between them are deletions (expired or abandoned seqs), never
    writes in flight. ``blocked_at`` is the first seq above the last entry whose
    push has not committed yet (nothing at or after it is in the page): read
    again later. ``more`` says the page was cut at the limit.
    """

    entries: tuple[InboxEntry, ...]
    blocked_at: int | None = None
    more: bool = False


class UserStart(NamedTuple):
    """What a new connection needs of its user: the latest seq and the acked seq.

    ``latest_seq`` is a lower bound of the newest seq allocated to the user (a
    push in flight on another node may hold a higher one), and it may name a
    push that has not committed yet, or never will: it says where the inbox
    has got to, not that every seq up to it can be read.
    """

    latest_seq: int
    acked_seq: int


#: A delivery receipt as stored: (message id, user id, the message's expiry or None).
DeliveredMark = tuple[str, str, float | None]


@dataclass(frozen=True, slots=True)
class RecipientStatus:
    user_id: str
    seq: int
    delivered: bool
    acked: bool


def check_request(request: StoreRequest) -> float:
    """What every store checks before writing; returns the message's expiry."""
    if request.message.expires_at is None:
        raise InvalidArgument("message.expires_at is not set: only messages with a TTL are stored")
    if not request.user_ids:
        raise InvalidArgument("user_ids is empty: name at least one recipient")
    return float(request.message.expires_at)


class InboxStore(ABC):
    """Everything a node keeps of messages outside its own memory."""

    def store_messages(
        self, requests: Sequence[StoreRequest], now: float
    ) -> list[StoreResult | PushError]:
        """Store each request: the body once, an entry in each recipient's inbox.

        One outcome per request, in order: a ``StoreResult``, or the
        ``PushError`` that request failed with (``InvalidArgument`` for a
        malformed request or a message id already stored, ``StoreUnavailable``
        ...). A failed request leaves nothing visible. Requests of one call that
        name the same user get that user's seqs in list order. With an
        idempotency key seen within ``IDEMPOTENCY_WINDOW``, a request stores
        nothing and returns the first push's id and seqs with
        ``duplicate=True``. Durable when it returns.
        """
        outcomes: list[StoreResult | PushError | None] = []
        valid: list[StoreRequest] = []
        for request in requests:
            try:
                check_request(request)
            except PushError as exc:
                outcomes.append(exc)
                continue
            valid.append(request)
            outcomes.append(None)
        if valid:
            stored = iter(self._store_checked(valid, now))
            outcomes = [o if o is not None else next(stored) for o in outcomes]
        return [o for o in outcomes if o is not None]

    @abstractmethod
    def _store_checked(
        self, requests: list[StoreRequest], now: float
    ) -> list[StoreResult | PushError]:
        """``store_messages`` for requests ``check_request`` passed: concurrent callers
        share one group commit. One outcome per request, in order."""

    def store_message(
        self, message: Message, user_ids: Sequence[str], idempotency_key: str, now: float
    ) -> StoreResult:
        """One request; raises its error."""
        users = tuple(dict.fromkeys(user_ids))
        (outcome,) = self.store_messages([StoreRequest(message, users, idempotency_key)], now)
        if isinstance(outcome, PushError):
            raise outcome
        if len(users) != len(user_ids):  # duplicates were folded: unfold the seqs
            by_user = dict(zip(users, outcome.seqs, strict=True))
            outcome = StoreResult(
                outcome.message_id, tuple(by_user[u] for u in user_ids), outcome.duplicate
            )
        return outcome

    @abstractmethod
    def read_inbox(self, user_id: str, after_seq: int, limit: int, now: float) -> InboxPage:
        """Up to ``limit`` committed, unexpired entries with seq > ``after_seq``."""

    @abstractmethod
    def user_starts(self, user_ids: Sequence[str]) -> dict[str, UserStart]:
        """Latest and acked seq of each user (0 and 0 for a user never pushed to),
        for many users at once: what a burst of connects needs, in one read."""

    @abstractmethod
    def ack_many(self, acks: Mapping[str, int]) -> None:
        """Raise each user's acked seq to the given seq (never lowers it)."""

    @abstractmethod
    def mark_delivered(self, receipts: Sequence[DeliveredMark]) -> None:
        """Record (message_id, user_id) pairs as written to a live socket, each with
        its message's expiry (None where it is not known): how long the mark must
        last for ``message_status``."""

    @abstractmethod
    def message_status(self, message_id: str, now: float) -> list[RecipientStatus]:
        """Per-recipient status; raises ``NotFound`` for an unknown or expired message."""

    @abstractmethod
    def probe(self) -> None:
        """A small durable write; raises ``StoreUnavailable`` when writes fail
        (unreachable, disk full, read-only). What ``/readyz`` is based on."""

    @abstractmethod
    def sweep(self, now: float, live_writers: Collection[str] | None = None) -> int:
        """Remove expired entries and bodies, old idempotency keys, and what pushes
        that died half-way left behind; ``live_writers`` (node ids whose
        registration is live) lets a fleet store abandon sooner what a writer that
        is gone left in flight. Returns how many records were removed."""

    @abstractmethod
    def close(self) -> None:
        """Release connections and files."""

    def recover(self) -> int:
        """At start-up: abandon what an earlier run of this node left in flight (it
        died mid-write; nothing of it can commit any more). Returns how many
        pushes; raises ``StoreUnavailable``."""
        return 0

    def tidy(self) -> int:
        """Finish the clean-up of pushes that failed while the store could not take
        it (their leftovers may block readers): called often while the store is
        healthy. Returns how many were finished; raises ``StoreUnavailable``."""
        return 0

    #: How many inbox pages a node reads at once: what the backend serves well
    #: beside the writes (replays queue behind this many reads in flight).
    read_concurrency: int = 16
    #: How long delivery receipts and acks may wait before they are written
    #: (``receipts.Receipts`` flushes at this period, or sooner when a batch
    #: fills): each flush costs the same few round trips whatever it carries.
    receipt_interval: float = 0.05

    @property
    def round_trips(self) -> int:
        """Calls made to the database so far (MongoDB: commands sent; SQLite:
        hand-offs to the database thread): ``pushsvc_store_round_trips_total``."""
        return 0

    # -- conveniences over the batched reads -----------------------------------

    def latest_seq(self, user_id: str) -> int:
        return self.user_starts([user_id])[user_id].latest_seq

    def latest_seqs(self, user_ids: Sequence[str]) -> dict[str, int]:
        """Each user's latest seq, for the periodic position check: at least every
        seq committed before the call (``user_starts`` is, where the store's
        counters cannot lose an update)."""
        return {u: start.latest_seq for u, start in self.user_starts(user_ids).items()}

    def acked_seq(self, user_id: str) -> int:
        return self.user_starts([user_id])[user_id].acked_seq

    def ack(self, user_id: str, seq: int) -> None:
        self.ack_many({user_id: seq})
