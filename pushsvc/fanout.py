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
to its end whatever happens to the call that asked for it. Subscribers that
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
                wire, done = queue[0]
                written, refused = self._one(topic, wire)
                queue.popleft()
                done.set(written)
                if refused:
                    self._metrics.fanout_incomplete.inc(refused)
                    log.info(
                        "fan-out incomplete",
                        extra={"topic": topic, "written": written, "refused": refused},
                    )
        finally:
            if self._queues.get(topic) is queue:
                del self._queues[topic]
            for _, left in queue:  # only if this greenlet was killed (shutdown)
                left.set(0)

    def _one(self, topic: str, wire: bytes) -> tuple[int, int]:
        subscribers = self._hub.subscribers(topic)
        written = refused = 0
        for start in range(0, len(subscribers), SLICE):
            if start:
                gevent.sleep(0)  # let other topics and connections run between slices
            for conn in subscribers[start : start + SLICE]:
                if conn.deliver_online(wire):
                    written += 1
                else:
                    refused += 1
        return written, refused
