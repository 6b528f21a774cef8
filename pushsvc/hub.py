"""The local hub: this node's connections by user and subscribers by topic.

User fan-out happens here: a frame is encoded to wire bytes once (WebSocket
header included) and the same bytes are handed to every connection of the user
(topic fan-out, which may be long, is ``fanout.py``'s, over ``subscribers``). The hub
knows connections only through the small ``Connection`` protocol below and
calls nothing else: no store, no fleet, no hooks. Its operations never block,
so a push reaches every local connection of a user in one step of the event
loop.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from pushsvc.protocol import UserFrame


class Connection(Protocol):
    """What the hub needs of a connection (``session.Session`` is one)."""

    @property
    def conn_id(self) -> str: ...

    @property
    def user_id(self) -> str: ...

    def deliver_user(
        self, seq: int, wire: bytes, message_id: str, expires_at: float | None
    ) -> None:
        """A stored message with the user's ``seq`` (and its expiry, for the delivery
        receipt); the connection keeps the order."""

    def deliver_online(self, wire: bytes) -> bool:
        """An online-only or topic frame; False if it was not queued (closed, overflow)."""

    def deliver_online_many(self, wires: tuple[bytes, ...], joined: bytes) -> bool:
        """Several topic frames in order, ``joined`` their concatenation (one write
        when the socket keeps up); False if they were not all queued."""


SHARES = 10  # groups of connections a periodic pass can visit one at a time


class Hub:
    __slots__ = ("_shares", "_topics", "_users")

    def __init__(self) -> None:
        self._users: dict[str, dict[Connection, None]] = {}
        self._topics: dict[str, dict[Connection, None]] = {}
        # The connections by id, each in one share for its life (by its id's hash).
        self._shares: tuple[dict[str, Connection], ...] = tuple({} for _ in range(SHARES))

    # -- membership ---------------------------------------------------------------

    def add(self, conn: Connection) -> int:
        """Register a connection; returns how many connections its user has here now."""
        self._shares[hash(conn.conn_id) % SHARES][conn.conn_id] = conn
        held = self._users.setdefault(conn.user_id, {})
        held[conn] = None
        return len(held)

    def remove(self, conn: Connection, topics: Iterator[str] | tuple[str, ...] = ()) -> int:
        """Unregister a connection (and its topics); returns its user's connections left."""
        if self._shares[hash(conn.conn_id) % SHARES].pop(conn.conn_id, None) is None:
            return self.connections_of(conn.user_id)
        for topic in topics:
            self.unsubscribe(conn, topic)
        held = self._users.get(conn.user_id)
        if held is None:
            return 0
        held.pop(conn, None)
        if not held:
            del self._users[conn.user_id]
            return 0
        return len(held)

    def subscribe(self, conn: Connection, topic: str) -> None:
        self._topics.setdefault(topic, {})[conn] = None

    def unsubscribe(self, conn: Connection, topic: str) -> None:
        subs = self._topics.get(topic)
        if subs is not None:
            subs.pop(conn, None)
            if not subs:
                del self._topics[topic]

    # -- delivery -----------------------------------------------------------------

    def deliver_user(
        self,
        user_id: str,
        seq: int,
        frame: UserFrame,
        message_id: str,
        expires_at: float | None,
    ) -> int:
        """A stored message for one user: one encode, handed to each of the user's connections."""
        held = self._users.get(user_id)
        if not held:
            return 0
        wire = frame.wire(seq)
        if len(held) == 1:  # the common case, without a copy
            for conn in held:
                conn.deliver_user(seq, wire, message_id, expires_at)
                return 1
        for conn in tuple(held):
            conn.deliver_user(seq, wire, message_id, expires_at)
        return len(held)

    def deliver_online(self, user_id: str, wire: bytes) -> int:
        """An online-only message (no seq): best effort to the live connections."""
        held = self._users.get(user_id)
        if not held:
            return 0
        if len(held) == 1:  # the common case, without a copy and a generator
            for conn in held:
                return 1 if conn.deliver_online(wire) else 0
        return sum(conn.deliver_online(wire) for conn in tuple(held))

    # -- queries --------------------------------------------------------------------

    def subscribers(self, topic: str) -> tuple[Connection, ...]:
        """The topic's subscribers now (a snapshot: fan-out may yield while it writes)."""
        return tuple(self._topics.get(topic, ()))

    def connections_of_user(self, user_id: str) -> tuple[Connection, ...]:
        return tuple(self._users.get(user_id, ()))

    def connections_of(self, user_id: str) -> int:
        return len(self._users.get(user_id, ()))

    def users(self) -> list[str]:
        return list(self._users)

    def connections(self) -> list[Connection]:
        return self.connections_in_shares(0, SHARES)

    def connections_in_shares(self, first: int, stop: int) -> list[Connection]:
        """The connections of shares ``first`` to ``stop - 1`` (of ``SHARES``): a
        connection stays in its share while it is registered, so visiting the shares
        in turn visits each connection once a round, whoever comes and goes."""
        out: list[Connection] = []
        for share in self._shares[first:stop]:
            out.extend(share.values())
        return out

    @property
    def connection_count(self) -> int:
        return sum(len(share) for share in self._shares)

    @property
    def user_count(self) -> int:
        return len(self._users)
