"""The local hub: this node's connections by user and subscribers by topic.

Fan-out happens here: a frame is encoded to wire bytes once and the same bytes
are queued on every recipient connection. Hub operations never block, so a
push reaches every local connection of a user in one step of the event loop.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from pushsvc.protocol import Close, UserFrame, wire_text

if TYPE_CHECKING:
    from pushsvc.session import Session

PresenceHook = Callable[[str, int], None]  # (user_id, connections now held here)


class Hub:
    def __init__(self) -> None:
        self._users: dict[str, set[Session]] = {}
        self._topics: dict[str, set[Session]] = {}
        self._sessions: dict[str, Session] = {}
        self.presence_hooks: list[PresenceHook] = []

    # -- membership ---------------------------------------------------------------

    def add(self, session: Session) -> None:
        self._sessions[session.conn_id] = session
        conns = self._users.get(session.user_id)
        if conns is None:
            # Hooks run before the session is visible here, so the user's first
            # arrival is recorded before the connection is replayed.
            for hook in self.presence_hooks:
                hook(session.user_id, 1)
            conns = self._users.setdefault(session.user_id, set())
            conns.add(session)
        else:
            conns.add(session)
            for hook in self.presence_hooks:
                hook(session.user_id, len(conns))

    def remove(self, session: Session) -> None:
        if self._sessions.pop(session.conn_id, None) is None:
            return
        for topic in list(session.topics):
            self.unsubscribe(session, topic)
        conns = self._users.get(session.user_id)
        if conns is not None:
            conns.discard(session)
            if not conns:
                del self._users[session.user_id]
            for hook in self.presence_hooks:
                hook(session.user_id, len(conns))

    def subscribe(self, session: Session, topic: str) -> None:
        self._topics.setdefault(topic, set()).add(session)
        session.topics.add(topic)

    def unsubscribe(self, session: Session, topic: str) -> None:
        subs = self._topics.get(topic)
        if subs is not None:
            subs.discard(session)
            if not subs:
                del self._topics[topic]
        session.topics.discard(topic)

    # -- delivery -----------------------------------------------------------------

    def deliver_user(self, user_id: str, seq: int, frame: UserFrame, message_id: str) -> int:
        """A stored message for one user: one encode, queued on each of the user's connections."""
        conns = self._users.get(user_id)
        if not conns:
            return 0
        wire = wire_text(frame.with_seq(seq))
        for session in tuple(conns):
            session.deliver_user(seq, wire, message_id)
        return len(conns)

    def deliver_online(self, user_id: str, wire: bytes) -> int:
        """An online-only message (no seq): best effort to the live connections."""
        conns = self._users.get(user_id)
        if not conns:
            return 0
        for session in tuple(conns):
            session.deliver_online(wire)
        return len(conns)

    def publish(self, topic: str, wire: bytes) -> int:
        subs = self._topics.get(topic)
        if not subs:
            return 0
        for session in tuple(subs):
            session.deliver_online(wire)
        return len(subs)

    def disconnect_user(self, user_id: str, reason: str) -> int:
        conns = self._users.get(user_id)
        if not conns:
            return 0
        for session in tuple(conns):
            session.close(Close.DISCONNECTED, reason or Close.DISCONNECTED.reason)
        return len(conns)

    # -- queries --------------------------------------------------------------------

    def connections_of(self, user_id: str) -> int:
        return len(self._users.get(user_id, ()))

    def users(self) -> list[str]:
        return list(self._users)

    def sessions(self) -> list[Session]:
        return list(self._sessions.values())

    @property
    def connection_count(self) -> int:
        return len(self._sessions)

    @property
    def user_count(self) -> int:
        return len(self._users)
