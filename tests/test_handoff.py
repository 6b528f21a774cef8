"""The hand-off between grpcio's native threads and the event loop (``handoff``,
``nativethreads``): calls run as greenlets of the loop and answer the waiting
thread, streams keep their order and their window, and a caller that goes away
stops the producer."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Generator, Iterator
from typing import Any

import gevent
import grpc
import pytest
from gevent.event import Event

from pushsvc import handoff
from pushsvc.handoff import Inbound, Loop, LoopReader, Outbound, arrivals
from pushsvc.nativethreads import (
    SimpleQueue,
    ThreadPool,
    allocate_lock,
    get_ident,
    start_new_thread,
)

DEADLINE = 60.0  # generous: an event that never comes fails the test, a slow one does not


class Done:
    """Set on the loop when a native thread's work has finished."""

    def __init__(self) -> None:
        self.event = Event()
        self.value: Any = None
        self.error: BaseException | None = None


def in_thread(loop: Loop, fn: Callable[[], Any]) -> Done:
    """Run ``fn`` on a new native thread; ``Done`` says how it ended."""
    done = Done()

    def run() -> None:
        try:
            done.value = fn()
        except BaseException as exc:
            done.error = exc
        loop.post(done.event.set)

    start_new_thread(run, ())
    return done


def finished(done: Done) -> Any:
    assert done.event.wait(DEADLINE), "the native thread did not finish"
    if done.error is not None:
        raise done.error
    return done.value


def wait_until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + DEADLINE
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        gevent.sleep(0.01)


@pytest.fixture
def loop() -> Iterator[Loop]:
    made = Loop()
    yield made
    made.close()


def test_a_call_runs_in_a_greenlet_of_the_loop_and_answers_the_thread(loop: Loop) -> None:
    main = get_ident()
    seen: list[tuple[int, bool]] = []

    def work(x: int) -> int:
        seen.append((get_ident(), gevent.getcurrent() is not gevent.get_hub()))
        gevent.sleep(0)  # it may switch: it is a greenlet
        return x * 2

    assert finished(in_thread(loop, lambda: loop.call(work, 21))) == 42
    assert seen == [(main, True)]
    assert loop.call(work, 1) == 2  # on the loop already: called in place


def test_what_the_call_raised_is_raised_in_the_thread(loop: Loop) -> None:
    def fail() -> None:
        raise ValueError("refused on the loop")

    with pytest.raises(ValueError, match="refused on the loop"):
        finished(in_thread(loop, lambda: loop.call(fail)))


def test_calls_run_concurrently_on_the_loop(loop: Loop) -> None:
    """The first call waits for what the second one does: each call is its own
    greenlet, so they are not served one after the other."""
    go = Event()

    def first() -> str:
        assert go.wait(DEADLINE)
        return "first"

    def second() -> str:
        go.set()
        return "second"

    one = in_thread(loop, lambda: loop.call(first))
    two = in_thread(loop, lambda: loop.call(second))
    assert (finished(one), finished(two)) == ("first", "second")


def test_a_burst_of_calls_all_answered(loop: Loop) -> None:
    count = 200

    def echo(i: int) -> Callable[[], int]:
        return lambda: loop.call(lambda: i)

    threads = [in_thread(loop, echo(i)) for i in range(count)]
    assert [finished(t) for t in threads] == list(range(count))


def test_inbound_iterates_the_requests_in_order_then_ends(loop: Loop) -> None:
    inbound = Inbound(loop, iter(range(1000))).start()
    assert list(inbound) == list(range(1000))
    assert list(inbound) == []  # ended stays ended


def test_inbound_raises_what_broke_the_stream(loop: Loop) -> None:
    def broken() -> Iterator[int]:
        yield 1
        raise ConnectionError("the caller went away")

    inbound = Inbound(loop, broken()).start()
    assert next(inbound) == 1
    with pytest.raises(ConnectionError):
        next(inbound)
    with pytest.raises(ConnectionError):  # and again: the stream stays broken
        next(inbound)


def test_inbound_wakes_the_loop_once_for_what_arrived_while_it_was_busy(loop: Loop) -> None:
    """A burst read while the loop is busy costs one wake-up (and one for the end),
    and is taken in one piece."""
    count = 500
    read = allocate_lock()
    read.acquire()

    def requests() -> Iterator[int]:
        yield from range(count)
        read.release()  # the reader has every request: the loop may go on

    posted: list[Callable[..., Any]] = []
    post = loop.post

    def counting(fn: Callable[..., Any], *args: Any) -> None:
        posted.append(fn)
        post(fn, *args)

    loop.post = counting  # type: ignore[method-assign]
    inbound = Inbound(loop, requests()).start()
    assert read.acquire(timeout=DEADLINE)  # a native lock: the loop runs nothing meanwhile
    inbound.wait()
    assert len(inbound) == count
    assert inbound.take(10) == list(range(10))
    assert len(inbound) == count - 10
    assert inbound.take(count) == list(range(10, count))
    assert inbound.take(count) == []
    while not inbound.over():
        inbound.wait()
    assert len(posted) == 2, posted  # the burst's wake-up and the end


def test_inbound_requests_arriving_one_by_one_each_reach_the_loop(loop: Loop) -> None:
    """A request that arrives after the loop took the last one wakes it again."""
    gate = allocate_lock()
    gate.acquire()

    def requests() -> Iterator[int]:
        for i in range(5):
            yield i
            assert gate.acquire(timeout=DEADLINE)  # the next once the loop took this one

    inbound = Inbound(loop, requests()).start()
    taken: list[int] = []
    while not inbound.over():
        if not len(inbound):
            inbound.wait()
            continue
        taken += inbound.take(100)
        gate.release()
    assert taken == list(range(5))


def test_a_screen_ends_the_stream_at_the_request_it_refuses(loop: Loop) -> None:
    """What the screen raised breaks the stream after the requests before it;
    nothing after it is read."""
    read: list[int] = []

    def requests() -> Iterator[int]:
        for i in range(10):
            read.append(i)
            yield i

    def screen(request: int) -> None:
        if request == 3:
            raise ValueError("request 3 is not a valid message")

    inbound = Inbound(loop, requests(), screen).start()
    assert [next(inbound) for _ in range(3)] == [0, 1, 2]
    with pytest.raises(ValueError, match="request 3"):
        next(inbound)
    assert read == [0, 1, 2, 3]


def test_a_stream_takes_its_next_burst_once_its_answers_are_taken(loop: Loop) -> None:
    """One burst in flight: what arrives while grpcio's thread still has answers to
    take waits, and is taken in one piece when they are all taken."""
    feed: Any = SimpleQueue()

    def requests() -> Iterator[int]:
        while (request := feed.get()) is not None:
            yield request

    inbound = Inbound(loop, requests()).start()
    bursts: list[list[int]] = []

    def behaviour() -> Iterator[int]:
        while not inbound.over():
            if not len(inbound):
                inbound.wait()
                continue
            burst = inbound.take(1000)
            bursts.append(burst)
            yield from burst

    outbound = Outbound(loop, behaviour)
    inbound.answers = outbound
    for i in range(3):
        feed.put(i)
    wait_until(lambda: len(inbound) == 3)
    writing = allocate_lock()
    writing.acquire()
    got: list[int] = []

    def answer() -> None:  # grpcio's thread: writes one answer, then is held
        it = iter(outbound)
        got.append(next(it))
        assert writing.acquire(timeout=DEADLINE)
        got.extend(it)

    done = in_thread(loop, answer)
    wait_until(lambda: got == [0] and bursts == [[0, 1, 2]])
    for i in range(3, 7):
        feed.put(i)
    wait_until(lambda: len(inbound) == 4 and outbound.waiting)
    for _ in range(50):  # the loop goes on; the behaviour waits for its answers
        gevent.sleep(0)
    assert bursts == [[0, 1, 2]] and len(inbound) == 4
    writing.release()
    wait_until(lambda: len(bursts) == 2)
    feed.put(None)
    finished(done)
    assert bursts == [[0, 1, 2], [3, 4, 5, 6]]
    assert got == list(range(7))


def test_a_timed_wait_for_requests_ends_without_one(loop: Loop) -> None:
    never = Event()

    def requests() -> Iterator[int]:
        yield 1
        never.wait()  # the caller sends nothing more
        yield 2

    reader = LoopReader(requests())
    reader.wait()
    assert reader.take(10) == [1]
    reader.wait(0.05)  # a bounded wait: nothing came
    assert len(reader) == 0 and not reader.over()
    never.set()
    reader.wait()
    assert reader.take(10) == [2]
    while not reader.over():
        reader.wait()
    reader.close()


def test_arrivals_reads_a_plain_iterator_on_the_loop(loop: Loop) -> None:
    def requests() -> Iterator[int]:
        for i in range(50):
            if i % 10 == 0:
                gevent.sleep(0)
            yield i

    inbound = Inbound(loop, iter([1])).start()
    assert arrivals(inbound) is inbound  # on_loop's requests are taken as they are
    reader = arrivals(requests())
    assert isinstance(reader, LoopReader)
    assert list(reader) == list(range(50))


def test_a_broken_stream_raises_once_its_requests_are_taken(loop: Loop) -> None:
    def broken() -> Iterator[int]:
        yield 1
        yield 2
        raise ConnectionError("the caller went away")

    for made in (Inbound(loop, broken()).start(), LoopReader(broken())):
        while len(made) < 2:
            made.wait()
        assert not made.over()  # requests still to take: not over, broken or not
        assert made.take(5) == [1, 2]
        with pytest.raises(ConnectionError):
            while not made.over():
                made.wait()
        with pytest.raises(ConnectionError):  # and again: it stays broken
            made.over()


def test_outbound_hands_every_response_in_order(loop: Loop) -> None:
    def responses() -> Iterator[int]:
        for i in range(3 * handoff.WINDOW):
            if i % 100 == 0:
                gevent.sleep(0)
            yield i

    got = finished(in_thread(loop, lambda: list(Outbound(loop, responses))))
    assert got == list(range(3 * handoff.WINDOW))


def test_outbound_raises_what_the_behaviour_raised(loop: Loop) -> None:
    def responses() -> Iterator[int]:
        yield 1
        raise LookupError("no such receipt")

    got: list[int] = []

    def take() -> None:
        for item in Outbound(loop, responses):
            got.append(item)

    with pytest.raises(LookupError):
        finished(in_thread(loop, take))
    assert got == [1]


def test_outbound_producer_waits_beyond_the_window(loop: Loop) -> None:
    """A caller that takes nothing more holds the producer at the window; when it
    takes again, the producer goes on to the end."""
    produced = [0]
    total = 4 * handoff.WINDOW

    def responses() -> Iterator[int]:
        for i in range(total):
            produced[0] += 1
            yield i

    outbound = Outbound(loop, responses)
    taking = allocate_lock()
    taking.acquire()
    got: list[int] = []

    def take() -> None:
        it = iter(outbound)
        got.append(next(it))
        taking.acquire()  # hold on until the test lets go (a native wait)
        got.extend(it)

    done = in_thread(loop, take)
    # Once the caller took one, the producer stops one past the window, whichever
    # of the two got there first.
    wait_until(lambda: len(got) == 1 and outbound.waiting and produced[0] == handoff.WINDOW + 1)
    for _ in range(50):  # the loop goes on; the producer stays where it is
        gevent.sleep(0)
    assert produced[0] == handoff.WINDOW + 1 and outbound.waiting
    taking.release()
    finished(done)
    assert got == list(range(total))


def test_a_caller_that_goes_away_stops_the_producer(loop: Loop) -> None:
    stopped = Event()

    def responses() -> Iterator[int]:
        try:
            i = 0
            while True:
                yield i
                i += 1
                gevent.sleep(0)
        finally:
            stopped.set()

    def take_three() -> list[int]:
        it = iter(Outbound(loop, responses))
        assert isinstance(it, Generator)
        got = [next(it), next(it), next(it)]
        it.close()  # what grpcio does when the call ends
        return got

    assert finished(in_thread(loop, take_three)) == [0, 1, 2]
    assert stopped.wait(DEADLINE)


def test_context_callbacks_run_on_the_loop(loop: Loop) -> None:
    class Context:
        def __init__(self) -> None:
            self.callbacks: list[Callable[[], None]] = []

        def add_callback(self, fn: Callable[[], None]) -> bool:
            self.callbacks.append(fn)
            return True

        def peer(self) -> str:
            return "ipv4:127.0.0.1:1"

    raw = Context()
    ctx = handoff.LoopContext(raw, loop)  # type: ignore[arg-type]
    ran_on: list[int] = []
    assert ctx.add_callback(lambda: ran_on.append(get_ident()))
    assert ctx.peer() == "ipv4:127.0.0.1:1"
    finished(in_thread(loop, lambda: raw.callbacks[0]()))  # grpcio's thread ends the call
    wait_until(lambda: bool(ran_on))
    assert ran_on == [get_ident()]


def test_first_answers_on_grpcs_thread_without_the_loop(loop: Loop) -> None:
    """What ``first`` answers needs no turn of the loop: the loop's thread is held
    in a native lock (no greenlet runs) until the call has its answer."""
    ran: list[Any] = []

    def behaviour(request: str, context: Any) -> str:
        ran.append(request)
        return f"loop:{request}"

    def first(request: str, context: Any) -> str | None:
        return f"first:{request}" if request.startswith("quick") else None

    handler = handoff.on_loop(grpc.unary_unary_rpc_method_handler(behaviour), loop, first)
    unary: Any = handler.unary_unary  # (request, context) -> answer
    answered = allocate_lock()
    answered.acquire()
    answers: list[str] = []

    def call() -> None:
        answers.append(unary("quick-1", None))
        answered.release()

    start_new_thread(call, ())
    assert answered.acquire(timeout=DEADLINE), "the call waited for the loop"
    assert answers == ["first:quick-1"] and ran == []
    # What ``first`` leaves is handed to the loop as before.
    assert finished(in_thread(loop, lambda: unary("slow", None))) == "loop:slow"
    assert ran == ["slow"]


def test_first_is_for_a_single_request(loop: Loop) -> None:
    handler = grpc.stream_unary_rpc_method_handler(lambda requests, context: None)
    with pytest.raises(ValueError):
        handoff.on_loop(handler, loop, lambda request, context: None)


def test_try_post_refuses_while_the_loop_is_behind(loop: Loop) -> None:
    ran: list[int] = []
    # The loop's thread does not yield in between: nothing queued runs yet.
    assert all(loop.try_post(3, ran.append, i) for i in range(3))
    assert not loop.try_post(3, ran.append, 99)  # three wait: the fourth is refused
    wait_until(lambda: len(ran) == 3)
    assert ran == [0, 1, 2]
    assert loop.try_post(3, ran.append, 3)  # caught up: posted again
    wait_until(lambda: len(ran) == 4)


class _CountedWakes:
    """Stands in for the loop's async watcher: counts the wake-ups asked of it."""

    def __init__(self, watcher: Any) -> None:
        self.watcher = watcher
        self.sends = 0

    def send(self) -> None:
        self.sends += 1
        self.watcher.send()

    def stop(self) -> None:
        self.watcher.stop()

    def close(self) -> None:
        self.watcher.close()


def test_try_post_work_that_keeps_coming_is_run_without_a_wake_each() -> None:
    """A native thread hands the loop one piece of work after another, each as soon
    as the last has run (as grpcio's threads answer calls): the first wakes the
    loop, the rest are found by its tick. The tick is long here, so that a busy
    machine cannot make the thread miss it."""
    loop = Loop(tick=0.05)
    wakes = _CountedWakes(loop._watcher)
    loop._watcher = wakes
    items = 40
    ran: list[int] = []
    try:

        def hand_over() -> None:
            for i in range(items):
                done = allocate_lock()
                done.acquire()

                def run(i: int = i, done: Any = done) -> None:
                    ran.append(i)
                    done.release()

                assert loop.try_post(1000, run)
                done.acquire()  # until it ran on the loop

        finished(in_thread(loop, hand_over))
        assert ran == list(range(items))
        assert wakes.sends < items // 2, wakes.sends  # about one: the rest on the tick
        wait_until(lambda: not loop._ticking)  # a look that found nothing stopped it
        before = wakes.sends
        assert loop.try_post(1000, ran.append, items)  # idle again: this one wakes it
        assert wakes.sends == before + 1
        wait_until(lambda: len(ran) == items + 1)
    finally:
        loop.close()


def test_try_post_work_runs_before_post_work_handed_over_after_it(loop: Loop) -> None:
    ran: list[str] = []
    # The loop's thread does not yield in between: both wait for the same pass.
    assert loop.try_post(1000, ran.append, "answered at once")
    loop.post(ran.append, "waited for")
    wait_until(lambda: len(ran) == 2)
    assert ran == ["answered at once", "waited for"]


def test_thread_pool_starts_threads_as_work_needs_them() -> None:
    """Twenty pieces of work that each wait for all twenty to have started: only
    a thread each lets them finish."""
    pool = ThreadPool(32)
    count = 20
    started = [0]
    guard = allocate_lock()
    all_in = allocate_lock()
    all_in.acquire()
    finished_count = [0]
    callbacks: list[object] = []
    done = allocate_lock()
    done.acquire()

    def work() -> None:
        with guard:
            started[0] += 1
            if started[0] == count:
                all_in.release()
        all_in.acquire()
        all_in.release()

    def on_done(submitted: object) -> None:
        with guard:
            callbacks.append(submitted)
            finished_count[0] += 1
            if finished_count[0] == count:
                done.release()

    for _ in range(count):
        pool.submit(work).add_done_callback(on_done)
    assert done.acquire(timeout=DEADLINE)
    assert pool.threads == count and len(callbacks) == count


def test_thread_pool_queues_work_beyond_its_threads() -> None:
    pool = ThreadPool(2)
    results: list[int] = []
    guard = allocate_lock()
    done = allocate_lock()
    done.acquire()

    def work(i: int) -> None:
        with guard:
            results.append(i)
            if len(results) == 10:
                done.release()

    for i in range(10):
        pool.submit(work, i)
    assert done.acquire(timeout=DEADLINE)
    assert sorted(results) == list(range(10)) and pool.threads == 2
    late: list[object] = []
    submitted = pool.submit(work, 10)
    wait = allocate_lock()
    wait.acquire()

    def on_done(s: object) -> None:
        late.append(s)
        wait.release()

    submitted.add_done_callback(on_done)
    assert wait.acquire(timeout=DEADLINE)  # added after the work ran or before: called once
    assert len(late) == 1


def test_grpc_gets_native_threads_in_a_patched_process() -> None:
    """After ``cooperate()`` the rest of the process is gevent's, but grpcio's
    threads are native: one of its threads runs while the main thread is blocked
    in a native lock (a greenlet could not, and the child would hang)."""
    code = textwrap.dedent(
        """
        from pushsvc.nativethreads import allocate_lock, cooperate
        cooperate()
        import threading
        import grpc._server
        from gevent.monkey import is_module_patched
        assert is_module_patched("threading")
        lock = allocate_lock()
        lock.acquire()
        grpc._server.threading.Thread(target=lock.release, daemon=True).start()
        assert lock.acquire(timeout=30), "grpcio's thread did not run"
        assert grpc._server.threading is not threading
        print("native")
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "native"
    assert out.stderr == ""
