"""gRPC on native threads, each call handed to the event loop (``handoff``): streams
that callers abandon mid-way leave no threads behind, and the node keeps answering."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pushsvc import nativethreads
from pushsvc_client.v1 import push_pb2, push_pb2_grpc
from tests.nodeproc import NodeProcess, auth
from tests.waiting import wait_for

AUTH = auth()
STREAMS = 20  # per round
RECEIPT_STREAMS = 5


def threads_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError("no thread count")


def abandon_streams(stub: push_pb2_grpc.PushServiceStub, round_no: int) -> None:
    """Open ``STREAMS`` PushStreams that each got an answer and still send, and
    ``RECEIPT_STREAMS`` StreamReceipts that got their first answer; cancel them all."""
    calls: list[tuple[Any, threading.Event]] = []
    for i in range(STREAMS):
        more = threading.Event()

        def requests(i: int = i, more: threading.Event = more) -> Iterator[push_pb2.PushRequest]:
            yield push_pb2.PushRequest(
                user_ids=[f"abandon-{round_no}-{i}"], payload=b'{"n": 1}', ttl_seconds=0
            )
            more.wait(60)  # the stream stays open until it is cancelled

        call: Any = stub.PushStream(requests(), metadata=AUTH, timeout=60)
        assert next(call).message_id
        calls.append((call, more))
    receipts: list[Any] = []
    for _ in range(RECEIPT_STREAMS):
        stream: Any = stub.StreamReceipts(
            push_pb2.StreamReceiptsRequest(), metadata=AUTH, timeout=60
        )
        assert next(stream).cursor  # the first answer carries the starting cursor
        receipts.append(stream)
    for call, more in calls:
        call.cancel()
        more.set()
    for stream in receipts:
        stream.cancel()


def test_abandoned_streams_leave_no_threads_behind(
    node: NodeProcess, stub: push_pb2_grpc.PushServiceStub
) -> None:
    assert node.proc is not None
    pid = node.proc.pid
    push = push_pb2.PushRequest(user_ids=["before"], payload=b"{}", ttl_seconds=0)
    assert stub.Push(push, metadata=AUTH, timeout=30).message_id
    before = threads_of(pid)
    abandon_streams(stub, 1)
    # Each stream held a handler thread of the pool (kept for later calls) and had a
    # reader thread of its own, which must end with it: a reader kept per abandoned
    # stream would leave STREAMS more threads than the pool can account for.
    bound = before + STREAMS + RECEIPT_STREAMS + 5
    wait_for(
        lambda: threads_of(pid) <= bound,
        timeout=60,
        what=f"the node's threads back to at most {bound} (the pool's, no readers)",
    )
    answer = stub.Push(
        push_pb2.PushRequest(user_ids=["after"], payload=b"{}", ttl_seconds=0),
        metadata=AUTH,
        timeout=30,
    )
    assert answer.message_id
    assert "Traceback" not in node.log() and "unexpected error" not in node.log()


# grpcio's I/O (``classic_grpc_io``): its completion-queue poller, not its EventEngine.


def test_classic_io_is_set_for_an_event_engine_grpcio(monkeypatch: Any) -> None:
    monkeypatch.setattr(nativethreads, "grpcio_version", lambda: (1, 85, 3))
    monkeypatch.delitem(sys.modules, "grpc._cython.cygrpc", raising=False)
    environ: dict[str, str] = {}
    assert nativethreads.classic_grpc_io(environ)
    assert environ == {"GRPC_EXPERIMENTS": nativethreads.CLASSIC_IO}


def test_classic_io_leaves_the_operators_choice_and_older_grpcio_alone(monkeypatch: Any) -> None:
    monkeypatch.setattr(nativethreads, "grpcio_version", lambda: (1, 85, 3))
    monkeypatch.delitem(sys.modules, "grpc._cython.cygrpc", raising=False)
    chosen = {"GRPC_EXPERIMENTS": "event_engine_listener"}
    assert not nativethreads.classic_grpc_io(chosen)
    assert chosen == {"GRPC_EXPERIMENTS": "event_engine_listener"}
    empty = {"GRPC_EXPERIMENTS": ""}  # set, even to nothing: grpcio's own defaults
    assert not nativethreads.classic_grpc_io(empty)
    assert empty == {"GRPC_EXPERIMENTS": ""}
    monkeypatch.setattr(nativethreads, "grpcio_version", lambda: (1, 79, 0))
    older: dict[str, str] = {}
    assert not nativethreads.classic_grpc_io(older)
    assert older == {}


def test_classic_io_is_not_set_once_grpcio_is_loaded(monkeypatch: Any) -> None:
    import grpc  # noqa: F401 - loaded in this process

    monkeypatch.setattr(nativethreads, "grpcio_version", lambda: (1, 85, 3))
    environ: dict[str, str] = {}
    assert not nativethreads.classic_grpc_io(environ)
    assert environ == {}


def test_grpcio_version_reads_the_installed_package() -> None:
    import grpc

    major, minor = grpc.__version__.split(".")[:2]
    assert nativethreads.grpcio_version()[:2] == (int(major), int(minor))


SERVE_AND_CALL = """
from pushsvc.nativethreads import ThreadPool, cooperate
cooperate()
import os, grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
server = grpc.server(ThreadPool(2))  # native threads, as a node's
health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
port = server.add_insecure_port("127.0.0.1:0")
server.start()
with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
    answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=30)
server.stop(None)
print(os.environ.get("GRPC_EXPERIMENTS", ""), answer.status)
"""


def test_a_node_process_serves_on_grpcios_classic_io_without_complaint() -> None:
    """The switches name experiments this grpcio knows (an unknown one is an ERROR
    line on stderr, and the switch does nothing): the node's way into grpcio,
    ``cooperate``, sets them, and a server and a channel work under them."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRPC_")}
    env["GRPC_VERBOSITY"] = "ERROR"  # grpcio's complaints about its switches are ERRORs
    done = subprocess.run(
        [sys.executable, "-c", SERVE_AND_CALL],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    expected = nativethreads.CLASSIC_IO if nativethreads.grpcio_version() >= (1, 80) else ""
    assert done.stdout.split() == ([expected, "1"] if expected else ["1"]), done.stdout
    assert "experiment" not in done.stderr.lower(), done.stderr
