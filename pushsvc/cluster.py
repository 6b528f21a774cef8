"""The fleet over MongoDB: membership, presence, and forwarding between nodes.

- Membership: the node registers with a time-to-live and refreshes it every
  ``heartbeat_interval``; a store that is down at start-up delays the
  registration, not the listeners.
- Presence: ``PresenceWriter`` records how many connections of each user this
  node holds. A user's first arrival is written before the connection is
  replayed (``arrived``), so a push stored after it is routed here; other
  changes are batched. Every write records the hub's *current* counts, so a
  late write never undoes a newer change. ``PresenceCache`` keeps what was last
  read, bounded, so online-only pushes keep being routed while the store is
  down (its age is a metric).
- Forwarding is batched per destination node: each peer has an outbox drained
  by its own greenlet into ``NodeService.Deliver`` calls with a deadline (made
  on a native thread of a pool: grpcio's calls block the thread that makes
  them, see ``nativethreads``), over
  one channel kept per peer (TLS, with this node's client certificate under
  mutual TLS, when the node has a certificate; renewed when it is reloaded).
  A slow or stopped peer delays only its own outbox; a failed forward leaves
  the message in the inbox (it is already stored) and is counted in
  ``pushsvc_forward_total{result}``.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence

import gevent
import grpc
from gevent.event import Event
from gevent.lock import BoundedSemaphore, Semaphore
from gevent.pool import Pool
from gevent.threadpool import ThreadPool

from pushsvc.errors import StoreUnavailable
from pushsvc.fleet import Recipients
from pushsvc.health import StoreHealth, within
from pushsvc.hub import Hub
from pushsvc.messages import Message
from pushsvc.metrics import Metrics
from pushsvc.store.receipt_log import Kind, ReceiptBatch
from pushsvc.store.registry import NodeInfo, NodeRegistry
from pushsvc.store.revocation import Revocation
from pushsvc_client.v1 import node_pb2, node_pb2_grpc, push_pb2

log = logging.getLogger("pushsvc.cluster")

_KINDS = {Kind.DELIVERED: push_pb2.RECEIPT_KIND_DELIVERED, Kind.ACKED: push_pb2.RECEIPT_KIND_ACKED}

BATCH = 500  # deliveries per Deliver call
OUTBOX_LIMIT = 100_000  # deliveries queued per peer before the oldest are dropped
NODES_CACHE = 1.0  # seconds a list of live nodes is reused
PRESENCE_BATCH_WINDOW = 0.2  # seconds presence changes are gathered before a write
PRESENCE_CACHE_SIZE = 100_000  # users whose last-read presence is kept for outages
ROUTING_TIMEOUT = 1.0  # seconds a presence or node lookup may take before the cache answers
ROUTING_LOOKUPS = 16  # presence lookups in flight at once; beyond, the cache answers
CALL_THREADS = 32  # Deliver calls in flight at once (one per peer at most)


class PresenceWriter:
    """This node's presence records, kept equal to the hub's counts."""

    def __init__(self, registry: NodeRegistry, hub: Hub, node_id: str, health: StoreHealth) -> None:
        self._registry = registry
        self._hub = hub
        self._node_id = node_id
        self._health = health
        self._lock = Semaphore()
        self._dirty: set[str] = set()
        self._resync = False
        self._wakeup = Event()
        self._greenlet: gevent.Greenlet | None = None

    def arrived(self, user_ids: Sequence[str]) -> None:
        """Write now (raises StoreUnavailable): these users' replays wait for it."""
        with self._lock:
            users = set(user_ids)
            self._dirty -= users
            counts = {u: self._hub.connections_of(u) for u in users}
            try:
                self._registry.arrive(self._node_id, counts)
            except StoreUnavailable:
                self._dirty |= users
                raise

    def changed(self, user_id: str) -> None:
        self._dirty.add(user_id)
        self._wakeup.set()

    def resync(self) -> None:
        """After an outage or a re-registration: rewrite every user held here."""
        self._resync = True
        self._wakeup.set()

    def flush(self) -> None:
        with self._lock:
            if self._resync:
                self._resync = False
                users = set(self._hub.users()) | self._dirty
            else:
                users = self._dirty
            self._dirty = set()
            if not users:
                return
            try:
                self._write(users)
            except StoreUnavailable:
                self._dirty |= users
                raise

    def _write(self, users: set[str]) -> None:
        self._registry.set_presence(self._node_id, {u: self._hub.connections_of(u) for u in users})

    def start(self) -> None:
        self._greenlet = gevent.spawn(self._run)

    def stop(self) -> None:
        if self._greenlet is not None:
            self._greenlet.kill(block=False)

    def _run(self) -> None:
        while True:
            self._wakeup.wait()
            self._wakeup.clear()
            try:
                self.flush()
            except StoreUnavailable as exc:
                self._health.failed(exc)
                self._wakeup.set()  # try again after the window
            gevent.sleep(PRESENCE_BATCH_WINDOW)  # batching window, not synchronisation


class PresenceCache:
    """What presence said, per user, when it was last read (bounded, LRU)."""

    def __init__(self, metrics: Metrics, size: int = PRESENCE_CACHE_SIZE) -> None:
        self._entries: OrderedDict[str, tuple[float, dict[str, int]]] = OrderedDict()
        self._size = size
        self._metrics = metrics

    def put(self, user_ids: Sequence[str], found: dict[str, dict[str, int]], now: float) -> None:
        entries = self._entries
        for u in user_ids:
            entries[u] = (now, found.get(u, {}))
            entries.move_to_end(u)
        while len(entries) > self._size:
            entries.popitem(last=False)

    def get(self, user_ids: Sequence[str], now: float) -> dict[str, dict[str, int]]:
        """Served during an outage: the metric says how old the oldest answer is."""
        out: dict[str, dict[str, int]] = {}
        oldest = now
        for u in user_ids:
            hit = self._entries.get(u)
            if hit is not None:
                oldest = min(oldest, hit[0])
                if hit[1]:
                    out[u] = hit[1]
        self._metrics.presence_cache_age.set(now - oldest)
        self._metrics.presence_cache_served.inc(len(user_ids))
        return out


class Peer:
    """One destination node: a channel and an outbox drained by one greenlet."""

    def __init__(
        self,
        info: NodeInfo,
        cluster_key: str,
        timeout: float,
        metrics: Metrics,
        calls: ThreadPool,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        self.info = info
        self._calls = calls
        self._metadata = (("authorization", f"Bearer {cluster_key}"),)
        self._timeout = timeout
        self._metrics = metrics
        self._channel = self._open(credentials)
        self._stub = node_pb2_grpc.NodeServiceStub(self._channel)
        # (delivery, set when the Deliver call carrying it has finished)
        self._outbox: deque[tuple[node_pb2.Delivery, Event | None]] = deque()
        self._wakeup = Event()
        self._greenlet = gevent.spawn(self._run)

    def _open(self, credentials: grpc.ChannelCredentials | None) -> grpc.Channel:
        if credentials is None:
            return grpc.insecure_channel(self.info.grpc_addr)
        return grpc.secure_channel(self.info.grpc_addr, credentials)

    def renew(self, credentials: grpc.ChannelCredentials | None) -> None:
        """A new channel with new credentials (a reloaded client certificate). Calls
        in flight on the old one finish within their deadline; then it is closed."""
        old = self._channel
        self._channel = self._open(credentials)
        self._stub = node_pb2_grpc.NodeServiceStub(self._channel)
        gevent.spawn_later(self._timeout + 1.0, old.close)

    def send(self, delivery: node_pb2.Delivery, done: Event | None = None) -> None:
        if len(self._outbox) >= OUTBOX_LIMIT:
            _, dropped = self._outbox.popleft()
            if dropped is not None:
                dropped.set()
            self._metrics.forwards.labels("dropped").inc()
        self._outbox.append((delivery, done))
        self._wakeup.set()

    def call(self, deliveries: list[node_pb2.Delivery]) -> node_pb2.DeliverResponse | None:
        """One Deliver call with the deadline; None when it failed."""
        request = node_pb2.DeliverRequest(node_id=self.info.node_id, deliveries=deliveries)
        try:
            response = self._calls.apply(
                self._stub.Deliver,
                (request,),
                {"timeout": self._timeout, "metadata": self._metadata},
            )
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else None
            result = "timeout" if code == grpc.StatusCode.DEADLINE_EXCEEDED else "error"
            self._metrics.forwards.labels(result).inc()
            log.warning(
                "forward failed",
                extra={"peer": self.info.node_id, "result": result, "deliveries": len(deliveries)},
            )
            return None
        self._metrics.forwards.labels("ok").inc()
        return response

    def _run(self) -> None:
        while True:
            self._wakeup.wait()
            self._wakeup.clear()
            while self._outbox:
                self._send_batch()

    def _send_batch(self) -> None:
        """The next batch of the outbox, in one call (which lets go of its messages
        when it returns, not when the next batch comes)."""
        batch = [self._outbox.popleft() for _ in range(min(BATCH, len(self._outbox)))]
        try:
            self.call([delivery for delivery, _ in batch])
        finally:
            for _, done in batch:
                if done is not None:
                    done.set()

    def close(self) -> None:
        self._greenlet.kill(block=False)
        self._channel.close()


class ClusterFleet:
    """A node of a fleet (implements ``fleet.Fleet``)."""

    alone = False

    def __init__(
        self,
        registry: NodeRegistry,
        hub: Hub,
        info: Callable[[], NodeInfo],
        *,
        cluster_key: str,
        forward_timeout: float,
        heartbeat_interval: float,
        metrics: Metrics,
        health: StoreHealth,
        on_registered: Callable[[], None],
        peer_credentials: Callable[[], grpc.ChannelCredentials] | None = None,
    ) -> None:
        self._registry = registry
        self._hub = hub
        self._info = info
        self._node_id = info().node_id
        self._key = cluster_key
        self._timeout = forward_timeout
        self._interval = heartbeat_interval
        self._metrics = metrics
        self._health = health
        self._on_registered = on_registered
        self._credentials = peer_credentials  # None: cleartext between nodes
        self._peers: dict[str, Peer] = {}
        self._nodes: list[NodeInfo] = []
        self._nodes_at = -NODES_CACHE
        self._presence = PresenceWriter(registry, hub, self._node_id, health)
        self._cache = PresenceCache(metrics)
        self._pool = Pool(64)
        self._calls = ThreadPool(CALL_THREADS)
        # A store that hangs must not collect a lookup per push: beyond this many
        # in flight (each may outlive its caller's wait), the cache answers.
        self._lookups = BoundedSemaphore(ROUTING_LOOKUPS)
        self._heartbeat: gevent.Greenlet | None = None
        self._store_ok = True
        self.registered = False
        # Peers with StreamReceipts subscribers: node id -> until (monotonic).
        self._receipt_peers: dict[str, float] = {}

    # -- membership -----------------------------------------------------------------------

    def start(self) -> None:
        self._register()
        self._presence.start()
        self._heartbeat = gevent.spawn(self._heartbeat_loop)

    def _register(self) -> None:
        try:
            self._registry.register_node(self._info())
        except StoreUnavailable as exc:
            self._health.failed(exc)
            log.error("node registration failed: %s", exc)
            return
        first = not self.registered
        self.registered = True
        self._presence.resync()  # registering purged this id's old presence
        if first:
            self._on_registered()

    def _heartbeat_loop(self) -> None:
        while True:
            gevent.sleep(self._interval)  # the heartbeat's period, not synchronisation
            if not self.registered:
                self._register()  # the store was down at start: register in full now
                continue
            info = self._info()
            try:
                self._registry.refresh_node(
                    info.node_id, info.expires_at, info.connections, info.stats
                )
            except StoreUnavailable as exc:
                self._store_ok = False
                self._health.failed(exc)
                continue
            if not self._store_ok:
                self._store_ok = True
                self._presence.resync()  # writes may have been lost in the outage

    def stop(self) -> None:
        """Stop heartbeats, presence writes and peer channels, then deregister
        (the caller bounds how long it waits for that)."""
        if self._heartbeat is not None:
            self._heartbeat.kill(block=True, timeout=1.0)
        self._presence.stop()
        for peer in self._peers.values():
            peer.close()
        self._peers.clear()
        self._registry.deregister_node(self._node_id)

    def close(self) -> None:
        self._calls.kill()
        self._registry.close()

    def sweep(self, now: float) -> int:
        return self._registry.sweep(now)

    # -- presence ---------------------------------------------------------------------------

    def arrived(self, user_ids: Sequence[str]) -> None:
        self._presence.arrived(user_ids)

    def changed(self, user_id: str) -> None:
        self._presence.changed(user_id)

    def _where(self, user_ids: Sequence[str], routing: bool = False) -> dict[str, dict[str, int]]:
        """Presence from the registry, or from the cache while the store is down.

        ``routing``: the lookup of a push, which reads only the presence records
        and checks their nodes against the list of live nodes it routes with
        (``_live``): one round trip per push group instead of two."""
        now = time.time()
        if not self._lookups.acquire(blocking=False):
            return self._cache.get(user_ids, now)
        try:
            found = within(
                ROUTING_TIMEOUT, "the presence lookup", self._lookup, user_ids, now, routing
            )
            if routing:
                found = self._live(found, now)
        except StoreUnavailable as exc:
            self._health.failed(exc)
            return self._cache.get(user_ids, now)
        self._cache.put(user_ids, found, now)
        return found

    def _lookup(
        self, user_ids: Sequence[str], now: float, routing: bool
    ) -> dict[str, dict[str, int]]:
        try:
            if routing:
                return self._registry.held_by(user_ids)
            return self._registry.presence(user_ids, now)
        finally:
            self._lookups.release()

    def _live(self, held: dict[str, dict[str, int]], now: float) -> dict[str, dict[str, int]]:
        """``held`` without the records of nodes whose registration has expired, as
        ``NodeRegistry.presence`` answers: judged by the list of nodes (at most
        ``NODES_CACHE`` old), which is read again when it does not show a named
        node alive -- a node that registered since, or renewed a lapsed
        registration, or is really gone."""
        named = {n for per_node in held.values() for n in per_node} - {self._node_id}
        if not named:
            return held
        expiry = {n.node_id: n.expires_at for n in self.nodes()}
        if any(expiry.get(n, 0.0) <= now for n in named):
            self._nodes_at = -NODES_CACHE
            expiry = {n.node_id: n.expires_at for n in self.nodes()}
        out: dict[str, dict[str, int]] = {}
        for user_id, per_node in held.items():
            live = {
                n: c
                for n, c in sorted(per_node.items())
                if n == self._node_id or expiry.get(n, 0.0) > now
            }
            if live:
                out[user_id] = live
        return out

    def presence(self, user_ids: Sequence[str]) -> dict[str, dict[str, int]]:
        where = self._where(user_ids)
        out: dict[str, dict[str, int]] = {}
        for user_id in user_ids:
            per_node = dict(where.get(user_id, {}))
            local = self._hub.connections_of(user_id)  # fresher than the store
            if local:
                per_node[self._node_id] = local
            else:
                per_node.pop(self._node_id, None)
            if per_node:
                out[user_id] = per_node
        return out

    # -- peers ------------------------------------------------------------------------------

    def nodes(self) -> list[NodeInfo]:
        now = time.monotonic()
        if now - self._nodes_at > NODES_CACHE:
            try:
                self._nodes = within(
                    ROUTING_TIMEOUT, "the node lookup", self._registry.live_nodes, time.time()
                )
            except StoreUnavailable as exc:
                self._health.failed(exc)
                return self._nodes  # the last list read: still the best guess
            self._nodes_at = now
            self._retire_peers()
        return self._nodes

    def _retire_peers(self) -> None:
        live = {n.node_id for n in self._nodes}
        for node_id in [p for p in self._peers if p not in live]:
            self._peers.pop(node_id).close()

    def _peer(self, info: NodeInfo) -> Peer:
        peer = self._peers.get(info.node_id)
        if peer is None or peer.info.grpc_addr != info.grpc_addr:
            if peer is not None:
                peer.close()
            credentials = self._credentials() if self._credentials is not None else None
            peer = Peer(info, self._key, self._timeout, self._metrics, self._calls, credentials)
            self._peers[info.node_id] = peer
        return peer

    def renew_channels(self) -> None:
        """This node's certificate was reloaded: dial peers with it from now on."""
        if self._credentials is None:
            return
        credentials = self._credentials()
        for peer in self._peers.values():
            peer.renew(credentials)

    def _remote_nodes(self) -> dict[str, NodeInfo]:
        return {n.node_id: n for n in self.nodes() if n.node_id != self._node_id}

    # -- forwarding -------------------------------------------------------------------------

    def forward_users(self, batch: Sequence[tuple[Message, Recipients]]) -> None:
        """Hand each message to every other node holding a recipient; wait (bounded).

        Waiting means a push that answered OK has already reached the nodes of
        its online recipients, even if this node dies the next moment. A peer
        that does not answer costs at most the forward deadline.
        """
        waits = self._route_users(batch)
        if waits:
            deadline = time.monotonic() + self._timeout + 0.5
            for done in waits:
                done.wait(max(0.0, deadline - time.monotonic()))

    def _route_users(self, batch: Sequence[tuple[Message, Recipients]]) -> list[Event]:
        users = list(dict.fromkeys(u for _, recipients in batch for u, _ in recipients))
        where = self._where(users, routing=True)
        named = {node_id for per_node in where.values() for node_id in per_node}
        named.discard(self._node_id)
        if not named:
            return []  # every recipient online is here (or nowhere): nothing to forward
        nodes = self._remote_nodes()
        if not named <= nodes.keys():
            self._nodes_at = -NODES_CACHE  # a node newer than the cached list holds a recipient
            nodes = self._remote_nodes()
        waits = []
        for message, recipients in batch:
            per_node: dict[str, list[node_pb2.Recipient]] = {}
            for user_id, seq in recipients:
                for node_id in where.get(user_id, {}):
                    if node_id in nodes:
                        per_node.setdefault(node_id, []).append(
                            node_pb2.Recipient(user_id=user_id, seq=seq)
                        )
            for node_id, recips in per_node.items():
                done = Event()
                self._peer(nodes[node_id]).send(
                    node_pb2.Delivery(
                        user=node_pb2.UserDelivery(
                            message_id=message.id,
                            payload=message.payload,
                            content_type=message.content_type,
                            recipients=recips,
                            expires_at=message.expires_at or 0.0,
                        )
                    ),
                    done,
                )
                waits.append(done)
        return waits

    def forward_topic(self, message: Message, topic: str) -> None:
        delivery = node_pb2.Delivery(
            topic=node_pb2.TopicDelivery(
                message_id=message.id,
                topic=topic,
                payload=message.payload,
                content_type=message.content_type,
            )
        )
        for info in self._remote_nodes().values():
            self._peer(info).send(delivery)

    def forward_disconnect(self, user_id: str, reason: str) -> int:
        """Ask every other live node to close the user's connections; wait (bounded)."""
        delivery = node_pb2.Delivery(
            disconnect=node_pb2.UserDisconnect(user_id=user_id, reason=reason)
        )
        peers = [self._peer(n) for n in self._remote_nodes().values()]

        def call(peer: Peer) -> int:
            response = peer.call([delivery])
            return response.connections[0] if response is not None and response.connections else 0

        return sum(self._pool.map(call, peers))

    def forward_revocation(self, revocation: Revocation) -> int:
        """Hand a revocation to every other live node; wait (bounded) for their counts.
        The list of nodes is read afresh (revocations are rare): a node that joined
        within the cache's second is reached too."""
        self._nodes_at = -NODES_CACHE
        delivery = node_pb2.Delivery(
            revocation=node_pb2.TokenRevocation(
                jti=revocation.jti, expires_at=revocation.expires_at, reason=revocation.reason
            )
        )
        peers = [self._peer(n) for n in self._remote_nodes().values()]

        def call(peer: Peer) -> int:
            response = peer.call([delivery])
            return response.connections[0] if response is not None and response.connections else 0

        return sum(self._pool.map(call, peers))

    # -- receipt batches for the peers' StreamReceipts subscribers ------------------------

    def ask_for_receipts(self, seconds: float) -> None:
        delivery = node_pb2.Delivery(
            receipt_interest=node_pb2.ReceiptInterest(node_id=self._node_id, seconds=seconds)
        )
        for info in self._remote_nodes().values():
            self._peer(info).send(delivery)

    def send_receipts_to(self, node_id: str, seconds: float) -> None:
        if node_id != self._node_id:
            self._receipt_peers[node_id] = time.monotonic() + max(0.0, min(seconds, 300.0))

    def forward_receipts(self, batch: ReceiptBatch) -> None:
        if not self._receipt_peers:
            return
        now = time.monotonic()
        for node_id in [n for n, until in self._receipt_peers.items() if until <= now]:
            del self._receipt_peers[node_id]
        nodes = self._remote_nodes()
        wanted = [nodes[n] for n in self._receipt_peers if n in nodes]
        if not wanted:
            return
        delivery = node_pb2.Delivery(
            receipts=node_pb2.ReceiptBatch(
                source=batch.source,
                prev=batch.prev,
                upto=batch.upto,
                events=[
                    node_pb2.LoggedReceipt(
                        n=e.n,
                        kind=_KINDS[e.kind],
                        message_id=e.message_id,
                        user_id=e.user_id,
                        seq=e.seq,
                        owner=e.owner,
                        recorded_at=e.at,
                    )
                    for e in batch.events
                ],
            )
        )
        for info in wanted:
            self._peer(info).send(delivery)
