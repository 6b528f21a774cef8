"""A StreamReceipts call read on a thread of its own, for the tests."""

from __future__ import annotations

import threading
from typing import Any

import grpc

from pushsvc_client.v1 import push_pb2, push_pb2_grpc
from tests.nodeproc import NodeProcess, auth
from tests.waiting import wait_for

DELIVERED = push_pb2.RECEIPT_KIND_DELIVERED
ACKED = push_pb2.RECEIPT_KIND_ACKED


class ReceiptReader:
    """Opens ``StreamReceipts`` on ``node`` and collects what arrives.

    ``events`` are the events in arrival order; ``cursor`` is the cursor of the
    last response (or event) read; ``error`` the status the stream ended with.
    """

    def __init__(
        self,
        node: NodeProcess,
        users: list[str] | None = None,
        cursor: str = "",
        api_key: str | None = None,
        start: bool = True,
    ) -> None:
        self._channel = grpc.insecure_channel(node.grpc_addr)
        stub = push_pb2_grpc.PushServiceStub(self._channel)
        request = push_pb2.StreamReceiptsRequest(user_ids=users or [], cursor=cursor)
        self.call: Any = stub.StreamReceipts(request, metadata=auth(api_key) if api_key else auth())
        self.events: list[push_pb2.ReceiptEvent] = []
        self.responses = 0
        self.cursor = ""
        self.error: grpc.RpcError | None = None
        self.ended = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._read, daemon=True)
        if start:
            self.start()

    def start(self) -> ReceiptReader:
        self._thread.start()
        wait_for(lambda: self.responses or self.ended.is_set(), 20, "the stream's first response")
        return self

    def _read(self) -> None:
        try:
            for response in self.call:
                with self._lock:
                    self.events.extend(response.events)
                    self.cursor = response.cursor
                    self.responses += 1
        except grpc.RpcError as exc:
            self.error = exc
        finally:
            self.ended.set()

    def seen(self) -> list[tuple[int, str, str, int]]:
        """(kind, message id, user id, seq) of every event so far."""
        with self._lock:
            return [(e.kind, e.message_id, e.user_id, e.seq) for e in self.events]

    def wait_seen(
        self, expected: set[tuple[int, str, str, int]], timeout: float = 20.0
    ) -> list[tuple[int, str, str, int]]:
        """Wait until every ``expected`` event arrived; returns all seen."""
        return wait_for(
            lambda: expected <= set(self.seen()) and self.seen(),
            timeout,
            f"receipt events {sorted(expected)} (seen {self.seen()})",
        )

    def wait_ended(self, timeout: float = 30.0) -> grpc.RpcError:
        assert self.ended.wait(timeout), "the stream did not end"
        assert self.error is not None, "the stream ended without an error"
        return self.error

    def close(self) -> None:
        self.call.cancel()
        self.ended.wait(10)
        self._channel.close()

    def __enter__(self) -> ReceiptReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
