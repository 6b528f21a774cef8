"""One WebSocket connection, driven on gevent: reader → ordering → writer.

The session owns no greenlet of its own. The socket's greenlet in the edge reads the
client's frames (``edge.py``) and calls in here from the first moment, so pings
are answered before the store has said anything; the node's admission worker
calls ``welcome`` once the store answered (or ``close`` with 1013 when it
cannot); the node's replay workers bring pages of the inbox; the hub announces
live messages. Every one of those is an event for the ``Ordering`` state
machine, whose actions this class carries out. The session talks only to the
node (subscribe, ack, read a page) and to its ``Writer``: never to the store or
the hub directly.
"""

from __future__ import annotations

import logging
import random
import socket
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pushsvc.ordering import AckError, Ordering, Read, ReadLater, Send
from pushsvc.protocol import (
    OP_PONG,
    PONG_FRAME,
    WIRE_PING,
    Close,
    FrameError,
    UserFrame,
    error_frame,
    parse_client_frame,
    subscribed_frame,
    unsubscribed_frame,
    welcome_frame,
    wire_close,
    wire_frame,
    wire_text,
)
from pushsvc.ratelimit import TokenBucket
from pushsvc.store.inbox import InboxEntry, InboxPage, UserStart
from pushsvc.writer import CLOSE_GRACE, Delivery, Writer

if TYPE_CHECKING:
    from pushsvc.auth import Identity
    from pushsvc.node import Node

log = logging.getLogger("pushsvc.session")

MAX_SUBSCRIPTIONS = 100
REPLAY_PAGE = 200
ACK_COST = 0.2  # an ack costs a fifth of a frame against the client's rate limit
# A connection's first ping comes between a quarter of ping_interval and all of it after
# it opened, at random, and every ping_interval after that: the connections of a storm
# of connects are then not all pinged in one heartbeat pass, nor their pongs all read
# at once, every ping_interval (thousands of them queued ahead of the pushes).
PING_PHASE_SPREAD = 0.75


@dataclass(frozen=True, slots=True)
class SessionLimits:
    send_queue_size: int
    max_replay: int
    ping_interval: float
    ping_timeout: float
    client_rate: float
    client_burst: int
    abuse_limit: int


# A live message as the ordering machine carries it: (wire bytes, message id, its
# expiry -- for the delivery receipt).
# A replayed one is its InboxEntry, encoded only when it is actually sent.
Item = tuple[bytes, str, float | None] | InboxEntry


class Session:
    __slots__ = (
        "_bucket",
        "_closing",
        "_first_frame_by",
        "_last_ping",
        "_node",
        "_order",
        "_rate_warned",
        "_read_wanted",
        "_since",
        "_strikes",
        "_strikes_at",
        "closed",
        "conn_id",
        "identity",
        "last_seen",
        "limits",
        "opened_at",
        "topics",
        "user_id",
        "welcomed",
        "writer",
    )

    def __init__(
        self,
        conn_id: str,
        identity: Identity,
        sock: socket.socket,
        node: Node,
        limits: SessionLimits,
        since: int | None,
    ) -> None:
        self.conn_id = conn_id
        self.identity = identity
        self.user_id = identity.user_id
        self.writer = Writer(sock, limits.send_queue_size, self)
        self.limits = limits
        self.topics: set[str] = set()
        self._node = node
        self._since = since
        self._order: Ordering[Item] = Ordering()
        self._read_wanted: Read | ReadLater | None = None
        self._closing: Close | None = None
        self.closed = False
        self.welcomed = False
        now = time.monotonic()
        self.opened_at = now
        self.last_seen = now
        self._last_ping = now - random.random() * PING_PHASE_SPREAD * limits.ping_interval
        self._first_frame_by = 0.0  # while awaited: when the client's first frame is due
        self._bucket = TokenBucket(limits.client_rate, limits.client_burst)
        self._strikes = 0.0
        self._strikes_at = now
        self._rate_warned = False

    # -- from the node: start, pages, live messages -----------------------------------

    def welcome(self, start: UserStart, node_id: str) -> None:
        """The store answered: welcome frame, then replay from the start point."""
        if self._closing is not None or self.welcomed:
            return
        latest = start.latest_seq
        if self._since is None:
            # Without since: the un-acked entries, at most max_replay (newest kept).
            after = max(start.acked_seq, latest - self.limits.max_replay)
        else:
            # A client ahead of the store would silently skip new seqs: lower it.
            after = min(self._since, latest)
        self.welcomed = True
        frame = welcome_frame(
            self.conn_id, self.user_id, node_id, latest, self.limits.ping_interval
        )
        self.writer.release(wire_text(frame))
        self._node.counters.other_frames_sent += 1
        self._act(self._order.start(after, latest))

    def deliver_user(
        self, seq: int, wire: bytes, message_id: str, expires_at: float | None
    ) -> None:
        if self._closing is not None:
            return
        if self._order.take_live(seq):  # the next seq, nothing waiting: no actions to make
            self._write((wire, (message_id, seq, expires_at)))
        else:
            self._act(self._order.on_live(seq, (wire, message_id, expires_at)))

    def deliver_online(self, wire: bytes) -> bool:
        if self._closing is not None:
            return False
        if self.writer.write(wire):
            self._node.counters.frames_sent += 1
            return True
        self._overflow()
        return False

    def deliver_online_many(self, wires: tuple[bytes, ...], joined: bytes) -> bool:
        if self._closing is not None:
            return False
        if self.writer.write_joined(wires, joined):
            self._node.counters.frames_sent += len(wires)
            return True
        self._overflow()
        return False

    def on_page(self, page: InboxPage, token: int) -> None:
        if self._closing is None:
            self._act(
                self._order.on_page(
                    [(e.seq, e) for e in page.entries],
                    blocked_at=page.blocked_at,
                    more=page.more,
                    token=token,
                )
            )

    def on_behind(self, latest_seq: int) -> None:
        """The periodic position check: the user's seqs reach ``latest_seq``."""
        if self._closing is None and self.welcomed:
            self._act(self._order.on_behind(latest_seq))

    def on_read_failed(self, token: int) -> None:
        if self._closing is None:
            self._act(self._order.on_read_failed(token))

    def frame_written(self, message_id: str, seq: int, expires_at: float | None) -> None:
        self._node.receipts.delivered(message_id, self.user_id, seq, expires_at)

    def on_drained(self) -> None:
        """The writer's queue emptied: a read deferred for it may go now."""
        wanted, self._read_wanted = self._read_wanted, None
        if wanted is not None and self._closing is None:
            self._read(wanted)

    def _read(self, action: Read | ReadLater) -> None:
        later = isinstance(action, ReadLater)
        self._node.read_page(self, action.after, later=later, token=action.token)

    def _act(self, actions: list[Send[Item] | Read | ReadLater]) -> None:
        frames: list[tuple[bytes, Delivery]] = []
        for action in actions:
            if isinstance(action, Send):
                item = action.item
                if isinstance(item, InboxEntry):
                    msg = item.message
                    wire = UserFrame(msg.id, msg.payload, msg.content_type).wire(action.seq)
                    frames.append((wire, (msg.id, action.seq, msg.expires_at)))
                else:
                    wire, message_id, expires_at = item
                    frames.append((wire, (message_id, action.seq, expires_at)))
            elif self.writer.backlog >= max(1, self.limits.send_queue_size // 2):
                # Leave room for live traffic: read on once the queue drained.
                self._read_wanted = action
            else:
                self._read(action)
        if len(frames) == 1:
            self._write(frames[0])
            return
        if frames:
            if self.writer.write_many(frames):
                self._node.counters.frames_sent += len(frames)
            else:
                self._overflow()
        if self._read_wanted is not None and not self.writer.backlog:
            self.on_drained()

    def _write(self, frame: tuple[bytes, Delivery]) -> None:
        """One stored message's frame, in its order."""
        if self.writer.write(*frame):
            self._node.counters.frames_sent += 1
        else:
            self._overflow()
        if self._read_wanted is not None and not self.writer.backlog:
            self.on_drained()

    def _overflow(self) -> None:
        if self._closing is None and not self.writer.dead:
            log.info("slow consumer", extra={"conn": self.conn_id, "queued": self.writer.backlog})
            self.close(Close.SLOW_CONSUMER)

    @property
    def read_page_size(self) -> int:
        return max(1, min(REPLAY_PAGE, self.limits.send_queue_size // 2))

    # -- from the reader: what the client sends ----------------------------------------

    def touch(self) -> None:
        self.last_seen = time.monotonic()

    def await_first_frame(self, timeout: float) -> None:
        """The client must send a frame within ``timeout`` of the open: the heartbeat
        pings it at half of that and closes it (1001) at the end. The heartbeat keeps
        this deadline, not a timer on the socket: a timer per waiting connection is
        three objects and a libev timer for each of them, at every connect."""
        self._first_frame_by = self.opened_at + timeout

    def first_frame(self) -> None:
        """The client sent its first frame (of any kind): no deadline from now on."""
        self._first_frame_by = 0.0

    def ping(self) -> None:
        """A ping now (the edge asks a client that has not said anything yet)."""
        self._last_ping = time.monotonic()
        self.writer.control(WIRE_PING)

    def on_ping(self, payload: bytes) -> None:
        self.touch()
        self.writer.control(wire_frame(OP_PONG, payload))

    def on_frame(self, text: str | bytes) -> None:
        self.touch()
        if self._closing is not None:
            return
        try:
            frame = parse_client_frame(text)
        except FrameError as exc:
            self._charge(1.0)
            self._refuse(exc)
            return
        if not self._charge(ACK_COST if frame.type == "ack" else 1.0):
            return
        try:
            if frame.type == "ping":
                self._send_json(PONG_FRAME)
            elif frame.type == "ack":
                self._on_ack(frame.seq)
            elif frame.type == "subscribe":
                self._on_subscribe(frame.topic)
            elif frame.type == "unsubscribe":
                self._node.unsubscribe(self, frame.topic)
                self.topics.discard(frame.topic)
                self._send_json(unsubscribed_frame(frame.topic))
        except FrameError as exc:
            self._refuse(exc)

    def _charge(self, cost: float) -> bool:
        """The client's rate limit, charged by the parsed frame type."""
        if self._bucket.take(cost):
            self._rate_warned = False
            return True
        if not self._rate_warned:
            self._rate_warned = True
            self._send_json(error_frame("rate_limited", "slow down"))
        self._strike(Close.RATE_LIMITED)
        return False

    def _refuse(self, exc: FrameError) -> None:
        self._send_json(error_frame(exc.code, exc.message))
        self._strike(Close.ABUSE)

    def _strike(self, reason: Close) -> None:
        now = time.monotonic()
        # Strikes fade at one per ten seconds: only sustained abuse closes.
        self._strikes = max(0.0, self._strikes - (now - self._strikes_at) / 10.0) + 1
        self._strikes_at = now
        if self._strikes >= self.limits.abuse_limit:
            self.close(reason)

    def _send_json(self, frame: str) -> None:
        """A frame that is not a message: pong, subscribed, error."""
        if self.writer.write(wire_text(frame)):
            self._node.counters.other_frames_sent += 1
        else:
            self._overflow()

    def _on_ack(self, seq: int) -> None:
        if not self.welcomed:
            raise FrameError("bad_request", "ack before the welcome frame")
        try:
            raised = self._order.on_ack(seq)
        except AckError as exc:
            raise FrameError("bad_request", str(exc)) from None
        if raised and seq > 0:
            self._node.ack(self.user_id, seq)

    def _on_subscribe(self, topic: str) -> None:
        if not self.identity.may_subscribe(topic):
            raise FrameError("forbidden", f"this token may not subscribe to {topic!r}")
        if topic not in self.topics:
            if len(self.topics) >= MAX_SUBSCRIPTIONS:
                raise FrameError("bad_request", f"at most {MAX_SUBSCRIPTIONS} subscriptions")
            self.topics.add(topic)
            self._node.subscribe(self, topic)
        self._send_json(subscribed_frame(topic))

    # -- heartbeat (the node's ticker) ---------------------------------------------------

    def tick(self, now: float) -> None:
        """Ping when due; close a connection silent for ping_timeout, or one with no
        first frame by its deadline (pinged at half of it)."""
        limits = self.limits
        if self._closing is not None or self.closed:
            return
        if self._first_frame_by:
            due = self._first_frame_by
            if now >= due:
                self._first_frame_by = 0.0
                self.close(Close.SILENT)
                return
            half = self.opened_at + (due - self.opened_at) / 2
            if now >= half > self._last_ping:
                self.ping()  # any conforming client answers with its first frame
        if now - self.last_seen > limits.ping_timeout:
            self.close(Close.PING_TIMEOUT)
        elif now - self._last_ping >= limits.ping_interval:
            self._last_ping = now
            self.writer.control(WIRE_PING)

    # -- closing -------------------------------------------------------------------------

    @property
    def closing(self) -> bool:
        return self._closing is not None

    def close(self, reason: Close, text: str | None = None) -> None:
        """Send a close frame (queued frames first, except for a slow consumer,
        whose queue is dropped: its stored messages wait in the inbox)."""
        if self._closing is not None:
            return
        self._closing = reason
        self._order.close()
        self._node.counters.closed[reason.code] = self._node.counters.closed.get(reason.code, 0) + 1
        self.writer.close(
            wire_close(reason.code, text if text is not None else reason.reason),
            drop_queued=reason is Close.SLOW_CONSUMER,
        )

    def finish(self) -> None:
        """The socket is gone (the reader ended): unregister and stop writing."""
        if self.closed:
            return
        self.closed = True
        if self._closing is None:
            self._closing = Close.GOING_AWAY
            self._order.close()
        else:
            self.writer.linger(CLOSE_GRACE)  # the close frame, if the socket held it up
        self.writer.stop()
        self._node.leave(self)
