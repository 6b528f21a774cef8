"""The fleet: presence in the shared store, and forwarding to the nodes that hold users.

Forwarding is batched per destination node: each peer has an outbox drained by
its own greenlet into ``NodeService.Deliver`` calls with a deadline, over one
channel kept per peer. A slow or stopped peer delays only its own outbox; a
failed forward leaves the message in the inbox (it is already stored) and is
counted in ``pushsvc_forward_total{result}``.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable

import gevent
import grpc
from gevent.event import Event
from gevent.lock import Semaphore
from gevent.pool import Pool

from pushsvc.errors import StoreUnavailable
from pushsvc.hub import Hub
from pushsvc.messages import Message
from pushsvc.metrics import Metrics
from pushsvc.store import NodeInfo, Store
from pushsvc.v1 import node_pb2, node_pb2_grpc

log = logging.getLogger("pushsvc.cluster")

BATCH = 500  # deliveries per Deliver call
OUTBOX_LIMIT = 100_000  # deliveries queued per peer before the oldest are dropped
NODES_CACHE = 1.0  # seconds a list of live nodes is reused


class Presence:
    """Writes which users this node holds. An arrival is written before the
    connection is replayed (so a push stored after it is routed here); departures
    are batched, and never undo a newer arrival."""

    def __init__(self, store: Store, hub: Hub, node_id: str, metrics: Metrics) -> None:
        self._store = store
        self._hub = hub
        self._node_id = node_id
        self._metrics = metrics
        self._lock = Semaphore()
        self._gone: set[str] = set()
        self._resync = False
        hub.presence_hooks.append(self._changed)

    def _changed(self, user_id: str, online: bool) -> None:
        if not online:
            self._gone.add(user_id)
            return
        with self._lock:
            self._gone.discard(user_id)
            try:
                self._store.set_presence(self._node_id, [user_id], [])
            except StoreUnavailable as exc:
                self._metrics.store_errors.inc()
                self._resync = True
                log.warning("presence not written for a connection: %s", exc)

    def flush(self) -> None:
        with self._lock:
            if self._resync:
                # After a store outage (or at start) the whole local picture is rewritten.
                users = self._hub.users()
                self._store.set_presence(self._node_id, users, [])
                self._resync = False
            gone = [u for u in self._gone if self._hub.connections_of(u) == 0]
            self._gone.clear()
            if gone:
                try:
                    self._store.set_presence(self._node_id, [], gone)
                except StoreUnavailable:
                    self._gone.update(gone)
                    raise

    def mark_resync(self) -> None:
        self._resync = True


class Peer:
    """One destination node: a channel and an outbox drained by one greenlet."""

    def __init__(
        self,
        info: NodeInfo,
        cluster_key: str,
        timeout: float,
        metrics: Metrics,
    ) -> None:
        self.info = info
        self._metadata = (("authorization", f"Bearer {cluster_key}"),)
        self._timeout = timeout
        self._metrics = metrics
        self._channel = grpc.insecure_channel(info.grpc_addr)
        self._stub = node_pb2_grpc.NodeServiceStub(self._channel)
        self._outbox: deque[node_pb2.Delivery] = deque()
        self._wakeup = Event()
        self._greenlet = gevent.spawn(self._run)
        self.last_used = time.monotonic()

    def send(self, delivery: node_pb2.Delivery) -> None:
        if len(self._outbox) >= OUTBOX_LIMIT:
            self._outbox.popleft()
            self._metrics.forwards.labels("dropped").inc()
        self._outbox.append(delivery)
        self._wakeup.set()
        self.last_used = time.monotonic()

    def call(self, deliveries: list[node_pb2.Delivery]) -> node_pb2.DeliverResponse | None:
        """One Deliver call with the deadline; None when it failed."""
        request = node_pb2.DeliverRequest(node_id=self.info.node_id, deliveries=deliveries)
        try:
            response = self._stub.Deliver(request, timeout=self._timeout, metadata=self._metadata)
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
                batch = [self._outbox.popleft() for _ in range(min(BATCH, len(self._outbox)))]
                self.call(batch)

    def close(self) -> None:
        self._greenlet.kill(block=False)
        self._channel.close()


class Fleet:
    """Routing across nodes, for the dispatcher (implements ``dispatcher.Fleet``)."""

    def __init__(
        self,
        store: Store,
        hub: Hub,
        node_id: str,
        cluster_key: str,
        forward_timeout: float,
        metrics: Metrics,
    ) -> None:
        self._store = store
        self._hub = hub
        self._node_id = node_id
        self._key = cluster_key
        self._timeout = forward_timeout
        self._metrics = metrics
        self._peers: dict[str, Peer] = {}
        self._nodes: list[NodeInfo] = []
        self._nodes_at = 0.0
        self.presence_writer = Presence(store, hub, node_id, metrics)
        self._pool = Pool(64)

    # -- peers ---------------------------------------------------------------------------

    def nodes(self) -> list[NodeInfo]:
        now = time.monotonic()
        if now - self._nodes_at > NODES_CACHE:
            self._nodes = self._store.live_nodes(time.time())
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
            peer = self._peers[info.node_id] = Peer(info, self._key, self._timeout, self._metrics)
        return peer

    def _remote_nodes(self) -> list[NodeInfo]:
        return [n for n in self.nodes() if n.node_id != self._node_id]

    # -- forwarding --------------------------------------------------------------------------

    def forward_users(
        self, message: Message, recipients: list[tuple[str, int]], exclude_local: bool
    ) -> None:
        """Queue the message for every other node holding a recipient (returns at once)."""
        gevent.spawn(self._route_users, message, recipients)

    def _route_users(self, message: Message, recipients: list[tuple[str, int]]) -> None:
        try:
            where = self._store.presence([u for u, _ in recipients], time.time())
            nodes = {n.node_id: n for n in self._remote_nodes()}
        except StoreUnavailable as exc:
            self._metrics.forwards.labels("error").inc()
            log.warning("no routing (store unreachable): %s", exc)
            return
        per_node: dict[str, list[node_pb2.Recipient]] = {}
        for user_id, seq in recipients:
            for node_id in where.get(user_id, ()):
                if node_id in nodes:
                    per_node.setdefault(node_id, []).append(
                        node_pb2.Recipient(user_id=user_id, seq=seq)
                    )
        for node_id, recips in per_node.items():
            self._peer(nodes[node_id]).send(
                node_pb2.Delivery(
                    user=node_pb2.UserDelivery(
                        message_id=message.id,
                        payload=message.payload,
                        content_type=message.content_type,
                        recipients=recips,
                    )
                )
            )

    def forward_topic(self, message: Message, topic: str) -> None:
        gevent.spawn(self._route_topic, message, topic)

    def _route_topic(self, message: Message, topic: str) -> None:
        try:
            nodes = self._remote_nodes()
        except StoreUnavailable as exc:
            self._metrics.forwards.labels("error").inc()
            log.warning("publish not forwarded (store unreachable): %s", exc)
            return
        delivery = node_pb2.Delivery(
            topic=node_pb2.TopicDelivery(
                message_id=message.id,
                topic=topic,
                payload=message.payload,
                content_type=message.content_type,
            )
        )
        for info in nodes:
            self._peer(info).send(delivery)

    def forward_disconnect(self, user_id: str, reason: str) -> int:
        """Ask every other live node to close the user's connections; wait (bounded)."""
        try:
            nodes = self._remote_nodes()
        except StoreUnavailable:
            return 0
        delivery = node_pb2.Delivery(
            disconnect=node_pb2.UserDisconnect(user_id=user_id, reason=reason)
        )
        calls: list[Callable[[], node_pb2.DeliverResponse | None]] = [
            (lambda p=self._peer(n): p.call([delivery])) for n in nodes
        ]
        results = self._pool.map(lambda f: f(), calls)
        return sum(r.connections[0] for r in results if r is not None and r.connections)

    # -- queries ---------------------------------------------------------------------------------

    def presence(self, user_ids: tuple[str, ...]) -> dict[str, tuple[int, tuple[str, ...]]]:
        where = self._store.presence(list(user_ids), time.time())
        counts = {n.node_id: n for n in self.nodes()}
        out: dict[str, tuple[int, tuple[str, ...]]] = {}
        for user_id in user_ids:
            node_ids = set(where.get(user_id, ()))
            local = self._hub.connections_of(user_id)
            if local:
                node_ids.add(self._node_id)
            else:
                node_ids.discard(self._node_id)
            node_ids &= set(counts) | {self._node_id}
            remote = len(node_ids - {self._node_id})  # at least one connection per node
            out[user_id] = (local + remote, tuple(sorted(node_ids)))
        return out

    def close(self) -> None:
        for peer in self._peers.values():
            peer.close()
        self._peers.clear()
