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
    """Writes how many connections of each user this node holds.

    A user's first arrival is written at once, before the connection is
    replayed, so a push stored after it is routed here. Other changes are
    batched; a batch writes the current counts, so it never undoes a newer change.
    """

    def __init__(self, store: Store, hub: Hub, node_id: str, metrics: Metrics) -> None:
        self._store = store
        self._hub = hub
        self._node_id = node_id
        self._metrics = metrics
        self._lock = Semaphore()
        self._dirty: set[str] = set()
        self._resync = False
        self._wakeup = Event()
        hub.presence_hooks.append(self._changed)

    def _changed(self, user_id: str, connections: int) -> None:
        if connections != 1 or self._hub.connections_of(user_id):
            self._dirty.add(user_id)
            self._wakeup.set()
            return
        with self._lock:  # first arrival of the user on this node
            self._dirty.discard(user_id)
            try:
                self._store.set_presence(self._node_id, {user_id: 1})
            except StoreUnavailable as exc:
                self._metrics.store_errors.inc()
                self._resync = True
                log.warning("presence not written for a connection: %s", exc)

    def flush(self) -> None:
        """Write pending changes (everything after an outage). Raises StoreUnavailable."""
        with self._lock:
            if self._resync:
                users = set(self._hub.users()) | self._dirty
                self._dirty.clear()
                self._write(users)
                self._resync = False
                return
            if self._dirty:
                users, self._dirty = self._dirty, set()
                self._write(users)

    def _write(self, users: set[str]) -> None:
        counts = {u: self._hub.connections_of(u) for u in users}
        try:
            self._store.set_presence(self._node_id, counts)
        except StoreUnavailable:
            self._dirty |= users
            raise

    def run(self, interval: float) -> None:
        """Flush changes as they come, at most every ``interval`` seconds."""
        while True:
            self._wakeup.wait()
            self._wakeup.clear()
            try:
                self.flush()
            except StoreUnavailable as exc:
                self._metrics.store_errors.inc()
                log.warning("presence not written: %s", exc)
            gevent.sleep(interval)  # batching window, not synchronisation

    def mark_resync(self) -> None:
        self._resync = True
        self._wakeup.set()


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
        # (delivery, set when the Deliver call carrying it has finished)
        self._outbox: deque[tuple[node_pb2.Delivery, Event | None]] = deque()
        self._wakeup = Event()
        self._greenlet = gevent.spawn(self._run)
        self.last_used = time.monotonic()

    def send(self, delivery: node_pb2.Delivery, done: Event | None = None) -> None:
        if len(self._outbox) >= OUTBOX_LIMIT:
            _, dropped = self._outbox.popleft()
            if dropped is not None:
                dropped.set()
            self._metrics.forwards.labels("dropped").inc()
        self._outbox.append((delivery, done))
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
                try:
                    self.call([delivery for delivery, _ in batch])
                finally:
                    for _, done in batch:
                        if done is not None:
                            done.set()

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

    def forward_users(self, message: Message, recipients: list[tuple[str, int]]) -> None:
        """Hand the message to every other node holding a recipient; wait (bounded).

        Waiting means a push that answered OK has already reached the nodes of
        its online recipients, even if this node dies the next moment. A peer
        that does not answer costs at most the forward deadline.
        """
        waits = self._route_users(message, recipients)
        if waits:
            deadline = time.monotonic() + self._timeout + 0.5
            for done in waits:
                done.wait(max(0.0, deadline - time.monotonic()))

    def _route_users(self, message: Message, recipients: list[tuple[str, int]]) -> list[Event]:
        try:
            where = self._store.presence([u for u, _ in recipients], time.time())
            nodes = {n.node_id: n for n in self._remote_nodes()}
            named = {node_id for per_node in where.values() for node_id in per_node}
            if not named <= nodes.keys() | {self._node_id}:
                self._nodes_at = 0.0  # a node newer than the cached list holds a recipient
                nodes = {n.node_id: n for n in self._remote_nodes()}
        except StoreUnavailable as exc:
            self._metrics.forwards.labels("error").inc()
            log.warning("no routing (store unreachable): %s", exc)
            return []
        per_node: dict[str, list[node_pb2.Recipient]] = {}
        for user_id, seq in recipients:
            for node_id in where.get(user_id, {}):
                if node_id in nodes:
                    per_node.setdefault(node_id, []).append(
                        node_pb2.Recipient(user_id=user_id, seq=seq)
                    )
        waits = []
        for node_id, recips in per_node.items():
            done = Event()
            self._peer(nodes[node_id]).send(
                node_pb2.Delivery(
                    user=node_pb2.UserDelivery(
                        message_id=message.id,
                        payload=message.payload,
                        content_type=message.content_type,
                        recipients=recips,
                    )
                ),
                done,
            )
            waits.append(done)
        return waits

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
        peers = [self._peer(n) for n in nodes]

        def call(peer: Peer) -> int:
            response = peer.call([delivery])
            return response.connections[0] if response is not None and response.connections else 0

        return sum(self._pool.map(call, peers))

    # -- queries ---------------------------------------------------------------------------------

    def presence(self, user_ids: tuple[str, ...]) -> dict[str, tuple[int, tuple[str, ...]]]:
        where = self._store.presence(list(user_ids), time.time())
        out: dict[str, tuple[int, tuple[str, ...]]] = {}
        for user_id in user_ids:
            per_node = dict(where.get(user_id, {}))
            local = self._hub.connections_of(user_id)  # fresher than the store
            if local:
                per_node[self._node_id] = local
            else:
                per_node.pop(self._node_id, None)
            out[user_id] = (sum(per_node.values()), tuple(sorted(per_node)))
        return out

    def close(self) -> None:
        for peer in self._peers.values():
            peer.close()
        self._peers.clear()
