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
  answers an online-only unary ``Push`` when it is alone (``Loop.try_post``).

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
    parser.add_argument(
        "--mode", choices=("gevent", "threads", "aio", "handoff", "post"), required=True
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--workers", type=int, default=256, help="thread pool size")
    args = parser.parse_args()
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
    if args.mode == "aio":
        import asyncio

        asyncio.run(serve_aio(args.host, args.port))
    elif args.mode == "handoff":
        serve_handoff(args.host, args.port, args.workers)
    else:
        serve_sync(args.host, args.port, args.workers, args.mode)
    return 0


def servicer_base() -> Any:
    from pushsvc_client.v1 import push_pb2_grpc

    return push_pb2_grpc.PushServiceServicer


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


def serve_sync(host: str, port: int, workers: int, mode: str) -> None:
    import signal
    import threading

    from pushsvc_client.v1 import push_pb2

    answer = push_pb2.PushResponse(message_id="echo")

    class Echo(servicer_base()):  # type: ignore[misc]
        def Push(self, request: Any, context: Any) -> Any:
            return answer

        def PushStream(self, requests: Iterator[Any], context: Any) -> Iterator[Any]:
            for _ in requests:
                yield answer

    server = start_threaded(Echo(), host, port, workers)
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


async def serve_aio(host: str, port: int) -> None:
    import asyncio
    import signal

    import grpc

    from pushsvc_client.v1 import push_pb2, push_pb2_grpc

    answer = push_pb2.PushResponse(message_id="echo")

    class Echo(servicer_base()):  # type: ignore[misc]
        async def Push(self, request: Any, context: Any) -> Any:
            return answer

        async def PushStream(
            self, requests: AsyncIterator[Any], context: Any
        ) -> AsyncIterator[Any]:
            async for _ in requests:
                yield answer

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
