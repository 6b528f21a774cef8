"""The dispatcher: what a push, a publish, a disconnect or a presence query does.

It stores first (durable before the caller hears OK), then delivers to local
connections through the hub and, in a fleet, forwards to the nodes that hold
the other recipients. It knows nothing of gRPC or WebSocket.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Protocol

from pushsvc.errors import StoreUnavailable
from pushsvc.hub import Hub
from pushsvc.messages import Message, PushCommand, new_message_id
from pushsvc.metrics import Metrics
from pushsvc.protocol import UserFrame, topic_frame, wire_text
from pushsvc.store import NodeInfo, RecipientStatus, Store

log = logging.getLogger("pushsvc.dispatcher")


@dataclass(frozen=True, slots=True)
class PushOutcome:
    message_id: str
    seqs: tuple[int, ...]
    duplicate: bool
    local_connections: int


@dataclass(frozen=True, slots=True)
class Presence:
    user_id: str
    connections: int
    node_ids: tuple[str, ...]

    @property
    def online(self) -> bool:
        return self.connections > 0


class Fleet(Protocol):
    """Cross-node routing; the embedded node has none (``LocalOnly``)."""

    def forward_users(self, message: Message, recipients: list[tuple[str, int]]) -> None: ...

    def forward_topic(self, message: Message, topic: str) -> None: ...

    def forward_disconnect(self, user_id: str, reason: str) -> int: ...

    def presence(self, user_ids: tuple[str, ...]) -> dict[str, tuple[int, tuple[str, ...]]]: ...

    def nodes(self) -> list[NodeInfo]: ...


class Dispatcher:
    def __init__(
        self, node_id: str, store: Store, hub: Hub, metrics: Metrics, fleet: Fleet | None
    ) -> None:
        self.node_id = node_id
        self.store = store
        self.hub = hub
        self.metrics = metrics
        self.fleet = fleet

    def push(self, cmd: PushCommand) -> PushOutcome:
        started = time.perf_counter()
        now = time.time()
        message_id = new_message_id(now)
        frame = UserFrame.build(message_id, cmd.payload, cmd.content_type)
        if cmd.ttl_seconds == 0:
            wire = wire_text(frame.online_only())
            local = sum(self.hub.deliver_online(uid, wire) for uid in cmd.user_ids)
            message = Message(message_id, cmd.payload, cmd.content_type, now)
            if self.fleet is not None:
                self.fleet.forward_users(message, [(u, 0) for u in cmd.user_ids])
            self._count(started)
            return PushOutcome(message_id, (), False, local)
        message = Message(message_id, cmd.payload, cmd.content_type, now, now + cmd.ttl_seconds)
        try:
            stored = self.store.store_message(message, cmd.user_ids, cmd.idempotency_key, now)
        except StoreUnavailable:
            self.metrics.store_errors.inc()
            raise
        if stored.duplicate:
            return PushOutcome(stored.message_id, stored.seqs, True, 0)
        local = 0
        for uid, seq in zip(cmd.user_ids, stored.seqs, strict=True):
            local += self.hub.deliver_user(uid, seq, frame, message_id)
        if self.fleet is not None:
            self.fleet.forward_users(message, list(zip(cmd.user_ids, stored.seqs, strict=True)))
        self._count(started)
        return PushOutcome(message_id, stored.seqs, False, local)

    def _count(self, started: float) -> None:
        self.metrics.messages_pushed.inc()
        self.metrics.push_duration.observe(time.perf_counter() - started)

    def publish(self, topic: str, payload: bytes, content_type: str) -> tuple[str, int]:
        now = time.time()
        message_id = new_message_id(now)
        local = self.hub.publish(
            topic, wire_text(topic_frame(message_id, topic, payload, content_type))
        )
        if self.fleet is not None:
            self.fleet.forward_topic(Message(message_id, payload, content_type, now), topic)
        self.metrics.messages_published.inc()
        return message_id, local

    # -- what the fleet's peers hand to this node --------------------------------------

    def deliver_users(self, message: Message, recipients: list[tuple[str, int]]) -> int:
        frame = UserFrame.build(message.id, message.payload, message.content_type)
        total = 0
        online_wire: bytes | None = None
        for uid, seq in recipients:
            if seq:
                total += self.hub.deliver_user(uid, seq, frame, message.id)
            else:
                if online_wire is None:
                    online_wire = wire_text(frame.online_only())
                total += self.hub.deliver_online(uid, online_wire)
        return total

    def deliver_topic(self, message: Message, topic: str) -> int:
        wire = wire_text(topic_frame(message.id, topic, message.payload, message.content_type))
        return self.hub.publish(topic, wire)

    # -- queries and control --------------------------------------------------------------

    def disconnect(self, user_id: str, reason: str) -> int:
        closed = self.hub.disconnect_user(user_id, reason)
        if self.fleet is not None:
            closed += self.fleet.forward_disconnect(user_id, reason)
        return closed

    def presence(self, user_ids: tuple[str, ...]) -> list[Presence]:
        if self.fleet is not None:
            found = self.fleet.presence(user_ids)
            return [Presence(u, *found.get(u, (0, ()))) for u in user_ids]
        out = []
        for uid in user_ids:
            n = self.hub.connections_of(uid)
            out.append(Presence(uid, n, (self.node_id,) if n else ()))
        return out

    def message_status(self, message_id: str) -> list[RecipientStatus]:
        return self.store.message_status(message_id, time.time())

    def nodes(self) -> list[NodeInfo]:
        if self.fleet is not None:
            return self.fleet.nodes()
        return self.store.live_nodes(time.time())
