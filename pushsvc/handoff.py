"""grpcio's native threads hand each call to the node's event loop.

The node's state -- connections, hub, store clients -- lives in the gevent loop of
the main thread and is touched only from there. grpcio answers each call on a
native thread of its own pool (``nativethreads``). ``Loop`` carries work across:

- ``post(fn, *args)`` from any thread queues a short callback for the loop;
- ``call(fn, *args)`` from a native thread runs ``fn`` in a new greenlet of the
  loop and blocks the calling thread until it returns (or re-raises what it
  raised there).

What was posted is run in one pass of the loop after one wake-up (an async
watcher, coalesced while pending): a burst of calls costs the loop one wake-up,
not one per call, and a call costs its thread one native lock.

``on_loop(handler, loop)`` wraps a gRPC method handler so that its behaviour runs
on the loop, whatever its streaming kind:

- a single request is passed as it is;
- streamed requests are read by a native thread of the call, and the behaviour
  takes them on the loop from an ``Inbound``, one by one or in bursts (``take``
  what has arrived, ``wait`` for more): a burst costs the loop one wake-up;
- streamed responses are produced by a greenlet iterating the behaviour's
  responses, and handed to grpcio's thread through an ``Outbound`` that holds
  at most ``WINDOW`` of them (the greenlet waits beyond that);
- when both stream, one burst is in flight at a time: ``take`` first waits until
  grpcio's thread has taken every response given so far. What arrives while a
  burst's answers are written is the next burst, so a call that keeps many
  requests ahead of its answers is served in bursts as large as they come
  (the loop wakes, and the work's code and data come into the cache, once per
  burst rather than per request), and one that waits for each answer is served
  as soon as it asks;
- the context's ``add_callback`` callbacks (run by grpcio's threads when the call
  ends) are posted to the loop.

A call whose answer does not depend on the loop need not wait for it: ``first``,
given to ``on_loop``, answers on grpcio's thread and posts what the loop must do
(``try_post``, refused while the loop is behind). A waiting thread costs a native
lock, a wake-up of the loop and one of the thread: about a quarter of a bare
unary call's server time (``bench/grpc_echo.py``, modes ``handoff`` and ``post``).

What ``try_post`` hands over is not waited for, so it need not wake the loop
each time: the first wakes it, and from then on the loop looks for such work
every ``TICK`` by itself (a timer) until a look finds none. Under a stream of
one-message calls the loop then wakes once a tick for all of them, not once a
call -- each wake-up takes the GIL back from grpcio's threads, and finds the
loop's code and data out of the cache -- and a delivery waits at most a tick
longer (4 ms: ``docs/architecture.md`` has the measurements). ``post``'s work
still wakes the loop at once.
"""

from __future__ import annotations

import functools
import logging
import sys
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar, cast

import gevent
import grpc
from gevent.event import Event

from pushsvc.nativethreads import SimpleQueue, allocate_lock, get_ident, start_new_thread
from pushsvc.rpc_handlers import behaviour_of, same_kind

log = logging.getLogger("pushsvc.grpc")

T = TypeVar("T")
WINDOW = 256  # responses of one stream waiting for grpcio's thread
TICK = 0.004  # while busy, the loop looks for ``try_post``'s work this often by itself
_NOBODY = sys.maxsize  # no greenlet waits for grpcio's thread to take responses


class Loop:
    """The event loop of the thread that made it, reachable from native threads."""

    def __init__(self, tick: float = TICK) -> None:
        self._thread = get_ident()
        self._queued: deque[tuple[Callable[..., Any], tuple[Any, ...]]] = deque()
        self._lazy: deque[tuple[Callable[..., Any], tuple[Any, ...]]] = deque()  # try_post's
        loop = gevent.get_hub().loop
        self._watcher = loop.async_()
        self._watcher.start(self._run)
        self._ticking = False  # the loop looks for try_post's work every ``tick`` itself
        self._tick = loop.timer(tick, tick)

    def post(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` on the loop soon (it must not block). Any thread."""
        self._queued.append((fn, args))  # deque appends are atomic across threads
        self._watcher.send()  # thread-safe; coalesced while a wake-up is pending

    def try_post(self, limit: int, fn: Callable[..., Any], *args: Any) -> bool:
        """Run ``fn(*args)`` on the loop within about a ``tick``, unless ``limit``
        callbacks already wait for the loop (it is behind: the caller should wait
        for its turn instead); whether it posted. Threads checking at once may each
        pass: ``limit`` is a bound give or take the number of threads.

        The first wakes the loop; while such work keeps coming, the loop runs it
        every ``tick`` without being woken for each (see the module's text)."""
        lazy = self._lazy
        if len(lazy) + len(self._queued) >= limit:
            return False
        lazy.append((fn, args))
        if not self._ticking:  # read after the append: see ``_on_tick``
            self._watcher.send()
        return True

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` run in a new greenlet of the loop; its result, or what it
        raised, in the calling native thread (which waits)."""
        if get_ident() == self._thread:  # already on the loop
            return fn(*args)
        job = _Call(fn, args)
        self.post(gevent.spawn_raw, job.run)
        return job.result()

    def _run(self) -> None:  # woken by post or try_post
        # try_post's work first: a caller's earlier call, answered at once, is
        # delivered before a later one of its that waits for the loop.
        if self._lazy:
            self._drain(self._lazy)
            if not self._ticking:
                self._ticking = True
                self._tick.start(self._on_tick)
        self._drain(self._queued)

    def _on_tick(self) -> None:
        if not self._lazy:
            self._ticking = False  # before the second look: a try_post after it wakes us
            if not self._lazy:
                self._tick.stop()
                return
            self._ticking = True
        self._drain(self._lazy)

    @staticmethod
    def _drain(queued: deque[tuple[Callable[..., Any], tuple[Any, ...]]]) -> None:
        while queued:
            fn, args = queued.popleft()
            try:
                fn(*args)
            except Exception:
                log.exception("a callback handed to the event loop failed")

    def close(self) -> None:
        self._tick.stop()
        self._tick.close()
        self._watcher.stop()
        self._watcher.close()


class _Call(Generic[T]):
    __slots__ = ("args", "done", "error", "fn", "value")

    def __init__(self, fn: Callable[..., T], args: tuple[Any, ...]) -> None:
        self.fn = fn
        self.args = args
        self.done = allocate_lock()
        self.done.acquire()
        self.value: T | None = None
        self.error: BaseException | None = None

    def run(self) -> None:  # a greenlet of the loop
        try:
            self.value = self.fn(*self.args)
        except BaseException as exc:  # re-raised in the waiting thread
            self.error = exc
        finally:
            self.done.release()

    def result(self) -> T:  # the waiting native thread
        self.done.acquire()
        error, self.error = self.error, None
        if error is not None:
            raise error
        return self.value  # type: ignore[return-value]


class _Ended:
    __slots__ = ("error",)

    def __init__(self, error: BaseException | None) -> None:
        self.error = error


class Arrivals(Generic[T]):
    """A call's streamed requests as they arrive, taken on the loop one by one
    (iteration) or in bursts: ``take`` what is there, ``wait`` for more. How they
    arrive is the subclass's (``Inbound``: a native reader; ``LoopReader``: a
    greenlet)."""

    def __init__(self) -> None:
        self._items: deque[T] = deque()
        self._arrived = Event()
        self._ended: _Ended | None = None  # set on the loop, after the last request

    def _end(self, ended: _Ended) -> None:  # on the loop
        self._ended = ended
        self._arrived.set()

    def __len__(self) -> int:
        """Requests arrived and not yet taken."""
        return len(self._items)

    def take(self, most: int) -> list[T]:
        """Up to ``most`` of the requests arrived, in order; never waits."""
        items = self._items
        return [items.popleft() for _ in range(min(most, len(items)))]

    def wait(self, timeout: float | None = None) -> None:
        """Until the next request arrives or the stream is over (or ``timeout``).
        (What arrives between a look at ``len`` and this call is not missed: it
        is told the loop, which does not run until this waits.)"""
        if self._ended is None:
            self._arrived.clear()
            self._arrived.wait(timeout)

    def over(self) -> bool:
        """Every request taken and the stream over; raises what broke it, if it broke."""
        if self._items or self._ended is None:
            return False
        if self._ended.error is not None:
            raise self._ended.error
        return True

    def close(self) -> None:
        """The behaviour is done with the requests (an ``Inbound``'s reader ends
        with the call)."""

    def __iter__(self) -> Arrivals[T]:
        return self

    def __next__(self) -> T:  # on the loop
        while not self._items:
            if self.over():
                raise StopIteration
            self.wait()
        return self._items.popleft()


class Inbound(Arrivals[T]):
    """A call's streamed requests, read off grpcio's iterator by a native thread
    of the call. The reader posts one wake-up of the loop for what arrives while
    the last has not run yet, not one per request; ``screen``, if given, sees each
    request first and raises to end the stream there (what it raised is what
    broke the stream). With ``answers``, the call's ``Outbound``: ``take`` waits
    until every answer given so far has been taken."""

    def __init__(
        self, loop: Loop, requests: Iterator[T], screen: Callable[[T], None] | None = None
    ) -> None:
        super().__init__()
        self._loop = loop
        self._requests = requests
        self._screen = screen
        self._posted = False  # a wake-up is posted and has not run yet
        self.answers: Outbound[Any] | None = None

    def take(self, most: int) -> list[T]:
        if self.answers is not None:
            self.answers.drain()
        return super().take(most)

    def start(self) -> Inbound[T]:
        start_new_thread(self._read, ())
        return self

    def _read(self) -> None:  # the native reader
        items, post, wake, screen = self._items, self._loop.post, self._wake, self._screen
        try:
            for request in self._requests:
                if screen is not None:
                    screen(request)
                items.append(request)
                if not self._posted:
                    self._posted = True
                    post(wake)
            ended = _Ended(None)
        except BaseException as exc:  # the stream broke: the behaviour sees why
            ended = _Ended(exc)
        self._requests = iter(())  # grpcio's iterator holds the call's state
        post(self._end, ended)  # after every request it read

    def _wake(self) -> None:  # on the loop
        # Cleared before the event is set: a request the reader appends after its
        # check of ``_posted`` either finds this wake-up still to come or posts one.
        self._posted = False
        self._arrived.set()


class LoopReader(Arrivals[T]):
    """Streamed requests from an iterator that yields on the loop (a greenlet
    reads it): what a behaviour called without ``on_loop`` takes its bursts from."""

    def __init__(self, requests: Iterator[T]) -> None:
        super().__init__()
        self._requests = requests
        self._greenlet = gevent.spawn(self._read)

    def _read(self) -> None:  # a greenlet of the loop
        try:
            for request in self._requests:
                self._items.append(request)
                self._arrived.set()
            ended = _Ended(None)
        except BaseException as exc:  # the stream broke: the behaviour sees why
            ended = _Ended(exc)
        self._end(ended)

    def close(self) -> None:
        self._greenlet.kill(block=False)  # it may be waiting for a request


def arrivals(requests: Iterator[T]) -> Arrivals[T]:
    """``requests`` as ``Arrivals``: themselves if they are (``on_loop`` gives an
    ``Inbound``), else read by a greenlet (``LoopReader``)."""
    return requests if isinstance(requests, Arrivals) else LoopReader(requests)


class Outbound(Generic[T]):
    """A call's streamed responses: produced on the loop by a greenlet iterating
    the behaviour's responses, taken by grpcio's native thread."""

    def __init__(self, loop: Loop, responses: Callable[[], Iterator[T]]) -> None:
        self._loop = loop
        self._responses = responses
        self._items: Any = SimpleQueue()
        self._given = 0  # by the greenlet
        self._taken = 0  # by the native thread
        self._wanted = _NOBODY  # how many taken the waiting greenlet waits for
        self._room = Event()
        self._greenlet: gevent.Greenlet | None = None

    def _start(self) -> None:  # on the loop
        self._greenlet = gevent.spawn(self._produce)

    def _produce(self) -> None:  # on the loop
        try:
            for item in self._responses():
                self._items.put(item)
                self._given += 1
                if self._given - self._taken >= WINDOW:
                    self._until_taken(self._given - WINDOW + 1)
            self._items.put(_Ended(None))
        except BaseException as exc:  # an abort, a failure, or stopped
            self._items.put(_Ended(exc))

    @property
    def waiting(self) -> bool:
        """Whether the producer waits for grpcio's thread to take responses."""
        return self._wanted != _NOBODY

    def drain(self) -> None:  # on the loop: the producing greenlet
        """Until grpcio's thread has taken every response given so far."""
        self._until_taken(self._given)

    def _until_taken(self, count: int) -> None:  # on the loop: the producing greenlet
        # The native thread posts a wake-up when its count reaches ``_wanted``: set
        # before the event is cleared and the count looked at again, so a take in
        # between is seen either here or by the native thread.
        while self._taken < count:
            self._wanted = count
            self._room.clear()
            if self._taken >= count:
                break
            self._room.wait()
        self._wanted = _NOBODY

    def _stop(self) -> None:  # on the loop
        if self._greenlet is not None:
            self._greenlet.kill(block=False)

    def __iter__(self) -> Iterator[T]:  # grpcio's native thread
        self._loop.post(self._start)
        try:
            while True:
                item = self._items.get()
                self._taken += 1
                if self._taken >= self._wanted:
                    self._loop.post(self._room.set)
                if isinstance(item, _Ended):
                    if item.error is not None:
                        raise item.error
                    return
                yield item
        finally:
            self._loop.post(self._stop)  # the caller went away: stop producing


class LoopContext:
    """A call's ``grpc.ServicerContext`` for a behaviour on the loop: callbacks
    grpcio runs when the call ends are posted to the loop."""

    __slots__ = ("_context", "_loop")

    def __init__(self, context: grpc.ServicerContext, loop: Loop) -> None:
        self._context = context
        self._loop = loop

    def add_callback(self, callback: Callable[[], None]) -> bool:
        loop = self._loop
        return bool(self._context.add_callback(lambda: loop.post(callback)))

    def invocation_metadata(self) -> Any:  # every call asks: not through __getattr__
        return self._context.invocation_metadata()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


Answer = Callable[[Any, grpc.ServicerContext], Any]
Screen = Callable[[Any, grpc.ServicerContext], None]


def on_loop(
    handler: grpc.RpcMethodHandler,
    loop: Loop,
    first: Answer | None = None,
    screen: Screen | None = None,
) -> grpc.RpcMethodHandler:
    """``handler`` with its behaviour run on ``loop`` (see the module's text).
    ``first`` (a single request's methods only): tried on grpcio's thread before
    the hand-off; a response it returns is the answer, None hands the call over.
    ``screen`` (streamed requests only): called with each request and the call's
    context as it is read, before the behaviour sees it; it raises (aborts the
    call) to refuse it."""
    behaviour = behaviour_of(handler)
    streams_in, streams_out = handler.request_streaming, handler.response_streaming
    if streams_in and first is not None:
        raise ValueError("first answers a single request")

    def bridged(request: Any, context: grpc.ServicerContext) -> Any:
        if first is not None:
            answer = first(request, context)
            if answer is not None:
                return answer
        if streams_in:
            check = None if screen is None else functools.partial(_screened, screen, context)
            request = Inbound(loop, request, check).start()
        ctx = cast(grpc.ServicerContext, LoopContext(context, loop))
        if streams_out:
            answers = Outbound(loop, lambda: behaviour(request, ctx))
            if streams_in:
                request.answers = answers  # one burst in flight (see the module's text)
            return iter(answers)
        return loop.call(behaviour, request, ctx)

    return same_kind(handler, bridged)


def _screened(screen: Screen, context: grpc.ServicerContext, request: Any) -> None:
    screen(request, context)
