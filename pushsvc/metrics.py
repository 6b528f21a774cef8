"""Prometheus metrics of one node (DESIGN §6): the numbers an autoscaler scales on.

Counters on the hot path (a frame written, an ack) are plain integers in
``Counters`` -- a Prometheus ``Counter.inc()`` takes a lock, which a fan-out of
100,000 frames a second would pay per frame -- and are read at scrape time.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

PUSH_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Counters:
    """Hot-path counts, exported by ``Metrics`` when scraped."""

    __slots__ = (
        "acks",
        "closed",
        "frames_sent",
        "messages_published",
        "messages_pushed",
        "other_frames_sent",
        "push_buckets",
        "push_count",
        "push_sum",
    )

    def __init__(self) -> None:
        self.frames_sent = 0  # message frames (user and topic messages)
        self.other_frames_sent = 0  # welcome, pong, subscribed, error frames
        self.acks = 0
        self.messages_pushed = 0
        self.messages_published = 0
        self.closed: dict[int, int] = {}  # close code -> connections closed by the server
        # pushsvc_push_duration_seconds, as a histogram: counts per bucket (not cumulative)
        self.push_buckets = [0] * (len(PUSH_BUCKETS) + 1)
        self.push_count = 0
        self.push_sum = 0.0

    def observe_push(self, seconds: float, n: int = 1) -> None:
        """One call's time to validate, store and dispatch its ``n`` messages."""
        self.messages_pushed += n
        self.push_count += 1
        self.push_sum += seconds
        self.push_buckets[bisect_left(PUSH_BUCKETS, seconds)] += 1  # first bound >= seconds


Read = tuple[str, Callable[[], float]]  # (help text, read the value at scrape time)


class _HotCollector(Collector):
    def __init__(
        self, counters: Counters, gauges: dict[str, Read], totals: dict[str, Read]
    ) -> None:
        self._c = counters
        self._gauges = gauges
        self._totals = totals

    def collect(
        self,
    ) -> Iterator[CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily]:
        c = self._c
        yield CounterMetricFamily(
            "pushsvc_frames_sent",
            "Message frames (user and topic messages) written to WebSocket connections",
            value=c.frames_sent,
        )
        yield CounterMetricFamily(
            "pushsvc_other_frames_sent",
            "Other frames written to WebSocket connections (welcome, pong, subscribed, error)",
            value=c.other_frames_sent,
        )
        yield CounterMetricFamily("pushsvc_acks", "Ack frames accepted from clients", value=c.acks)
        closed = CounterMetricFamily(
            "pushsvc_connections_closed",
            "Connections closed by the server, by close code",
            labels=["code"],
        )
        for code, n in sorted(c.closed.items()):
            closed.add_metric([str(code)], n)
        yield closed
        yield CounterMetricFamily(
            "pushsvc_messages_pushed",
            "Messages accepted by Push/PushStream/PushBatch (one per message, not per recipient)",
            value=c.messages_pushed,
        )
        yield CounterMetricFamily(
            "pushsvc_messages_published",
            "Topic messages accepted by Publish",
            value=c.messages_published,
        )
        cumulative, buckets = 0, []
        for bound, n in zip((*PUSH_BUCKETS, float("inf")), c.push_buckets, strict=True):
            cumulative += n
            buckets.append((floatToGoString(bound), cumulative))
        yield HistogramMetricFamily(
            "pushsvc_push_duration_seconds",
            "Time to validate, store and dispatch one push call",
            buckets=buckets,
            sum_value=c.push_sum,
        )
        for name, (doc, read) in self._gauges.items():
            yield GaugeMetricFamily(name, doc, value=read())
        for name, (doc, read) in self._totals.items():
            yield CounterMetricFamily(name, doc, value=read())


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.counters = Counters()
        self._gauges: dict[str, Read] = {}
        self._totals: dict[str, Read] = {}
        r = self.registry
        r.register(_HotCollector(self.counters, self._gauges, self._totals))
        self.forwards = Counter(
            "pushsvc_forward_total",
            "Node-to-node Deliver batches by result",
            ["result"],
            registry=r,
        )
        self.store_errors = Counter(
            "pushsvc_store_errors_total", "Store operations that failed", registry=r
        )
        self.rejected = Counter(
            "pushsvc_handshakes_rejected_total",
            "WebSocket handshakes refused before the upgrade, by HTTP status",
            ["status"],
            registry=r,
        )
        self.connects_shed = Counter(
            "pushsvc_connects_shed_total",
            "Connections closed with 1013 before their welcome, by why",
            ["why"],
            registry=r,
        )
        self.fanout_incomplete = Counter(
            "pushsvc_fanout_incomplete_total",
            "Frames of a fan-out not written: the connection was closing or overflowed",
            registry=r,
        )
        self.presence_cache_served = Counter(
            "pushsvc_presence_cache_served_total",
            "Presence lookups answered from the cache because the store was unavailable",
            registry=r,
        )
        self.presence_cache_age = Gauge(
            "pushsvc_presence_cache_age_seconds",
            "Age of the oldest presence answer last served from the cache during an outage",
            registry=r,
        )

    def gauge(self, name: str, doc: str, read: Callable[[], float]) -> None:
        """A gauge read at scrape time (connections, users, queue lengths...)."""
        self._gauges[name] = (doc, read)

    def total(self, name: str, doc: str, read: Callable[[], float]) -> None:
        """A counter kept elsewhere, read at scrape time (``name`` without ``_total``)."""
        self._totals[name] = (doc, read)
