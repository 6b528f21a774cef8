"""Prometheus metrics of one node (DESIGN §6): the numbers an autoscaler scales on."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.connections = Gauge(
            "pushsvc_connections", "Open WebSocket connections on this node", registry=r
        )
        self.users = Gauge("pushsvc_users", "Distinct users connected to this node", registry=r)
        self.messages_pushed = Counter(
            "pushsvc_messages_pushed_total",
            "Messages accepted by Push/PushStream (one per request, not per recipient)",
            registry=r,
        )
        self.messages_published = Counter(
            "pushsvc_messages_published_total", "Topic messages accepted by Publish", registry=r
        )
        self.frames_sent = Counter(
            "pushsvc_frames_sent_total",
            "Message frames written to WebSocket connections",
            registry=r,
        )
        self.acks = Counter("pushsvc_acks_total", "Ack frames accepted from clients", registry=r)
        self.push_duration = Histogram(
            "pushsvc_push_duration_seconds",
            "Time to validate, store and dispatch one push",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=r,
        )
        self.forwards = Counter(
            "pushsvc_forward_total",
            "Node-to-node Deliver batches by result",
            ["result"],
            registry=r,
        )
        self.store_errors = Counter(
            "pushsvc_store_errors_total", "Store operations that failed", registry=r
        )
        self.closed = Counter(
            "pushsvc_connections_closed_total",
            "Connections closed by the server, by close code",
            ["code"],
            registry=r,
        )
        self.rejected = Counter(
            "pushsvc_handshakes_rejected_total",
            "WebSocket handshakes refused before the upgrade, by HTTP status",
            ["status"],
            registry=r,
        )
