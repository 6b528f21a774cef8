"""The Python cost of the push handlers, per message, without the network.

A node is built in this process as ``pushsvc serve`` builds it (embedded store in
a temporary directory, no listener started) with 1,000 stand-in connections
that take every frame without a socket, and ``PushServicer.PushBatch`` is
called directly with batches of 100 online-only pushes (~100-byte JSON, one
recipient each), then ``PushServicer.Push`` with one such push a call; the
answers are serialised as grpcio would. A third row takes a unary ``Push`` the
whole way a node answers it on grpcio's thread: the request's bytes through the
interceptor's key check, decoding, ``push_at_once`` and the answer's bytes, and
the delivery it hands over run as the loop runs it. What it measures is
pushsvc's own work per message -- validation, frame building, routing, the
answers -- which the suite's numbers hide under grpcio's hand-offs and the
socket writes. Best of five rounds; then, with ``--profile``, the top functions
by own time under cProfile (which slows everything several-fold: read the
shares, not the times). Runs in seconds.

    .venv/bin/python -m bench.handler_cost [--profile] [--record]
"""

from pushsvc.nativethreads import cooperate

cooperate()  # as in a node

import argparse  # noqa: E402
import cProfile  # noqa: E402
import io  # noqa: E402
import pstats  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

from bench.common import append_results, table  # noqa: E402

USERS = 1000
BATCH = 100
PAYLOAD = b'{"kind":"bench","n":12345,"text":"hello world hello world hello","ok":true,"xs":[1,2]}'


class _Connection:
    """A connection that takes every frame (no socket: the write is not measured)."""

    __slots__ = ("conn_id", "user_id")

    def __init__(self, i: int) -> None:
        self.conn_id = f"c{i}"
        self.user_id = f"u{i}"

    def deliver_online(self, wire: bytes) -> bool:
        return True

    def deliver_online_many(self, wires: tuple[bytes, ...], joined: bytes) -> bool:
        return True

    def deliver_user(
        self, seq: int, wire: bytes, message_id: str, expires_at: float | None
    ) -> None:
        return None


class _Context:
    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", "Bearer bench-key"),)


class _Details:
    """What grpcio gives an interceptor about a call (``grpc.HandlerCallDetails``)."""

    __slots__ = ("invocation_metadata", "method")

    def __init__(self, method: str, metadata: tuple[tuple[str, str], ...]) -> None:
        self.method = method
        self.invocation_metadata = metadata


def _handlers() -> tuple[Callable[[], None], Callable[[], None], Callable[[], None], str]:
    import functools

    import grpc

    from pushsvc.auth import ApiKeys
    from pushsvc.config import Settings
    from pushsvc.grpc_api import PUSH_SERVICE, AuthInterceptor, CallerLimits, Limits, PushServicer
    from pushsvc.handoff import Loop
    from pushsvc.owners import OwnerTags
    from pushsvc.server import Server
    from pushsvc_client.v1 import push_pb2

    settings = Settings(data_dir=tempfile.mkdtemp(prefix="pushsvc-handler-cost-"))
    node = Server(settings).node
    for i in range(USERS):
        node._hub.add(_Connection(i))  # stand-ins, in the node's own hub
    servicer = PushServicer(
        node,
        Limits(settings.max_payload_bytes, settings.default_ttl_seconds, settings.max_ttl_seconds),
        CallerLimits(0, 0),
        OwnerTags("bench"),
    )
    request = push_pb2.PushBatchRequest(
        pushes=[
            push_pb2.PushRequest(user_ids=[f"u{i % USERS}"], payload=PAYLOAD, ttl_seconds=0)
            for i in range(BATCH)
        ]
    )
    singles = [
        push_pb2.PushRequest(user_ids=[f"u{i}"], payload=PAYLOAD, ttl_seconds=0)
        for i in range(BATCH)
    ]
    context: Any = _Context()

    def call() -> None:
        servicer.PushBatch(request, context).SerializeToString()

    def unary() -> None:  # BATCH one-message calls, as many messages as one ``call``
        for single in singles:
            servicer.Push(single, context).SerializeToString()

    loop = Loop()
    loop._ticking = True  # as under load: the loop's timer finds the work, no wake-up
    method = f"/{PUSH_SERVICE}/Push"
    interceptor = AuthInterceptor(
        ApiKeys(["bench-key"]),
        None,
        CallerLimits(0, 0),
        loop,
        at_once={method: functools.partial(servicer.push_at_once, loop)},
    )
    servicer_handler = grpc.unary_unary_rpc_method_handler(
        servicer.Push,
        request_deserializer=push_pb2.PushRequest.FromString,
        response_serializer=push_pb2.PushResponse.SerializeToString,
    )
    details: Any = _Details(method, context.invocation_metadata())
    raw = [single.SerializeToString() for single in singles]

    def at_once() -> None:  # BATCH calls as grpcio makes them, then the loop's turn
        for data in raw:
            handler: Any = interceptor.intercept_service(lambda _: servicer_handler, details)
            answer = handler.unary_unary(handler.request_deserializer(data), context)
            handler.response_serializer(answer)
        while loop._lazy:  # what the loop's timer does with the deliveries handed over
            fn, args = loop._lazy.popleft()
            fn(*args)

    return call, unary, at_once, settings.data_dir  # the directory is removed at the end


def _best(fn: Callable[[], None], calls: int) -> float:
    """µs per message, best of five rounds of ``calls`` calls of BATCH messages."""
    for _ in range(200):  # warm up
        fn()
    best = float("inf")
    for _ in range(5):
        began = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, time.perf_counter() - began)
    return best / (calls * BATCH) * 1e6


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--calls", type=int, default=2000, help="PushBatch calls per round")
    p.add_argument(
        "--profile",
        choices=("batch", "at-once"),
        nargs="?",
        const="batch",
        help="also print the top functions of PushBatch (default) or of the at-once Push",
    )
    p.add_argument("--record", action="store_true", help="append to bench/RESULTS.md")
    args = p.parse_args()
    # Before the node exists: after thousands of calls that never yield, a gevent
    # subprocess here came back empty.
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    call, unary, at_once, data_dir = _handlers()
    per_message = _best(call, args.calls)
    per_unary = _best(unary, args.calls)
    per_at_once = _best(at_once, args.calls)
    rows = [
        ["PushBatch, 100 online-only pushes", f"{per_message:.2f}"],
        ["Push, one online-only push a call", f"{per_unary:.2f}"],
        ["Push answered on grpcio's thread, interceptor to answer bytes", f"{per_at_once:.2f}"],
    ]
    text = f"pushsvc {commit}\n\n" + table(["handler", "µs per message (best of 5)"], rows)
    if args.profile:
        profile = cProfile.Profile()
        profile.enable()
        profiled = call if args.profile == "batch" else at_once
        for _ in range(500):
            profiled()
        profile.disable()
        out = io.StringIO()
        pstats.Stats(profile, stream=out).sort_stats("tottime").print_stats(15)
        lines = [ln for ln in out.getvalue().splitlines() if ln.strip()]
        start = next(i for i, ln in enumerate(lines) if ln.lstrip().startswith("ncalls"))
        text += "\n\ncProfile, top 15 by own time:\n\n```\n" + "\n".join(lines[start:]) + "\n```"
    print(text)
    shutil.rmtree(data_dir, ignore_errors=True)
    if args.record:
        append_results(
            "Push handler cost without the network",
            __doc__.split("\n\n")[1].replace("\n", " ") + "\n\n" + text,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
