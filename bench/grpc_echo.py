"""The floor of the unicast scenarios: grpcio's Python server doing nothing.

It serves pushsvc's own ``PushService`` contract, so the load generator sends
it exactly what it sends a node, but ``Push`` answers at once and
``PushStream`` answers each request as it arrives: what is left is grpcio's
per-request cost (HTTP/2, protobuf, the hand-offs between its threads and the
application). Five ways to run grpcio's Python server, as pushsvc could:

- ``gevent``: gevent monkey-patching plus ``grpc.experimental.gevent``, a
  thread pool of greenlets (what a pushsvc node did before 5f34b97);
- ``threads``: plain threads, ``grpc.server(ThreadPoolExecutor)``;
- ``aio``: ``grpc.aio`` on asyncio;
- ``handoff``: gevent monkey-patching without its threads, grpcio's own
  threads, and each request handed to the gevent event loop of the main thread
  and answered from there (the loop drains what queued in one pass): the
  model a node runs since 5f34b97 (``pushsvc/handoff.py``), with the same
  per-request hand-off to the loop that pushing to its connections needs;
- ``post``: a node's threading (``pushsvc.nativethreads``, ``pushsvc.handoff``),
  each request posted to the loop and answered without waiting for it: how a node
  answers an online-only unary ``Push`` when it is alone (``Loop.try_post``);
- ``split``: grpcio on plain threads in one process, each request's payload
  written to a pipe read by a second process running a gevent loop, which
  parses it (where a node's WebSocket side would deliver it): a node split in
  two processes, its gRPC side free of the event loop's GIL turns.

``--work`` (``threads``, ``aio``, ``split``; ``threads+work`` in ``bench.suite
--echo-modes``) does a node's work for an online-only push on each request
(validation, the message id, the frame) before answering it with that id: what
a servicer's own Python costs on each of grpcio's servers. ``--spin US``
(``threads``; ``threads+spinUS`` in ``bench.suite``) holds the GIL for ``US``
microseconds of a busy loop on each request instead, allocating nothing: how the
cost of a servicer's Python grows with the time it keeps the GIL.

Every mode runs grpcio's I/O as a node does (``pushsvc.nativethreads.classic_grpc_io``:
its completion-queue poller; ``GRPC_EXPERIMENTS`` set in the environment wins, and
``GRPC_EXPERIMENTS=`` gives grpcio's own default), so the ratios compare like with like.

    python -m bench.grpc_echo --mode threads --port 0
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import AsyncIterator, Iterator
from typing import Any


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    modes = ("gevent", "threads", "aio", "handoff", "post", "split")
    parser.add_argument("--mode", choices=modes, required=True)
    parser.add_argument(
        "--work",
        action="store_true",
        help="threads, aio, split: do a node's work for an online-only push per request",
    )
    parser.add_argument(
        "--spin",
        type=float,
        default=0.0,
        metavar="US",
        help="threads: busy-wait this many microseconds per request (no allocation)",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--workers", type=int, default=256, help="thread pool size")
    args = parser.parse_args()
    if not 0 <= args.spin < 1e6 or (args.spin and args.mode != "threads"):
        parser.error("--spin takes 0 to 999999 microseconds, with --mode threads")
    from pushsvc.nativethreads import classic_grpc_io

    classic_grpc_io()  # grpcio's I/O as in a node (GRPC_EXPERIMENTS set by hand wins)
    if args.mode == "gevent":
        from gevent import monkey

        monkey.patch_all()
        import grpc.experimental.gevent as grpc_gevent

        grpc_gevent.init_gevent()
    if args.mode == "handoff":
        from gevent import monkey

        monkey.patch_all(thread=False, queue=False)  # grpcio keeps native threads, queues
    if args.mode == "post":
        from pushsvc.nativethreads import cooperate

        cooperate()  # as a node: gevent patches everything, grpcio keeps native threads
        serve_post(args.host, args.port, args.workers)
        return 0
    if args.mode == "split":
        serve_split(args.host, args.port, args.workers, args.work)
        return 0
    if args.mode == "aio":
        import asyncio

        asyncio.run(serve_aio(args.host, args.port, args.work))
    elif args.mode == "handoff":
        serve_handoff(args.host, args.port, args.workers)
    else:
        serve_sync(args.host, args.port, args.workers, args.mode, args.work, args.spin)
    return 0


def servicer_base() -> Any:
    from pushsvc_client.v1 import push_pb2_grpc

    return push_pb2_grpc.PushServiceServicer


def answering(respond: Any) -> Any:
    """A servicer whose unary ``Push`` and ``PushStream`` answer each request with
    ``respond(request)``, on the calling grpcio thread."""

    class Echo(servicer_base()):  # type: ignore[misc]
        def Push(self, request: Any, context: Any) -> Any:
            return respond(request)

        def PushStream(self, requests: Iterator[Any], context: Any) -> Iterator[Any]:
            for request in requests:
                yield respond(request)

    return Echo()


def node_work() -> Any:
    """What a node does on grpcio's side of an online-only push, as a function of
    the request: validate it, make its id and its frame; returns ``(answer,
    frame)``."""
    import time

    from pushsvc.messages import build_push, new_message_id
    from pushsvc.protocol import online_wire
    from pushsvc_client.v1 import push_pb2

    def work(request: Any) -> tuple[Any, bytes]:
        cmd = build_push(
            request.user_ids,
            request.payload,
            request.content_type,
            request.ttl_seconds if request.HasField("ttl_seconds") else 0,
            request.idempotency_key,
            max_payload=65536,
            default_ttl=0,
            max_ttl=86400,
        )
        message_id = new_message_id(time.time(), cmd.owner)
        wire = online_wire(message_id, cmd.payload, cmd.content_type)
        return push_pb2.PushResponse(message_id=message_id), wire

    return work


def start_threaded(servicer: Any, host: str, port: int, workers: int, pool: Any = None) -> Any:
    """``servicer`` on a grpcio server with a pool of ``workers`` threads (``pool``,
    or a ``concurrent.futures`` one), started; says ``READY <port>`` on stdout."""
    from concurrent import futures

    import grpc

    from pushsvc_client.v1 import push_pb2_grpc

    server = grpc.server(pool or futures.ThreadPoolExecutor(max_workers=workers))
    push_pb2_grpc.add_PushServiceServicer_to_server(servicer, server)
    bound = server.add_insecure_port(f"{host}:{port}")
    server.start()
    print(f"READY {bound}", flush=True)
    return server


def serve_sync(
    host: str, port: int, workers: int, mode: str, work: bool, spin_us: float = 0.0
) -> None:
    import signal
    import threading
    import time

    from pushsvc_client.v1 import push_pb2

    answer = push_pb2.PushResponse(message_id="echo")
    do = node_work()

    spin = spin_us / 1e6
    clock = time.perf_counter

    def respond(request: Any) -> Any:
        if spin:
            until = clock() + spin
            while clock() < until:
                pass
        return do(request)[0] if work else answer

    server = start_threaded(answering(respond), host, port, workers)
    stop = threading.Event()
    if mode == "gevent":
        import gevent

        gevent.signal_handler(signal.SIGTERM, stop.set)
        gevent.signal_handler(signal.SIGINT, stop.set)
    else:
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, lambda *_: stop.set())
    while not stop.wait(1.0):
        pass
    server.stop(grace=1).wait()


def until_signalled_on_loop() -> None:
    """Wait on the gevent loop for SIGTERM or SIGINT."""
    import signal

    import gevent
    from gevent.event import Event as LoopEvent

    stop = LoopEvent()
    gevent.signal_handler(signal.SIGTERM, stop.set)
    gevent.signal_handler(signal.SIGINT, stop.set)
    stop.wait()


def serve_handoff(host: str, port: int, workers: int) -> None:
    """grpcio on native threads; every request answered by the gevent loop."""
    import threading
    from _queue import SimpleQueue  # native, whatever gevent patched
    from collections import deque

    import gevent
    from gevent.event import Event as LoopEvent

    from pushsvc_client.v1 import push_pb2

    answer = push_pb2.PushResponse(message_id="echo")
    queued: deque[threading.Event] = deque()  # appends from any thread are atomic
    wake = LoopEvent()
    signal_loop = gevent.get_hub().loop.async_()
    signal_loop.start(wake.set)  # runs in the loop: only wake the drainer

    def submit() -> threading.Event:
        done = threading.Event()
        queued.append(done)
        signal_loop.send()  # thread-safe: wakes the loop (coalesced while pending)
        return done

    def drain() -> None:  # a greenlet of the main thread's loop
        while True:
            wake.wait()
            wake.clear()
            while queued:
                queued.popleft().set()  # the node's work for a push would go here

    class Echo(servicer_base()):  # type: ignore[misc]
        def Push(self, request: Any, context: Any) -> Any:
            submit().wait()
            return answer

        def PushStream(self, requests: Iterator[Any], context: Any) -> Iterator[Any]:
            pending: SimpleQueue[threading.Event | None] = SimpleQueue()

            def read() -> None:  # pipelined: requests go on while answers wait
                for _ in requests:
                    pending.put(submit())
                pending.put(None)

            threading.Thread(target=read, daemon=True).start()
            while (done := pending.get()) is not None:
                done.wait()
                yield answer

    server = start_threaded(Echo(), host, port, workers)
    drainer = gevent.spawn(drain)
    until_signalled_on_loop()
    drainer.kill()
    server.stop(grace=1).wait()


def serve_post(host: str, port: int, workers: int) -> None:
    """A node's threading (``pushsvc.nativethreads``, ``pushsvc.handoff``): each
    request posted to the gevent loop and answered at once, without waiting."""
    from pushsvc.handoff import Loop
    from pushsvc.nativethreads import ThreadPool
    from pushsvc_client.v1 import push_pb2

    answer = push_pb2.PushResponse(message_id="echo")
    loop = Loop()
    seen = [0]

    def note() -> None:  # on the loop: the node's delivery would go here
        seen[0] += 1

    class Echo(servicer_base()):  # type: ignore[misc]
        def Push(self, request: Any, context: Any) -> Any:
            loop.post(note)
            return answer

        def PushStream(self, requests: Iterator[Any], context: Any) -> Iterator[Any]:
            for _ in requests:
                loop.post(note)
                yield answer

    server = start_threaded(Echo(), host, port, workers, ThreadPool(workers))
    until_signalled_on_loop()
    server.stop(grace=1).wait()


def split_reader(fd: int) -> None:
    """The second process of ``split``: a gevent loop reading length-prefixed
    records from ``fd`` until it closes."""
    from gevent import monkey

    monkey.patch_all()
    import os
    import struct

    from gevent.os import make_nonblocking, nb_read

    make_nonblocking(fd)
    seen = 0
    buffer = b""
    while True:
        chunk = nb_read(fd, 1 << 16)
        if not chunk:
            break
        buffer += chunk
        at = 0
        end = len(buffer)
        while end - at >= 4:
            (size,) = struct.unpack_from("<I", buffer, at)
            if end - at - 4 < size:
                break
            _record = buffer[at + 4 : at + 4 + size]  # the delivery would go here
            seen += 1
            at += 4 + size
        buffer = buffer[at:]
    os._exit(0)


def serve_split(host: str, port: int, workers: int, work: bool) -> None:
    """grpcio on plain threads; each request's payload (``work``: its frame)
    written to a pipe that a gevent process reads."""
    import os
    import signal
    import struct
    import threading
    import time
    from collections import deque

    from pushsvc_client.v1 import push_pb2

    read_fd, write_fd = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(write_fd)
        split_reader(read_fd)
    os.close(read_fd)
    pack = struct.Struct("<I").pack
    pending: deque[bytes] = deque()  # appends and pops from any thread are atomic
    answer = push_pb2.PushResponse(message_id="echo")
    do = node_work()

    def forward(request: Any) -> Any:
        if not work:
            pending.append(pack(len(request.payload)) + request.payload)
            return answer
        response, wire = do(request)
        body = b"\0".join(u.encode() for u in request.user_ids) + b"\1" + wire
        pending.append(pack(len(body)) + body)
        return response

    def flush() -> None:  # one write a millisecond at most, of all that queued
        take = pending.popleft
        while True:
            time.sleep(0.001)
            if pending:
                os.write(write_fd, b"".join([take() for _ in range(len(pending))]))

    threading.Thread(target=flush, daemon=True).start()

    server = start_threaded(answering(forward), host, port, workers)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    while not stop.wait(1.0):
        pass
    server.stop(grace=1).wait()
    os.close(write_fd)
    os.waitpid(child, 0)


async def serve_aio(host: str, port: int, work: bool) -> None:
    import asyncio
    import signal

    import grpc

    from pushsvc_client.v1 import push_pb2, push_pb2_grpc

    answer = push_pb2.PushResponse(message_id="echo")
    do = node_work()

    def respond(request: Any) -> Any:
        return do(request)[0] if work else answer

    class Echo(servicer_base()):  # type: ignore[misc]
        async def Push(self, request: Any, context: Any) -> Any:
            return respond(request)

        async def PushStream(
            self, requests: AsyncIterator[Any], context: Any
        ) -> AsyncIterator[Any]:
            async for request in requests:
                yield respond(request)

    server = grpc.aio.server()
    push_pb2_grpc.add_PushServiceServicer_to_server(Echo(), server)
    bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    print(f"READY {bound}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    await stop.wait()
    await server.stop(grace=1)


if __name__ == "__main__":
    sys.exit(main())
