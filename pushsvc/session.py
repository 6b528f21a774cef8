"""One WebSocket connection's protocol state.

A session owns a bounded send queue drained by one writer greenlet (the only
greenlet that writes to the socket), replays stored messages before going
live, keeps per-user seq order with no gap and no duplicate, and polices what
the client sends.

Ordering: ``last_seq`` is the highest seq queued on this connection. A live
message with ``seq == last_seq + 1`` is queued at once; anything else (a push
that landed while the client was being replayed, or two pushes dispatched out
of order) switches the session to catch-up, which reads the inbox after
``last_seq`` from the store until it has passed every seq announced live.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import gevent
from gevent.event import Event

from pushsvc.errors import StoreUnavailable
from pushsvc.protocol import (
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
    wire_text,
)
from pushsvc.ratelimit import TokenBucket

if TYPE_CHECKING:
    from pushsvc.auth import Identity
    from pushsvc.hub import Hub
    from pushsvc.metrics import Metrics
    from pushsvc.receipts import Receipts
    from pushsvc.store import InboxEntry, Store

log = logging.getLogger("pushsvc.session")

MAX_SUBSCRIPTIONS = 100
REPLAY_PAGE = 200
CLOSE_GRACE = 2.0  # seconds a close frame may take before the socket is cut
GAP_GRACE = 1.0  # seconds a fresh gap in a user's seqs is waited on
GAP_POLL = 0.02


class Transport(Protocol):
    """What a session needs from its socket."""

    def write(self, data: bytes) -> None: ...

    def shutdown(self) -> None: ...


@dataclass(frozen=True, slots=True)
class SessionLimits:
    send_queue_size: int
    max_replay: int
    ping_interval: float
    ping_timeout: float
    client_rate: float
    client_burst: int
    abuse_limit: int


class Session:
    def __init__(
        self,
        conn_id: str,
        identity: Identity,
        transport: Transport,
        *,
        node_id: str,
        store: Store,
        hub: Hub,
        receipts: Receipts,
        metrics: Metrics,
        limits: SessionLimits,
    ) -> None:
        self.conn_id = conn_id
        self.identity = identity
        self.user_id = identity.user_id
        self.topics: set[str] = set()
        self._transport = transport
        self._node_id = node_id
        self._store = store
        self._hub = hub
        self._receipts = receipts
        self._metrics = metrics
        self._limits = limits

        # send side: (wire bytes, message id for a delivery receipt or "")
        self._queue: deque[tuple[bytes, str]] = deque()
        self._wakeup = Event()
        self._drained = Event()
        self._writer: gevent.Greenlet | None = None
        self._closing: tuple[int, str] | None = None
        self.closed = Event()

        # ordering
        self._since: int | None = None
        self._start_resolved = False
        self.last_seq = 0
        self._live = False
        self._max_seen = 0
        self._catching_up = False
        self._welcomed = False

        # liveness and abuse
        self._last_seen = time.monotonic()
        self._bucket = TokenBucket(limits.client_rate, limits.client_burst)
        self._strikes = 0.0
        self._strikes_at = time.monotonic()
        self._rate_warned = False

    # -- lifecycle ------------------------------------------------------------------

    def start(self, since: int | None) -> None:
        """Register, welcome, then replay; live messages arriving meanwhile are not lost."""
        self._since = since
        self._hub.add(self)
        self._metrics.connections.set(self._hub.connection_count)
        self._metrics.users.set(self._hub.user_count)
        self._writer = gevent.spawn(self._write_loop)
        try:
            latest = self._store.latest_seq(self.user_id)
        except StoreUnavailable as exc:
            # Stored messages wait for the store; live online-only/topic traffic still flows.
            log.warning("store unavailable at connect conn=%s: %s", self.conn_id, exc)
            self._metrics.store_errors.inc()
            latest = 0
        self._queue_frame(
            wire_text(
                welcome_frame(
                    self.conn_id, self.user_id, self._node_id, latest, self._limits.ping_interval
                )
            )
        )
        self._welcomed = True
        if since is not None and latest and since > latest:
            self._since = latest  # a client ahead of the store would silently skip new seqs
        self._catching_up = True
        gevent.spawn(self._catch_up)

    def _replay_start(self) -> int:
        """Without ``since``: just below the oldest un-acked entry kept (max_replay newest)."""
        unacked = self._store.inbox_unacked(self.user_id, self._limits.max_replay, time.time())
        if unacked:
            return unacked[0].seq - 1
        return self._store.acked_seq(self.user_id)

    def finish(self) -> None:
        """The socket is gone: unregister and stop the writer."""
        self._hub.remove(self)
        self._metrics.connections.set(self._hub.connection_count)
        self._metrics.users.set(self._hub.user_count)
        if self._closing is None:
            self._closing = (Close.GOING_AWAY.code, "")
        self._queue.clear()
        self._wakeup.set()
        self._drained.set()
        self.closed.set()
        if self._writer is not None and not self._writer.dead:
            self._writer.kill(block=False)

    @property
    def closing(self) -> bool:
        return self._closing is not None

    def join_writer(self, timeout: float) -> None:
        if self._writer is not None:
            self._writer.join(timeout)

    def close(self, reason: Close, text: str | None = None) -> None:
        """Close with a code. Frames already queued go out first (so an error frame
        explains the close), except for a slow consumer, whose queue is dropped:
        its stored messages wait in the inbox."""
        if self._closing is not None:
            return
        self._closing = (reason.code, text if text is not None else reason.reason)
        self._metrics.closed.labels(str(reason.code)).inc()
        if reason is Close.SLOW_CONSUMER:
            self._queue.clear()
        self._wakeup.set()
        self._drained.set()
        # A writer stuck on a full socket buffer is cut loose after a grace period.
        gevent.spawn_later(CLOSE_GRACE, self._cut)

    def _cut(self) -> None:
        if not self.closed.is_set():
            self._transport.shutdown()

    # -- delivery (called by the hub; never blocks) ----------------------------------

    def deliver_user(self, seq: int, wire: bytes, message_id: str) -> None:
        if seq <= self.last_seq or self._closing is not None:
            return
        if self._live and seq == self.last_seq + 1:
            if self._queue_frame(wire, message_id):
                self.last_seq = seq
            return
        self._max_seen = max(self._max_seen, seq)
        if self._welcomed and not self._catching_up:
            self._catching_up = True
            self._live = False
            gevent.spawn(self._catch_up)

    def deliver_online(self, wire: bytes) -> None:
        if self._welcomed and self._closing is None:
            self._queue_frame(wire)

    def _queue_frame(self, wire: bytes, message_id: str = "") -> bool:
        if self._closing is not None:
            return False
        if len(self._queue) >= self._limits.send_queue_size:
            log.info("slow consumer conn=%s user queue=%d", self.conn_id, len(self._queue))
            self.close(Close.SLOW_CONSUMER)
            return False
        self._queue.append((wire, message_id))
        self._wakeup.set()
        return True

    def _catch_up(self) -> None:
        """Read the inbox after last_seq until every announced seq is passed, then go live."""
        try:
            if not self._start_resolved:
                start_after = self._replay_start() if self._since is None else self._since
                self.last_seq = max(self.last_seq, start_after)
                self._start_resolved = True
            gap_deadline = 0.0
            while self._closing is None:
                announced = self._max_seen  # what was known before this read began
                entries = self._store.inbox_after(
                    self.user_id, self.last_seq, REPLAY_PAGE, time.time()
                )
                for entry in entries:
                    if entry.seq != self.last_seq + 1 and self._young(entry):
                        # A fresh gap: a concurrent push may still be committing
                        # the missing seq (MongoDB has no multi-document
                        # transactions). Give it GAP_GRACE before moving past it.
                        if not gap_deadline:
                            gap_deadline = time.monotonic() + GAP_GRACE
                        if time.monotonic() < gap_deadline:
                            break
                    gap_deadline = 0.0
                    if not self._queue_replayed(entry):
                        return
                else:
                    if len(entries) < REPLAY_PAGE:
                        if self._max_seen > self.last_seq:
                            if entries or self._max_seen > announced:
                                continue  # more was announced while this page was read
                            # Announced before an empty read: gone (expired), nothing to send.
                            self.last_seq = announced
                        self._live = True
                        return
                    continue
                gevent.sleep(GAP_POLL)  # retry the read until the gap fills or the grace ends
        except StoreUnavailable as exc:
            self._metrics.store_errors.inc()
            log.warning("catch-up failed conn=%s: %s", self.conn_id, exc)
        except gevent.GreenletExit:
            raise
        finally:
            self._catching_up = False

    @staticmethod
    def _young(entry: InboxEntry) -> bool:
        return time.time() - entry.message.created_at < GAP_GRACE

    def _queue_replayed(self, entry: InboxEntry) -> bool:
        # Leave headroom for live traffic: wait while the queue is half full.
        while len(self._queue) >= max(1, self._limits.send_queue_size // 2):
            if self._closing is not None:
                return False
            self._drained.clear()
            self._drained.wait(1.0)
        if self._closing is not None or entry.seq <= self.last_seq:
            return self._closing is None
        msg = entry.message
        wire = wire_text(UserFrame.build(msg.id, msg.payload, msg.content_type).with_seq(entry.seq))
        if self._queue_frame(wire, msg.id):
            self.last_seq = entry.seq
            return True
        return False

    # -- the writer greenlet ----------------------------------------------------------

    def _write_loop(self) -> None:
        limits = self._limits
        last_ping = time.monotonic()
        try:
            while True:
                now = time.monotonic()
                if self._closing is None and now - self._last_seen > limits.ping_timeout:
                    self.close(Close.PING_TIMEOUT)
                if self._closing is not None:
                    if self._queue:
                        self._flush()
                    code, text = self._closing
                    self._transport.write(wire_close(code, text))
                    return
                if now - last_ping >= limits.ping_interval:
                    self._transport.write(WIRE_PING)
                    last_ping = now
                if self._queue:
                    self._flush()
                    continue
                wait = min(
                    limits.ping_interval - (now - last_ping),
                    limits.ping_timeout - (now - self._last_seen),
                )
                self._wakeup.clear()
                if not self._queue and self._closing is None:
                    self._wakeup.wait(max(0.0, wait) + 0.001)
        except OSError:
            pass  # the peer went away; the reader notices and finishes the session
        finally:
            self._drained.set()
            self._transport.shutdown()

    def _flush(self) -> None:
        queue = self._queue
        batch: list[bytes] = []
        receipts: list[str] = []
        size = 0
        while queue and size < 256 * 1024:
            wire, message_id = queue.popleft()
            batch.append(wire)
            size += len(wire)
            if message_id:
                receipts.append(message_id)
        self._drained.set()
        self._transport.write(b"".join(batch))
        self._metrics.frames_sent.inc(len(batch))
        for message_id in receipts:
            self._receipts.delivered(message_id, self.user_id)

    # -- what the client sends ---------------------------------------------------------

    def touch(self) -> None:
        self._last_seen = time.monotonic()

    def on_frame(self, text: str | bytes) -> None:
        self.touch()
        if self._closing is not None:
            return
        # Acks are cheap (coalesced in memory): a client acking every message of
        # a large replay must not be taken for a flood.
        cost = 0.2 if isinstance(text, str) and '"ack"' in text[:40] else 1.0
        if not self._bucket.take(cost):
            if not self._rate_warned:
                self._rate_warned = True
                self._queue_frame(wire_text(error_frame("rate_limited", "slow down")))
            self._strike(Close.RATE_LIMITED)
            return
        self._rate_warned = False
        try:
            frame = parse_client_frame(text)
            handler = self._handlers[frame.type]
            handler(self, frame.seq, frame.topic)
        except FrameError as exc:
            self._queue_frame(wire_text(error_frame(exc.code, exc.message)))
            self._strike(Close.RATE_LIMITED)

    def _strike(self, reason: Close) -> None:
        now = time.monotonic()
        # Strikes fade at one per ten seconds: only sustained abuse closes.
        self._strikes = max(0.0, self._strikes - (now - self._strikes_at) / 10.0) + 1
        self._strikes_at = now
        if self._strikes >= self._limits.abuse_limit:
            self.close(reason)

    def _on_ping(self, _seq: int, _topic: str) -> None:
        self._queue_frame(wire_text(PONG_FRAME))

    def _on_ack(self, seq: int, _topic: str) -> None:
        if seq > self.last_seq:
            raise FrameError(
                "bad_request",
                f"ack of seq {seq}, but this connection was sent only up to {self.last_seq}",
            )
        if seq > 0:
            self._receipts.ack(self.user_id, seq)
            self._metrics.acks.inc()

    def _on_subscribe(self, _seq: int, topic: str) -> None:
        if not self.identity.may_subscribe(topic):
            raise FrameError("forbidden", f"this token may not subscribe to {topic!r}")
        if topic not in self.topics:
            if len(self.topics) >= MAX_SUBSCRIPTIONS:
                raise FrameError("bad_request", f"at most {MAX_SUBSCRIPTIONS} subscriptions")
            self._hub.subscribe(self, topic)
        self._queue_frame(wire_text(subscribed_frame(topic)))

    def _on_unsubscribe(self, _seq: int, topic: str) -> None:
        self._hub.unsubscribe(self, topic)
        self._queue_frame(wire_text(unsubscribed_frame(topic)))

    _handlers: dict[str, Callable[[Session, int, str], None]] = {
        "ping": _on_ping,
        "ack": _on_ack,
        "subscribe": _on_subscribe,
        "unsubscribe": _on_unsubscribe,
    }

    # -- pongs for protocol pings from the client go through the writer too ----------

    def queue_control(self, wire: bytes) -> None:
        self.touch()
        self._queue_frame(wire)
