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
to its end whatever happens to the call that asked for it.

Writes are what a fan-out costs (one ``send()`` each), so publishes share them,
up to ``COALESCE`` frames joined into one write per connection (a connection
whose socket would block queues them one by one):

- publishes queued behind a fan-out go out together in the next pass;
- publishes queued *during* a pass join it at the next slice, for the
  subscribers it has not reached yet; the pass after writes them to the
  others -- the subscribers at that time that this pass did not reach, so a
  subscriber gets each publish once, and in order.

Under a burst most subscribers thus get several frames per write instead of one
write per frame. Subscribers that could not take a frame (closing, or a full
queue) are counted in ``pushsvc_fanout_incomplete_total`` and logged once per
pass.
"""

from __future__ import annotations

import logging
from collections import deque

import gevent
from gevent.event import AsyncResult

from pushsvc.hub import Connection, Hub
from pushsvc.metrics import Metrics

log = logging.getLogger("pushsvc.fanout")

SLICE = 500  # subscribers written before yielding to the event loop
COALESCE = 16  # queued publishes to one topic written in one pass, at most


class _Publish:
    """A queued publish: its frame and what became of it so far."""

    __slots__ = ("done", "reached", "refused", "wire", "written")

    def __init__(self, wire: bytes) -> None:
        self.wire = wire
        self.done = AsyncResult()  # set to ``written`` once every subscriber was tried
        self.written = 0
        self.refused = 0
        # The connections it was written to by a pass it joined mid-way (shared by
        # the publishes that joined together); None until then.
        self.reached: frozenset[Connection] | None = None


class TopicFanout:
    def __init__(self, hub: Hub, metrics: Metrics) -> None:
        self._hub = hub
        self._metrics = metrics
        self._queues: dict[str, deque[_Publish]] = {}

    def publish(self, topic: str, wire: bytes) -> AsyncResult:
        """Queue a frame for the topic's subscribers; the result is how many took it."""
        item = _Publish(wire)
        queue = self._queues.get(topic)
        if queue is None:
            queue = self._queues[topic] = deque()
            gevent.spawn(self._drain, topic, queue)
        queue.append(item)
        return item.done

    @property
    def pending(self) -> int:
        return sum(len(q) for q in self._queues.values())

    def _drain(self, topic: str, queue: deque[_Publish]) -> None:
        try:
            while queue:
                finished = self._pass(topic, queue)
                incomplete = refused = 0
                for _ in range(finished):
                    item = queue.popleft()
                    item.done.set(item.written)
                    if item.refused:
                        self._metrics.fanout_incomplete.inc(item.refused)
                        incomplete += 1
                        refused += item.refused
                if incomplete:
                    log.info(
                        "fan-out incomplete",
                        extra={"topic": topic, "publishes": incomplete, "refused": refused},
                    )
        finally:
            if self._queues.get(topic) is queue:
                del self._queues[topic]
            for left in queue:  # only if this greenlet was killed (shutdown)
                left.done.set(left.written)

    def _pass(self, topic: str, queue: deque[_Publish]) -> int:
        """One pass over the subscribers for the publishes at the head of the queue
        that share a state (all new, or all joined at the same point of an earlier
        pass); publishes queued meanwhile join it at a slice boundary. Returns how
        many publishes at the head are finished (the joiners are not)."""
        head = queue[0]
        key = head.reached
        carried: list[_Publish] = []
        for item in queue:
            if item.reached is not key or len(carried) == COALESCE:
                break
            carried.append(item)
        subscribers = self._hub.subscribers(topic)
        if key is not None:  # the rest of a pass it joined: whom that pass did not reach
            subscribers = tuple(c for c in subscribers if c not in key)
        group = carried
        wires = tuple(p.wire for p in group)
        joined = b"".join(wires) if len(wires) > 1 else b""
        joiners: list[_Publish] = []
        joined_at = len(subscribers)
        for start in range(0, len(subscribers), SLICE):
            if start:
                gevent.sleep(0)  # let other topics and connections run between slices
                if not joiners and len(queue) > len(carried) and len(carried) < COALESCE:
                    # Queued while this pass ran: they join it here, for the rest.
                    for i in range(len(carried), min(len(queue), COALESCE)):
                        item = queue[i]
                        if item.reached is not None:
                            break
                        joiners.append(item)
                    if joiners:
                        joined_at = start
                        group = carried + joiners
                        wires = tuple(p.wire for p in group)
                        joined = b"".join(wires)
            written = refused = 0
            for conn in subscribers[start : start + SLICE]:
                if (
                    conn.deliver_online_many(wires, joined)
                    if joined
                    else conn.deliver_online(wires[0])
                ):
                    written += 1
                else:
                    refused += 1
            for item in group:
                item.written += written
                item.refused += refused
        if joiners:
            reached = frozenset(subscribers[joined_at:])
            for item in joiners:
                item.reached = reached
        return len(carried)
