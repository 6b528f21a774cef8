"""Group commit: concurrent ``store_messages`` calls share one durable write.

A caller queues its requests and waits. If no batch is in flight, a writer
greenlet starts and takes everything queued (up to ``max_requests``); callers
arriving while that batch is being written queue up and form the next batch.
So an idle store answers a lone push at once, and a busy one writes many
pushes per transaction (SQLite) or per round trip (MongoDB) without any timer.
Each caller returns when the batch holding its requests is durable.

The queue and the writer belong to the calling OS thread's event loop (gevent
objects cannot be shared between threads): greenlets of one loop coalesce;
a caller on another native thread gets its own queue and writer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import gevent
from gevent.event import Event
from gevent.monkey import get_original

from pushsvc.errors import PushError
from pushsvc.store.inbox import StoreRequest, StoreResult

Outcome = StoreResult | PushError

_thread_ident: Callable[[], int] = get_original("_thread", "get_ident")


@dataclass(eq=False, slots=True)
class Call:
    """One caller's requests, and what became of them."""

    requests: Sequence[StoreRequest]
    now: float
    outcomes: list[Outcome] | None = None
    error: BaseException | None = None
    done: Event = field(default_factory=Event)


@dataclass(eq=False, slots=True)
class _Queue:
    calls: list[Call] = field(default_factory=list)
    writer: gevent.Greenlet | None = None


class GroupCommit:
    """Coalesces concurrent callers into batches for ``write_batch``.

    ``write_batch(calls)`` sets ``outcomes`` on every call it is given (one per
    request, in order) or raises; an exception it raises is raised to every
    caller of that batch.
    """

    def __init__(self, write_batch: Callable[[list[Call]], None], max_requests: int = 1000):
        self._write_batch = write_batch
        self.max_requests = max_requests
        self._queues: dict[int, _Queue] = {}
        #: Batches written so far, and the requests they carried.
        self.batches = 0
        self.requests = 0

    def submit(self, requests: Sequence[StoreRequest], now: float) -> list[Outcome]:
        """Queue ``requests`` and wait until the batch holding them is written."""
        queue = self._queues.get(_thread_ident())
        if queue is None:
            queue = self._queues.setdefault(_thread_ident(), _Queue())
        call = Call(requests, now)
        queue.calls.append(call)
        if queue.writer is None:
            queue.writer = gevent.spawn(self._drain, queue)
        call.done.wait()
        if call.error is not None:
            raise call.error
        assert call.outcomes is not None
        return call.outcomes

    def _take(self, queue: _Queue) -> list[Call]:
        """The next batch: whole calls, at least one, up to ``max_requests``."""
        size = 0
        n = 0
        for call in queue.calls:
            if n and size + len(call.requests) > self.max_requests:
                break
            size += len(call.requests)
            n += 1
        batch, queue.calls[:n] = queue.calls[:n], []
        return batch

    def _drain(self, queue: _Queue) -> None:
        try:
            while queue.calls:
                batch = self._take(queue)
                try:
                    self._write_batch(batch)
                    self.batches += 1
                    self.requests += sum(len(c.requests) for c in batch)
                except Exception as exc:
                    for call in batch:
                        call.error = exc
                except BaseException as exc:  # killed: nobody may be left waiting
                    for call in batch + queue.calls:
                        call.error = exc
                        call.done.set()
                    queue.calls.clear()
                    raise
                finally:
                    for call in batch:
                        if call.outcomes is None and call.error is None:
                            call.error = RuntimeError("the batch did not decide this call")
                        call.done.set()
        finally:
            queue.writer = None
