"""Online-only pushes on a node alone are answered on grpcio's thread, before
their delivery: the answer needs nothing the event loop holds, and the loop
queues the frame on the connections live when it runs (``handoff``'s ``first``,
``PushServicer.push_at_once``, ``Node.prepare_at_once``). Everything else still
waits for the loop: stored pushes, bad requests, a node in a fleet, a loop that
is behind."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gevent
import pytest

from pushsvc import grpc_api
from pushsvc.config import load_settings
from pushsvc.grpc_api import CallerLimits, Limits, PushServicer
from pushsvc.handoff import Loop
from pushsvc.node import Node
from pushsvc.owners import OwnerTags
from pushsvc.server import Server
from pushsvc_client.v1 import push_pb2


class _Connection:
    """A live connection of the hub that keeps what it is given."""

    def __init__(self, user_id: str) -> None:
        self.conn_id = f"c-{user_id}"
        self.user_id = user_id
        self.frames: list[bytes] = []

    def deliver_online(self, wire: bytes) -> bool:
        self.frames.append(wire)
        return True


class _Context:
    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", "Bearer key"),)


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    settings = load_settings(
        environ={
            "PUSHSVC_WS_ADDR": "127.0.0.1:0",
            "PUSHSVC_GRPC_ADDR": "127.0.0.1:0",
            "PUSHSVC_ADMIN_ADDR": "127.0.0.1:0",
            "PUSHSVC_DATA_DIR": str(tmp_path / "data"),
            "PUSHSVC_API_KEYS": "key",
            "PUSHSVC_JWT_SECRET": "s" * 32,
            "PUSHSVC_LOG_LEVEL": "error",
        }
    )
    server = Server(settings)  # built, not started: no listeners, no workers
    yield server.node
    server.node.stop()
    if server.receipt_log is not None:
        server.receipt_log.close()
    server.revocation_store.close()
    server.inbox.close()


@pytest.fixture
def loop() -> Iterator[Loop]:
    made = Loop()
    yield made
    made.close()


def _until(condition: Callable[[], bool]) -> None:
    """Let the loop run until ``condition`` holds (a generous deadline)."""
    deadline = time.monotonic() + 60
    while not condition():
        assert time.monotonic() < deadline, "the loop did not get there"
        gevent.sleep(0.01)


def _servicer(node: Node) -> PushServicer:
    return PushServicer(node, Limits(4096, 3600, 86400), CallerLimits(0, 0), OwnerTags("s"))


def _frame(wire: bytes) -> dict[str, Any]:
    """The JSON of one unmasked server text frame."""
    assert wire[0] == 0x81
    n = wire[1]
    start = 2 if n < 126 else 4
    frame: dict[str, Any] = json.loads(wire[start:])
    return frame


def test_an_online_only_push_is_answered_then_delivered_by_the_loop(node: Node, loop: Loop) -> None:
    alice = _Connection("alice")
    node._hub.add(alice)  # type: ignore[arg-type]
    request = push_pb2.PushRequest(user_ids=["alice"], payload=b'{"n": 1}', ttl_seconds=0)
    answer = _servicer(node).push_at_once(loop, request, _Context())  # type: ignore[arg-type]
    assert answer is not None and answer.message_id and not answer.seqs
    assert alice.frames == []  # answered: the delivery waits for the loop's turn
    pushed = node.counters.messages_pushed
    _until(lambda: bool(alice.frames))  # the loop ran what was posted
    assert len(alice.frames) == 1
    frame = _frame(alice.frames[0])
    assert frame["id"] == answer.message_id and frame["data"] == {"n": 1}
    assert "seq" not in frame
    assert node.counters.messages_pushed == pushed + 1


@pytest.mark.parametrize(
    "request_",
    [
        push_pb2.PushRequest(user_ids=["alice"], payload=b"{}", ttl_seconds=60),  # stored
        push_pb2.PushRequest(user_ids=["alice"], payload=b"{}"),  # the default TTL: stored
        push_pb2.PushRequest(user_ids=["alice"], payload=b"{", ttl_seconds=0),  # not JSON
        push_pb2.PushRequest(user_ids=[], payload=b"{}", ttl_seconds=0),  # nobody
    ],
    ids=["stored", "default-ttl", "bad-json", "no-users"],
)
def test_other_pushes_wait_for_the_loop(
    node: Node, loop: Loop, request_: push_pb2.PushRequest
) -> None:
    """None: ``Push`` answers on the loop (stores, or refuses and logs)."""
    assert _servicer(node).push_at_once(loop, request_, _Context()) is None  # type: ignore[arg-type]
    assert not loop._queued and not loop._lazy  # nothing was posted


def test_a_stored_push_is_validated_on_the_loop_only(
    node: Node, loop: Loop, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A push that will be stored is handed over as it came: ``Push`` on the loop
    validates it, not grpcio's thread as well."""
    servicer = _servicer(node)
    built: list[push_pb2.PushRequest] = []
    command = servicer._command

    def counted(request: push_pb2.PushRequest, owner: str) -> Any:
        built.append(request)
        return command(request, owner)

    monkeypatch.setattr(servicer, "_command", counted)
    stored = [
        push_pb2.PushRequest(user_ids=["alice"], payload=b"{}", ttl_seconds=60),
        push_pb2.PushRequest(user_ids=["alice"], payload=b"{}"),  # the default TTL
    ]
    for request in stored:
        assert servicer.push_at_once(loop, request, _Context()) is None  # type: ignore[arg-type]
    assert built == []
    online = push_pb2.PushRequest(user_ids=["alice"], payload=b"{}", ttl_seconds=0)
    assert servicer.push_at_once(loop, online, _Context()) is not None  # type: ignore[arg-type]
    assert built == [online]


def test_an_undecodable_request_waits_for_the_loop(node: Node, loop: Loop) -> None:
    undecodable = grpc_api._Undecodable("truncated message")
    assert _servicer(node).push_at_once(loop, undecodable, _Context()) is None  # type: ignore[arg-type]


def test_a_node_in_a_fleet_waits_for_its_forwards(
    node: Node, loop: Loop, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In a fleet the call waits for the nodes it forwards to (docs/protocol.md)."""
    monkeypatch.setattr(node.fleet, "alone", False)
    request = push_pb2.PushRequest(user_ids=["alice"], payload=b"{}", ttl_seconds=0)
    assert _servicer(node).push_at_once(loop, request, _Context()) is None  # type: ignore[arg-type]


def test_a_loop_that_is_behind_makes_the_push_wait(node: Node, loop: Loop) -> None:
    """Answers do not run ahead of deliveries without bound: with the loop
    ``AT_ONCE_BACKLOG`` callbacks behind, the call waits for its turn."""
    ran: list[int] = []
    for i in range(grpc_api.AT_ONCE_BACKLOG):
        loop.post(ran.append, i)
    request = push_pb2.PushRequest(user_ids=["alice"], payload=b"{}", ttl_seconds=0)
    servicer = _servicer(node)
    assert servicer.push_at_once(loop, request, _Context()) is None  # type: ignore[arg-type]
    _until(lambda: len(ran) == grpc_api.AT_ONCE_BACKLOG)
    assert servicer.push_at_once(loop, request, _Context()) is not None  # type: ignore[arg-type]
