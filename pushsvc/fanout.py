"""Topic fan-out: in order per topic, concurrent across topics, finished once started.

A publish to a topic with 10,000 subscribers is 10,000 socket writes. Done in
the caller's greenlet in one go, every other publish (and everything else on
the event loop) would wait for it; done in slices from the caller, two
publishes to one topic could interleave and reach a subscriber out of order,
and a caller whose deadline expired could leave a fan-out half done.

So each topic with work has one greenlet, started on demand and gone when its
queue is empty: it writes each publish to every subscriber in slices of
``SLICE``, yielding between slices so other topics and connections proceed.
Publishes to one topic go out in the order they were accepted; a fan-out runs
to its end whatever happens to the call that asked for it. Publishes that queued
up behind a fan-out go out together, up to ``COALESCE`` of them: one pass over
the subscribers, their frames joined into one write per connection (a
connection whose socket would block queues them one by one). Subscribers that
could not take the frame (closing, or a full queue) are counted in
``pushsvc_fanout_incomplete_total`` and logged once per fan-out.
"""

from __future__ import annotations

import logging
from collections import deque

import gevent
from gevent.event import AsyncResult

from pushsvc.hub import Hub
from pushsvc.metrics import Metrics

log = logging.getLogger("pushsvc.fanout")

SLICE = 500  # subscribers written before yielding to the event loop
COALESCE = 16  # queued publishes to one topic written in one pass, at most


class TopicFanout:
    def __init__(self, hub: Hub, metrics: Metrics) -> None:
        self._hub = hub
        self._metrics = metrics
        self._queues: dict[str, deque[tuple[bytes, AsyncResult]]] = {}

    def publish(self, topic: str, wire: bytes) -> AsyncResult:
        """Queue a frame for the topic's subscribers; the result is how many took it."""
        done = AsyncResult()
        queue = self._queues.get(topic)
        if queue is None:
            queue = self._queues[topic] = deque()
            gevent.spawn(self._drain, topic, queue)
        queue.append((wire, done))
        return done

    @property
    def pending(self) -> int:
        return sum(len(q) for q in self._queues.values())

    def _drain(self, topic: str, queue: deque[tuple[bytes, AsyncResult]]) -> None:
        try:
            while queue:
                batch = [queue[i] for i in range(min(len(queue), COALESCE))]
                written, refused = self._pass(topic, tuple(wire for wire, _ in batch))
                for _, done in batch:
                    queue.popleft()
                    done.set(written)
                if refused:
                    self._metrics.fanout_incomplete.inc(refused * len(batch))
                    log.info(
                        "fan-out incomplete",
                        extra={
                            "topic": topic,
                            "publishes": len(batch),
                            "written": written,
                            "refused": refused,
                        },
                    )
        finally:
            if self._queues.get(topic) is queue:
                del self._queues[topic]
            for _, left in queue:  # only if this greenlet was killed (shutdown)
                left.set(0)

    def _pass(self, topic: str, wires: tuple[bytes, ...]) -> tuple[int, int]:
        """Write ``wires`` in order to every subscriber; (took them all, did not)."""
        subscribers = self._hub.subscribers(topic)
        written = refused = 0
        joined = b"".join(wires) if len(wires) > 1 else b""
        for start in range(0, len(subscribers), SLICE):
            if start:
                gevent.sleep(0)  # let other topics and connections run between slices
            for conn in subscribers[start : start + SLICE]:
                if (
                    conn.deliver_online_many(wires, joined)
                    if joined
                    else conn.deliver_online(wires[0])
                ):
                    written += 1
                else:
                    refused += 1
        return written, refused
