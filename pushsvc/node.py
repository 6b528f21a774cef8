"""The node: the one mediator every edge talks to.

gRPC servicers call it to push, publish, disconnect and ask; peers call it to
deliver what they forwarded; WebSocket sessions call it to connect, leave,
subscribe, ack and read pages of their inbox. It owns the hub (local fan-out),
the fleet (peers, presence), receipts and the inbox store, and knows nothing of
gRPC or WebSocket. Data flows one way: edges → session → node → hub/fleet →
store.

A push is stored first (durable before the caller hears OK; concurrent pushes
share the store's group commit), then delivered to local connections through
the hub and, in a fleet, forwarded to the nodes that hold the other recipients.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple, TypeVar

import gevent
from gevent.event import Event

from pushsvc.admission import Admission
from pushsvc.errors import FailedPrecondition, PushError, StoreUnavailable
from pushsvc.fanout import TopicFanout
from pushsvc.fleet import Fleet, Recipients
from pushsvc.health import StoreHealth, within
from pushsvc.hub import SHARES, Hub
from pushsvc.messages import Message, PushCommand, new_message_id
from pushsvc.metrics import Metrics
from pushsvc.protocol import Close, UserFrame, online_wire, topic_frame, wire_text
from pushsvc.receipt_stream import Cursor, ReceiptHub, Subscription
from pushsvc.receipts import Receipts
from pushsvc.replay import Replay
from pushsvc.revocations import Revocations
from pushsvc.stats import SAMPLE_INTERVAL, History, Sample, published, read_sample
from pushsvc.store.inbox import InboxStore, RecipientStatus, StoreRequest, StoreResult, UserStart
from pushsvc.store.receipt_log import ReceiptBatch, ReceiptFilter, ReceiptLog
from pushsvc.store.registry import NodeInfo
from pushsvc.store.revocation import Revocation, RevocationStore

if TYPE_CHECKING:
    from pushsvc.session import Session

log = logging.getLogger("pushsvc.node")

TICK_MAX = 1.0  # seconds between heartbeat passes over the connections, at most
TICK_SHARE = 0.1  # seconds between two visits of the heartbeat, each to a share of them
POSITION_BATCH = 500  # users whose latest seq one position-check read asks for
T = TypeVar("T")
TURN = 256  # connections a periodic pass handles before it lets other greenlets run
LOOKUP_TIMEOUT = 2.0  # seconds an operator's inbox lookup waits for the store


class InFlight:
    """Users with a stored push of this node between its write and its delivery.

    The position check leaves them alone: their seqs are counted as written (the
    stores raise their hints before they commit) while the push is still being
    committed, so a connection would read a page that stops at it, and poll the
    store until it commits, for a frame that push delivers itself. Skipping
    loses nothing: a seq whose announcement really was lost is read as soon as
    the next frame shows the gap, or by the next check."""

    __slots__ = ("_users",)

    def __init__(self) -> None:
        self._users: dict[str, int] = {}

    def enter(self, users: Iterable[str]) -> None:
        counts = self._users
        for u in users:
            counts[u] = counts.get(u, 0) + 1

    def leave(self, users: Iterable[str]) -> None:
        counts = self._users
        for u in users:
            n = counts[u] - 1
            if n:
                counts[u] = n
            else:
                del counts[u]

    def __contains__(self, user_id: object) -> bool:
        return user_id in self._users

    def __len__(self) -> int:
        return len(self._users)


class PushOutcome(NamedTuple):
    message_id: str
    seqs: tuple[int, ...]  # in the order of the command's user ids; () when online-only
    duplicate: bool
    local_connections: int


class OnlineDelivery:
    """An online-only push of a node alone, answered before it is delivered
    (``Node.prepare_at_once``): its id, and ``deliver`` to run on the loop. Its
    frame is made there too: the loop makes the frames of every push handed over
    since its last look in one pass, with their code and data in the cache, where
    grpcio's thread would make each between two context switches."""

    __slots__ = ("_cmd", "_counters", "_hub", "_started", "message_id")

    def __init__(self, node: Node, message_id: str, cmd: PushCommand, started: float) -> None:
        self._hub = node._hub
        self._counters = node.counters
        self.message_id = message_id
        self._cmd = cmd
        self._started = started

    def deliver(self) -> None:  # on the loop
        cmd, hub = self._cmd, self._hub
        wire = online_wire(self.message_id, cmd.payload, cmd.content_type)
        for u in cmd.user_ids:
            hub.deliver_online(u, wire)
        self._counters.observe_push(time.perf_counter() - self._started)


@dataclass(frozen=True, slots=True)
class PublishOutcome:
    message_id: str
    local_subscribers: int


@dataclass(frozen=True, slots=True)
class Presence:
    user_id: str
    connections: int
    node_ids: tuple[str, ...]

    @property
    def online(self) -> bool:
        return self.connections > 0


@dataclass(frozen=True, slots=True)
class ReceiptStreaming:
    """The receipt log (None: StreamReceipts is off) and the bounds of its streams."""

    log: ReceiptLog | None = None
    buffer: int = 10_000  # events queued per subscriber
    subscribers: int = 64  # StreamReceipts calls at once


@dataclass(frozen=True, slots=True)
class AdmissionLimits:
    rate: float  # connections welcomed per second
    queue_size: int  # connections waiting for their welcome
    welcome_timeout: float  # seconds before a waiting connection gets 1013


class Node:
    def __init__(
        self,
        node_id: str,
        inbox: InboxStore,
        hub: Hub,
        fleet_factory: Callable[[Node], Fleet],
        metrics: Metrics,
        health: StoreHealth,
        admission: AdmissionLimits,
        *,
        ping_interval: float,
        heartbeat_interval: float,
        position_check: float = 30.0,
        receipt_streaming: ReceiptStreaming | None = None,
        revocation_store: RevocationStore | None = None,
    ) -> None:
        self.node_id = node_id
        self.started_at = time.time()
        self.heartbeat_interval = heartbeat_interval
        self._inbox = inbox
        self._hub = hub
        self._metrics = metrics
        self.counters = metrics.counters
        self._health = health
        streaming = receipt_streaming or ReceiptStreaming()
        self._receipt_hub = ReceiptHub(
            streaming.log,
            health,
            buffer=streaming.buffer,
            max_subscribers=streaming.subscribers,
            ask_peers=lambda seconds: self.fleet.ask_for_receipts(seconds),
        )
        self.receipts = Receipts(
            inbox,
            health,
            interval=inbox.receipt_interval,
            receipt_log=streaming.log,
            on_batch=self._receipts_recorded,
        )
        self._revocations = (
            Revocations(revocation_store, health, self._close_revoked)
            if revocation_store is not None
            else None
        )
        self._fanout = TopicFanout(hub, metrics)
        self._replay = Replay(inbox, health, workers=inbox.read_concurrency)
        self._admission = Admission(
            self._start_batch,
            node_id,
            rate=admission.rate,
            queue_size=admission.queue_size,
            welcome_timeout=admission.welcome_timeout,
            metrics=metrics,
            health=health,
        )
        self._tick = min(TICK_MAX, max(0.01, ping_interval / 5))
        self._left = Event()  # set whenever a connection leaves
        self._ticker: gevent.Greenlet | None = None
        self._position_check = position_check
        self._pushing = InFlight()
        self._checker: gevent.Greenlet | None = None
        self._sampler: gevent.Greenlet | None = None
        self.history = History()  # the last minutes of this node's figures
        self._published: dict[str, float] = {}
        self.accepting = True
        self.ws_addr = ""
        self.grpc_addr = ""
        self.fleet = fleet_factory(self)
        metrics.gauge(
            "pushsvc_connections",
            "Open WebSocket connections on this node",
            lambda: float(hub.connection_count),
        )
        metrics.gauge(
            "pushsvc_users", "Distinct users connected to this node", lambda: float(hub.user_count)
        )
        metrics.gauge(
            "pushsvc_receipt_streams",
            "StreamReceipts calls open on this node",
            lambda: float(self._receipt_hub.subscribers),
        )

    # -- lifecycle ----------------------------------------------------------------------

    def prepare(self) -> None:
        """Before the first connection: read the revocation list, if the store answers
        (a store down at start delays the list, not the listeners: it is read as soon
        as the store answers)."""
        if self._revocations is not None and self._health.ok:
            self._revocations.refresh()

    def start(self) -> None:
        if self._revocations is not None:
            self._revocations.start()
        self.receipts.start()
        self._admission.start()
        self._ticker = gevent.spawn(self._tick_loop)
        self._checker = gevent.spawn(self._position_loop)
        self._sampler = gevent.spawn(self._sample_loop)
        self.fleet.start()

    def info(self) -> NodeInfo:
        """This node's registration as the fleet publishes it."""
        return NodeInfo(
            node_id=self.node_id,
            grpc_addr=self.grpc_addr,
            ws_addr=self.ws_addr,
            started_at=self.started_at,
            expires_at=time.time() + 3 * self.heartbeat_interval,
            connections=self._hub.connection_count,
            stats=self._published,
        )

    @property
    def connection_count(self) -> int:
        return self._hub.connection_count

    @property
    def user_count(self) -> int:
        return self._hub.user_count

    def stop_fleet(self) -> None:
        """Leave the fleet: no more routing here (part of a drain)."""
        self.fleet.stop()

    def end_streams(self) -> None:
        """Draining: end the StreamReceipts calls, each with its cursor to resume from."""
        self._receipt_hub.close()

    def close_connections(self, reason: Close, limit: int | None = None) -> list[Session]:
        """Close up to ``limit`` open connections with ``reason``; returns them."""
        closing: list[Session] = []
        for conn in self._hub.connections():
            session: Session = conn  # type: ignore[assignment]
            if not session.closing:
                session.close(reason)
                closing.append(session)
                if limit is not None and len(closing) >= limit:
                    break
        return closing

    def wait_closed(self, sessions: Sequence[Session], timeout: float) -> bool:
        """Wait (bounded) until these sessions' sockets are gone; True if they are."""
        deadline = time.monotonic() + timeout
        while True:
            self._left.clear()  # before the check: a leave after it sets it again
            if all(s.closed for s in sessions):
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._left.wait(left)

    def stop(self) -> None:
        """After the drain: stop the workers and flush acks and receipts."""
        self._admission.stop()
        self._replay.stop()
        for loop in (self._ticker, self._checker, self._sampler):
            if loop is not None:
                loop.kill(block=False)
        if self._revocations is not None:
            self._revocations.stop()
        self.receipts.stop()

    def sweep(self, now: float) -> int:
        live = {n.node_id for n in self.fleet.nodes()}
        removed = self._inbox.sweep(now, live_writers=live)
        if self._receipt_hub.log is not None:
            removed += self._receipt_hub.log.sweep(now)
        if self._revocations is not None:
            removed += self._revocations.sweep(now)
        return removed + self.fleet.sweep(now)

    def _tick_loop(self) -> None:
        """Pings and ping timeouts for every connection, from one greenlet, in
        slices: a pass over 10,000 connections that pings a third of them is tens
        of milliseconds of work, which pushes must not wait behind in one block.

        Each connection is visited once a period (``_tick``), but the period is
        spread over visits every ``TICK_SHARE`` seconds, each to some of the hub's
        shares of the connections: the pings of a period go out, and their pongs
        come back, in ten small groups instead of one large one (about 500 pongs
        read in one turn of the loop every second, at 10,000 connections, which
        the pushes of that turn wait behind)."""
        visits = min(SHARES, max(1, round(self._tick / TICK_SHARE)))
        visit = 0
        while True:
            gevent.sleep(self._tick / visits)  # the heartbeat's period, not synchronisation
            self._tick_pass(visit * SHARES // visits, (visit + 1) * SHARES // visits)
            visit = (visit + 1) % visits

    def _tick_pass(self, first: int = 0, stop: int = SHARES) -> None:
        """One heartbeat visit, to the connections of the hub's shares ``first`` to
        ``stop - 1`` (all by default). Its snapshot of the connections ends with it:
        a pass's locals kept until the next would keep closed sessions alive
        meanwhile (and for good once the node has no connections left)."""
        for some in in_turns(self._hub.connections_in_shares(first, stop)):
            now = time.monotonic()
            for conn in some:
                session: Session = conn  # type: ignore[assignment]
                session.tick(now)

    def _position_loop(self) -> None:
        """Every ``position_check`` seconds, compare each connection's position with
        its user's latest seq: a connection whose live announcement was lost (a
        forward that failed, presence that was not yet known) reads on instead of
        waiting for the user's next message. One store read per 500 users."""
        while True:
            gevent.sleep(self._position_check)  # the check's period, not synchronisation
            self._position_pass()

    def _position_pass(self) -> None:
        """One position check (its snapshot of the sessions ends with it)."""
        sessions: dict[str, list[Session]] = {}
        for some in in_turns(self._hub.connections()):
            for conn in some:
                session: Session = conn  # type: ignore[assignment]
                if session.welcomed and not session.closing:
                    sessions.setdefault(session.user_id, []).append(session)
        users = list(sessions)
        for i in range(0, len(users), POSITION_BATCH):
            part = users[i : i + POSITION_BATCH]
            try:
                starts = self._inbox.latest_seqs(part)
            except StoreUnavailable as exc:
                self._health.failed(exc)
                return
            for user in part:
                if user in self._pushing:
                    continue  # that push delivers its own frame (``InFlight``)
                latest = starts.get(user, 0)
                for session in sessions[user]:
                    if not session.closing:
                        session.on_behind(latest)
            gevent.sleep(0)  # the read may not have yielded (a cached answer)

    # -- pushes -------------------------------------------------------------------------

    def push(self, cmd: PushCommand) -> PushOutcome:
        (outcome,) = self.push_many([cmd])
        if isinstance(outcome, PushError):
            raise outcome
        return outcome

    def answers_at_once(self, ttl_seconds: int) -> bool:
        """Whether a push with this TTL can be answered before its delivery: an
        online-only one on a node alone (``prepare_at_once``)."""
        return not ttl_seconds and self.fleet.alone

    def prepare_at_once(self, cmd: PushCommand) -> OnlineDelivery | None:
        """From any thread: an online-only push on a node alone, made ready to be
        answered at once -- what its caller hears (the message id) depends on
        nothing the loop holds, and what the loop does with it (make its frame and
        queue it on the connections live when it runs) needs no answer. None for a
        push that goes through ``push``: stored, or in a fleet (its call waits for
        the nodes it is forwarded to)."""
        if not self.answers_at_once(cmd.ttl_seconds):
            return None
        started = time.perf_counter()
        return OnlineDelivery(self, new_message_id(time.time(), cmd.owner), cmd, started)

    def push_many(self, cmds: Sequence[PushCommand]) -> list[PushOutcome | PushError]:
        """Store (one group commit for all), then deliver each; one outcome per command.

        Forwarding to other nodes is one routing for the whole batch, waited for once.
        """
        started = time.perf_counter()
        now = time.time()
        ids = [new_message_id(now, cmd.owner) for cmd in cmds]
        # Message bodies for the store and the other nodes: an online-only push on
        # a node alone needs none (its frame is made from the command).
        alone = self.fleet.alone
        messages = {
            i: Message(
                ids[i],
                cmd.payload,
                cmd.content_type,
                now,
                now + cmd.ttl_seconds if cmd.ttl_seconds else None,
            )
            for i, cmd in enumerate(cmds)
            if cmd.ttl_seconds or not alone
        }
        pushing = [u for cmd in cmds if cmd.ttl_seconds for u in cmd.user_ids]
        self._pushing.enter(pushing)
        try:
            stored = self._store(cmds, messages, now) if pushing else {}
            outcomes: list[PushOutcome | PushError] = []
            forwards: list[tuple[Message, Recipients]] = []
            hub = self._hub
            for i, cmd in enumerate(cmds):
                if not cmd.ttl_seconds:  # online-only
                    wire = online_wire(ids[i], cmd.payload, cmd.content_type)
                    local = 0
                    for u in cmd.user_ids:
                        local += hub.deliver_online(u, wire)
                    outcomes.append(PushOutcome(ids[i], (), False, local))
                    if not alone:
                        forwards.append((messages[i], [(u, 0) for u in cmd.user_ids]))
                    continue
                result = stored[i]
                if isinstance(result, PushError):
                    outcomes.append(result)
                    continue
                outcomes.append(self._deliver_stored(cmd, messages[i], result))
                if not alone and not result.duplicate:
                    forwards.append(
                        (messages[i], list(zip(cmd.user_ids, result.seqs, strict=True)))
                    )
            if forwards:
                self.fleet.forward_users(forwards)
        finally:
            self._pushing.leave(pushing)
        self.counters.observe_push(
            time.perf_counter() - started, sum(isinstance(o, PushOutcome) for o in outcomes)
        )
        return outcomes

    def _store(
        self, cmds: Sequence[PushCommand], messages: dict[int, Message], now: float
    ) -> dict[int, StoreResult | PushError]:
        """Store the commands with a TTL; a key repeated in the batch is stored once,
        and its repeats answer as duplicates of the first."""
        first_of: dict[str, int] = {}
        firsts: list[int] = []
        repeats: dict[int, int] = {}
        for i, cmd in enumerate(cmds):
            if not cmd.ttl_seconds:
                continue
            key = cmd.idempotency_key
            if key and key in first_of:
                repeats[i] = first_of[key]
                continue
            if key:
                first_of[key] = i
            firsts.append(i)
        stored: dict[int, StoreResult | PushError] = {}
        if not firsts:
            return stored
        requests = [
            StoreRequest(messages[i], cmds[i].user_ids, cmds[i].idempotency_key) for i in firsts
        ]
        try:
            results = self._inbox.store_messages(requests, now)
        except StoreUnavailable as exc:
            results = [exc] * len(requests)
        for i, outcome in zip(firsts, results, strict=True):
            if isinstance(outcome, StoreUnavailable):
                self._health.failed(outcome)
            stored[i] = outcome
        if any(isinstance(outcome, StoreResult) for outcome in results):
            self._health.wrote()
        for i, first in repeats.items():
            done = stored[first]
            if isinstance(done, PushError):
                stored[i] = done
            else:
                seen = dict(zip(cmds[first].user_ids, done.seqs, strict=True))
                seqs = tuple(seen.get(u, 0) for u in cmds[i].user_ids)
                stored[i] = StoreResult(done.message_id, seqs, duplicate=True)
        return stored

    def _deliver_stored(
        self, cmd: PushCommand, message: Message, stored: StoreResult
    ) -> PushOutcome:
        """A stored push's local delivery (a duplicate's was done by its first push)."""
        if stored.duplicate:
            return PushOutcome(stored.message_id, stored.seqs, True, 0)
        hub = self._hub
        frame = UserFrame(message.id, message.payload, message.content_type)
        local = 0
        for uid, seq in zip(cmd.user_ids, stored.seqs, strict=True):
            local += hub.deliver_user(uid, seq, frame, message.id, message.expires_at)
        return PushOutcome(message.id, stored.seqs, False, local)

    def publish(self, topic: str, payload: bytes, content_type: str) -> PublishOutcome:
        now = time.time()
        message = Message(new_message_id(now), payload, content_type, now)
        local = self.deliver_topic(message, topic)
        self.fleet.forward_topic(message, topic)
        self.counters.messages_published += 1
        return PublishOutcome(message.id, local)

    # -- what the fleet's peers hand to this node --------------------------------------

    def deliver_users(self, message: Message, recipients: Sequence[tuple[str, int]]) -> int:
        frame = UserFrame(message.id, message.payload, message.content_type)
        total = 0
        wire: bytes | None = None  # the online-only frame, made for the first who needs it
        for uid, seq in recipients:
            if seq:
                total += self._hub.deliver_user(uid, seq, frame, message.id, message.expires_at)
            else:
                if wire is None:
                    wire = online_wire(message.id, message.payload, message.content_type)
                total += self._hub.deliver_online(uid, wire)
        return total

    def deliver_topic(self, message: Message, topic: str) -> int:
        """Fan a topic message out to this node's subscribers (in order per topic;
        finished even if the caller stops waiting); how many took it."""
        wire = wire_text(topic_frame(message.id, topic, message.payload, message.content_type))
        written: int = self._fanout.publish(topic, wire).get()
        return written

    def disconnect_local(self, user_id: str, reason: str) -> int:
        closing = self._hub.connections_of_user(user_id)
        for conn in closing:
            session: Session = conn  # type: ignore[assignment]
            session.close(Close.DISCONNECTED, reason or Close.DISCONNECTED.reason)
        return len(closing)

    # -- queries and control -----------------------------------------------------------

    def disconnect(self, user_id: str, reason: str) -> int:
        return self.disconnect_local(user_id, reason) + self.fleet.forward_disconnect(
            user_id, reason
        )

    def presence(self, user_ids: Sequence[str]) -> list[Presence]:
        found = self.fleet.presence(user_ids)
        out = []
        for uid in user_ids:
            per_node = found.get(uid, {})
            out.append(Presence(uid, sum(per_node.values()), tuple(sorted(per_node))))
        return out

    def message_status(self, message_id: str) -> list[RecipientStatus]:
        try:
            return self._inbox.message_status(message_id, time.time())
        except StoreUnavailable as exc:
            self._health.failed(exc)
            raise

    def nodes(self) -> list[NodeInfo]:
        return self.fleet.nodes()

    # -- receipts as a stream --------------------------------------------------------------

    def stream_receipts(self, flt: ReceiptFilter, cursor: Cursor | None) -> Subscription:
        """A StreamReceipts call: from ``cursor`` (else from now), matching ``flt``.
        Call ``end_stream`` when it ends."""
        return self._receipt_hub.subscribe(flt, cursor)

    def end_stream(self, subscription: Subscription) -> None:
        self._receipt_hub.unsubscribe(subscription)

    def _receipts_recorded(self, batch: ReceiptBatch) -> None:
        """This node's receipts committed to the log: local streams, and peers with streams."""
        self._receipt_hub.on_batch(batch)
        self.fleet.forward_receipts(batch)

    def receipts_from_peer(self, batch: ReceiptBatch) -> None:
        self._receipt_hub.on_batch(batch)

    def peer_wants_receipts(self, node_id: str, seconds: float) -> None:
        self.fleet.send_receipts_to(node_id, seconds)

    # -- token revocation --------------------------------------------------------------------

    def revoke(self, revocation: Revocation) -> int:
        """Record a revocation for the fleet, close its connections here and on every
        peer; how many were closed. Raises StoreUnavailable (nothing recorded)."""
        if self._revocations is None:
            raise FailedPrecondition("this node has no revocation list")
        closed = self._revocations.add(revocation)  # closes the local connections
        return closed + self.fleet.forward_revocation(revocation)

    def apply_revocation(self, revocation: Revocation) -> int:
        """A peer recorded a revocation: close its connections here; how many."""
        if self._revocations is None:
            return 0
        return self._revocations.apply(revocation)

    def revoked(self, jti: str) -> bool:
        return self._revocations is not None and self._revocations.revoked(jti)

    def _close_revoked(self, revocation: Revocation) -> int:
        reason = Close.REVOKED.reason
        if revocation.reason:
            reason = f"{reason}: {revocation.reason}"
        closed = 0
        for conn in self._hub.connections():
            session: Session = conn  # type: ignore[assignment]
            if session.identity.jti == revocation.jti and not session.closing:
                session.close(Close.REVOKED, reason)
                closed += 1
        if closed:
            log.info("closed revoked connections", extra={"connections": closed})
        return closed

    # -- WebSocket sessions ---------------------------------------------------------------

    def connect(self, session: Session) -> None:
        """A new connection: local deliveries from now on; welcome once admitted."""
        self._hub.add(session)
        self._admission.admit(session)

    def _start_batch(self, user_ids: Sequence[str]) -> dict[str, UserStart]:
        """Admission's store work for a batch of connections: presence first (a push
        stored after it is routed here), then where each user's replay starts."""
        self.fleet.arrived(user_ids)
        return self._inbox.user_starts(user_ids)

    def leave(self, session: Session) -> None:
        self._hub.remove(session, tuple(session.topics))
        self._replay.forget(session)
        self.fleet.changed(session.user_id)
        self._left.set()

    def subscribe(self, session: Session, topic: str) -> None:
        self._hub.subscribe(session, topic)

    def unsubscribe(self, session: Session, topic: str) -> None:
        self._hub.unsubscribe(session, topic)

    def ack(self, user_id: str, seq: int) -> None:
        self.counters.acks += 1
        self.receipts.ack(user_id, seq)

    def read_page(self, session: Session, after: int, later: bool, token: int) -> None:
        self._replay.read(session, after, later, token)

    # -- what an operator looks at (admin console) ----------------------------------------

    @property
    def store_health(self) -> tuple[bool, str]:
        """Whether stored writes work now, and why not."""
        return self._health.ok, self._health.reason

    def sample(self) -> Sample:
        """This node's figures now (cumulative counts and gauges)."""
        return read_sample(
            self._metrics,
            at=time.time(),
            connections=self._hub.connection_count,
            users=self._hub.user_count,
            store_ok=self._health.ok,
        )

    def _sample_loop(self) -> None:
        """A sample into the history every SAMPLE_INTERVAL; the latest figures are
        what the node publishes in its registration."""
        while True:
            now = self.sample()
            self._published = published(now, self.history.rates(now))
            self.history.add(now)
            gevent.sleep(SAMPLE_INTERVAL)  # the sampling period, not synchronisation

    def inbox_positions(self, user_ids: Sequence[str]) -> dict[str, UserStart]:
        """Each user's latest and acked seq (bounded wait on the store)."""
        try:
            return within(LOOKUP_TIMEOUT, "the inbox lookup", self._inbox.user_starts, user_ids)
        except StoreUnavailable as exc:
            self._health.failed(exc)
            raise


def in_turns(items: Sequence[T], size: int = TURN) -> Iterator[Sequence[T]]:
    """``items`` in slices of ``size``, letting every other ready greenlet run
    between two slices: a periodic pass over all connections (a snapshot) takes
    turns with the pushes instead of holding the event loop for the whole pass."""
    for start in range(0, len(items), size):
        if start:
            gevent.sleep(0)
        yield items[start : start + size]
