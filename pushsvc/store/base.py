"""The storage interface: one narrow contract, two implementations.

``EmbeddedStore`` (SQLite, one node) and ``MongoStore`` (the fleet) both pass
the behavioural suite in ``tests/store/``. Every method is synchronous and
cooperative under gevent; every method raises ``StoreUnavailable`` when the
backend cannot be reached, and a failed write leaves nothing behind.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pushsvc.errors import InvalidArgument
from pushsvc.messages import Message

IDEMPOTENCY_WINDOW = 24 * 3600.0


def check_storable(message: Message, user_ids: Sequence[str]) -> float:
    """What every store checks before writing; returns the message's expiry."""
    if message.expires_at is None:
        raise InvalidArgument("message.expires_at is not set: only messages with a TTL are stored")
    if not user_ids:
        raise InvalidArgument("user_ids is empty: name at least one recipient")
    return float(message.expires_at)


@dataclass(frozen=True, slots=True)
class InboxEntry:
    """One stored message in one user's inbox."""

    user_id: str
    seq: int
    message: Message


@dataclass(frozen=True, slots=True)
class StoreResult:
    """What ``store_message`` did: the message id and each recipient's seq."""

    message_id: str
    seqs: tuple[int, ...]  # in the order of the user ids given
    duplicate: bool = False  # the idempotency key was seen: nothing new stored


@dataclass(frozen=True, slots=True)
class RecipientStatus:
    user_id: str
    seq: int
    delivered: bool
    acked: bool


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """A node's registration; valid while ``expires_at`` is in the future."""

    node_id: str
    grpc_addr: str
    ws_addr: str
    started_at: float
    expires_at: float
    connections: int = 0


class Store(ABC):
    """Everything a node keeps outside its own memory."""

    #: False for the embedded store: no peers, presence is the local hub's.
    clustered: bool = False

    # -- messages and inboxes -------------------------------------------------

    @abstractmethod
    def store_message(
        self,
        message: Message,
        user_ids: Sequence[str],
        idempotency_key: str,
        now: float,
    ) -> StoreResult:
        """Store the body once and append it to each user's inbox.

        Allocates each user's next seq atomically (strictly increasing per
        user). ``message.expires_at`` must be set. With a non-empty
        ``idempotency_key`` seen within the last 24 h, stores nothing and
        returns the first message's id and seqs with ``duplicate=True``.
        Durable when it returns.
        """

    @abstractmethod
    def inbox_after(self, user_id: str, after_seq: int, limit: int, now: float) -> list[InboxEntry]:
        """Unexpired entries with seq > ``after_seq``, ascending, at most ``limit``."""

    @abstractmethod
    def inbox_unacked(self, user_id: str, limit: int, now: float) -> list[InboxEntry]:
        """Unexpired entries above the user's acked seq: the newest ``limit``, ascending."""

    @abstractmethod
    def latest_seq(self, user_id: str) -> int:
        """The last seq allocated to the user (0 if none)."""

    @abstractmethod
    def acked_seq(self, user_id: str) -> int:
        """The user's cumulative acked seq (0 if none)."""

    @abstractmethod
    def ack(self, user_id: str, seq: int) -> int:
        """Raise the user's acked seq to ``seq`` (never lowers it); returns the new value."""

    @abstractmethod
    def mark_delivered(self, receipts: Sequence[tuple[str, str]]) -> None:
        """Record (message_id, user_id) pairs as written to a live socket."""

    @abstractmethod
    def message_status(self, message_id: str, now: float) -> list[RecipientStatus]:
        """Per-recipient status; raises ``NotFound`` for an unknown or expired message."""

    # -- cluster: node registrations and presence ---------------------------

    @abstractmethod
    def register_node(self, node: NodeInfo) -> None:
        """Upsert the registration and purge presence left by an earlier run of this id."""

    @abstractmethod
    def refresh_node(self, node_id: str, expires_at: float, connections: int) -> None:
        """Extend the registration (re-creates it if it was swept)."""

    @abstractmethod
    def deregister_node(self, node_id: str) -> None:
        """Remove the registration and the node's presence documents."""

    @abstractmethod
    def live_nodes(self, now: float) -> list[NodeInfo]:
        """Registrations that have not expired, sorted by node id."""

    @abstractmethod
    def set_presence(self, node_id: str, counts: Mapping[str, int]) -> None:
        """Record how many connections of each user the node holds; 0 removes the
        (user, node) presence record. Users not named are left as they are."""

    @abstractmethod
    def presence(self, user_ids: Sequence[str], now: float) -> dict[str, dict[str, int]]:
        """For each user with presence on a live (unexpired) node: {node_id: connections}.
        Users without any are absent from the result."""

    # -- housekeeping ------------------------------------------------------------

    @abstractmethod
    def sweep(self, now: float) -> int:
        """Remove expired entries, unreferenced bodies, old idempotency keys,
        expired registrations and their presence. Returns how many were removed."""

    @abstractmethod
    def ping(self) -> None:
        """Raise ``StoreUnavailable`` unless the backend answers."""

    @abstractmethod
    def close(self) -> None:
        """Release connections and files."""
