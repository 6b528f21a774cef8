"""gRPC on native threads, each call handed to the event loop (``handoff``): streams
that callers abandon mid-way leave no threads behind, and the node keeps answering."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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
