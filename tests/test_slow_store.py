"""A node whose store hangs (DESIGN §2.2 budgets, §4 guarantees; issue: the core under faults).

The store is a real FerretDB stopped with SIGSTOP: its sockets stay open and
nothing answers, as with a database that is paused, overloaded or behind a
broken network. Connections must answer pings from their first moment, be
welcomed when the store answers, get 1013 (never silence) when it does not
answer in time, and be shed with 1013 when too many wait; /readyz must say the
store is gone and come back with it; online-only pushes keep being routed in
a fleet from what the node last knew.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Callable, Iterator

import pytest

from pushsvc_client.v1 import push_pb2
from tests.ferretdb import FerretDB
from tests.nodeproc import API_KEY, CLUSTER_KEY, JWT_SECRET, NodeProcess, auth
from tests.rawws import OP_CLOSE, OP_PONG, RawWS
from tests.waiting import wait_for
from tests.wsclient import open_ws, token

pytestmark = pytest.mark.timeout(240)

AUTH = auth()


@pytest.fixture
def db() -> Iterator[FerretDB]:
    server = FerretDB()
    try:
        server.start()
        yield server
    finally:
        with contextlib.suppress(Exception):
            server.resume()  # a paused server would not stop on SIGTERM
        server.cleanup()


def fleet_env(db: FerretDB, name: str, **extra: str) -> dict[str, str]:
    return {
        "PUSHSVC_MONGO_URI": db.uri,
        "PUSHSVC_MONGO_DB": name,
        "PUSHSVC_CLUSTER_KEY": CLUSTER_KEY,
        "PUSHSVC_JWT_SECRET": JWT_SECRET,
        "PUSHSVC_API_KEYS": API_KEY,
        **extra,
    }


def raw(node: NodeProcess, user: str) -> RawWS:
    return RawWS.connect("127.0.0.1", node.ws_port, f"/ws?token={token(user)}", timeout=10)


def ready_status(node: NodeProcess) -> int:
    return node.admin_get("/readyz")[0]


def test_pings_are_answered_while_the_store_hangs_then_the_welcome_follows(
    db: FerretDB, node_factory: Callable[..., NodeProcess]
) -> None:
    node = node_factory(
        env=fleet_env(db, f"slow_{uuid.uuid4().hex[:8]}", PUSHSVC_WELCOME_TIMEOUT="120")
    )
    db.pause()
    try:
        with raw(node, "patient") as ws:
            # The upgrade and the read loop do not wait for the store.
            for i in range(3):
                ws.send_ping(f"hello {i}".encode())
                frame = ws.recv_frame(timeout=30)
                assert (frame.opcode, frame.payload) == (OP_PONG, f"hello {i}".encode())
            ws.send_json({"type": "ping"})  # answered after the welcome, which comes first
            wait_for(lambda: ready_status(node) == 503, timeout=30, what="/readyz to say 503")
            assert "store" in node.ready()["reason"]
            db.resume()
            welcome = ws.recv_json(timeout=60)
            assert welcome["type"] == "welcome" and welcome["user"] == "patient", welcome
            assert ws.recv_json(timeout=30) == {"type": "pong"}
    finally:
        db.resume()
    wait_for(lambda: ready_status(node) == 200, timeout=30, what="/readyz back to 200")


def test_a_store_that_does_not_answer_in_time_gets_1013(
    db: FerretDB, node_factory: Callable[..., NodeProcess]
) -> None:
    node = node_factory(
        env=fleet_env(db, f"slow_{uuid.uuid4().hex[:8]}", PUSHSVC_WELCOME_TIMEOUT="2")
    )
    db.pause()
    try:
        with raw(node, "impatient") as ws:
            close = ws.recv_close(timeout=60)
            assert close is not None and close.opcode == OP_CLOSE
            assert close.close_code == 1013, close
            assert "try again" in close.close_reason, close
    finally:
        db.resume()
    # Once the store is back, the same user is welcomed.
    with open_ws(node, "impatient") as client:
        assert client.welcome["type"] == "welcome"
    log = node.log()
    assert "Traceback" not in log, log[-3000:]
    assert "store unavailable" in log


def test_connections_beyond_the_waiting_queue_are_shed_with_1013(
    db: FerretDB, node_factory: Callable[..., NodeProcess]
) -> None:
    node = node_factory(
        env=fleet_env(
            db,
            f"slow_{uuid.uuid4().hex[:8]}",
            PUSHSVC_WELCOME_TIMEOUT="120",
            PUSHSVC_CONNECT_QUEUE="2",
        )
    )
    db.pause()
    waiting: list[RawWS] = []
    shed = None
    try:
        # Two batches may be with the store and two connections may queue:
        # one of the first few beyond that is shed at once.
        for i in range(10):
            ws = raw(node, f"storm-{i}")
            ws.send_ping(b"alive")
            first = ws.recv_frame(timeout=30)
            if first.opcode == OP_CLOSE:
                shed = first
                ws.close()
                break
            assert first.opcode == OP_PONG, first
            waiting.append(ws)
        assert shed is not None, "no connection was shed"
        assert shed.close_code == 1013, shed
        assert len(waiting) >= 2
        db.resume()
        for ws in waiting:  # those that waited are welcomed once the store answers
            assert ws.recv_json(timeout=60)["type"] == "welcome"
    finally:
        db.resume()
        for ws in waiting:
            ws.close()
    _, body = node.admin_get("/metrics")
    shed_lines = [
        line for line in body.splitlines() if line.startswith("pushsvc_connects_shed_total")
    ]
    assert any('why="queue full"' in line and not line.endswith(" 0.0") for line in shed_lines), (
        shed_lines
    )


def test_online_only_pushes_keep_flowing_in_a_fleet_while_the_store_hangs(
    db: FerretDB, node_factory: Callable[..., NodeProcess]
) -> None:
    name = f"slow_{uuid.uuid4().hex[:8]}"
    a = node_factory(env=fleet_env(db, name))
    b = node_factory(env=fleet_env(db, name))
    with open_ws(b, "roamer") as client, a.stub() as stub:
        request = push_pb2.PushRequest(user_ids=["roamer"], payload=b'{"n":0}', ttl_seconds=0)
        # Node a learns where roamer is (presence is written before the welcome).
        stub.Push(request, metadata=AUTH, timeout=30)
        assert client.messages(1, timeout=30)[0]["data"] == {"n": 0}
        db.pause()
        try:
            for n in range(1, 4):
                request = push_pb2.PushRequest(
                    user_ids=["roamer"], payload=json.dumps({"n": n}).encode(), ttl_seconds=0
                )
                stub.Push(request, metadata=AUTH, timeout=60)
                assert client.messages(1, timeout=30)[0]["data"] == {"n": n}
            # A stored push cannot be stored: UNAVAILABLE, not a hang.
            with pytest.raises(Exception) as info:
                stub.Push(
                    push_pb2.PushRequest(user_ids=["roamer"], payload=b"{}"),
                    metadata=AUTH,
                    timeout=60,
                )
            assert "UNAVAILABLE" in str(info.value) or "DEADLINE" in str(info.value), info.value
        finally:
            db.resume()
    _, body = a.admin_get("/metrics")
    served = [
        line for line in body.splitlines() if line.startswith("pushsvc_presence_cache_served_total")
    ]
    assert served and float(served[0].split()[1]) >= 3, served
