"""Delivery guarantees (DESIGN §4) on a real node: durability, replay, order, slow consumers."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from pushsvc_client.v1 import push_pb2, push_pb2_grpc
from tests.nodeproc import NodeProcess, auth
from tests.waiting import wait_for
from tests.wsclient import open_ws, token

AUTH = auth()


def push(stub: push_pb2_grpc.PushServiceStub, users: list[str], data: Any, **fields: Any) -> Any:
    return stub.Push(
        push_pb2.PushRequest(user_ids=users, payload=json.dumps(data).encode(), **fields),
        metadata=AUTH,
        timeout=10,
    )


def push_many(stub: push_pb2_grpc.PushServiceStub, user: str, first: int, count: int) -> list[Any]:
    """``count`` pushes of {"i": first..} to ``user`` over one PushStream."""

    def requests() -> Iterator[push_pb2.PushRequest]:
        for i in range(first, first + count):
            yield push_pb2.PushRequest(user_ids=[user], payload=json.dumps({"i": i}).encode())

    out = list(stub.PushStream(requests(), metadata=AUTH, timeout=60))
    assert not any(r.HasField("error") for r in out), [r.error for r in out if r.error.code]
    return out


def seqs(frames: list[dict[str, Any]]) -> list[int]:
    return [int(f["seq"]) for f in frames]


# -- durability ------------------------------------------------------------------------------


def test_durable_before_ok_survives_sigkill(node: NodeProcess) -> None:
    with grpc.insecure_channel(node.grpc_addr) as channel:
        stub = push_pb2_grpc.PushServiceStub(channel)
        ids = [push(stub, ["durable"], {"n": n}).message_id for n in range(5)]
    node.kill()  # right after the last OK: no graceful shutdown
    node.start()
    with open_ws(node, "durable") as client:
        assert client.welcome["seq"] == 5
        got = client.messages(5)
        assert seqs(got) == [1, 2, 3, 4, 5]
        assert [m["id"] for m in got] == ids
        assert [m["data"] for m in got] == [{"n": n} for n in range(5)]
        assert client.barrier() == []


# -- replay ------------------------------------------------------------------------------------


def test_replay_since(node: NodeProcess, stub: push_pb2_grpc.PushServiceStub) -> None:
    push_many(stub, "since", 1, 5)
    with open_ws(node, "since", since=2) as client:
        assert client.welcome["seq"] == 5
        got = client.messages(3)
        assert seqs(got) == [3, 4, 5]
        assert [m["data"]["i"] for m in got] == [3, 4, 5]
        assert client.barrier() == []
    with open_ws(node, "since", since=5) as client:
        assert client.barrier() == []
        push_many(stub, "since", 6, 1)
        assert seqs(client.messages(1)) == [6]


def test_replay_without_since_sends_unacked(
    node: NodeProcess, stub: push_pb2_grpc.PushServiceStub
) -> None:
    out = push_many(stub, "acker", 1, 5)
    with open_ws(node, "acker") as client:
        assert seqs(client.messages(5)) == [1, 2, 3, 4, 5]
        client.send({"type": "ack", "seq": 3})

        def acked(i: int) -> bool:
            st = stub.GetMessageStatus(
                push_pb2.GetMessageStatusRequest(message_id=out[i].message_id), metadata=AUTH
            )
            return bool(st.recipients[0].acked)

        wait_for(lambda: acked(2), what="ack of seq 3 stored")
        assert not acked(3)
    with open_ws(node, "acker") as client:
        got = client.messages(2)
        assert seqs(got) == [4, 5]
        assert [m["id"] for m in got] == [r.message_id for r in out[3:]]
        assert client.barrier() == []
    with open_ws(node, "acker", since=0) as client:  # since wins over the ack
        assert seqs(client.messages(5)) == [1, 2, 3, 4, 5]


def test_max_replay_keeps_newest(node_factory: Callable[..., NodeProcess]) -> None:
    node = node_factory(env={"PUSHSVC_MAX_REPLAY": "3"})
    with grpc.insecure_channel(node.grpc_addr) as channel:
        stub = push_pb2_grpc.PushServiceStub(channel)
        push_many(stub, "many", 1, 10)
        with open_ws(node, "many") as client:
            got = client.messages(3)
            assert seqs(got) == [8, 9, 10]
            assert [m["data"]["i"] for m in got] == [8, 9, 10]
            assert client.barrier() == []


# -- push during replay --------------------------------------------------------------------------

# Connect after this many of the 200 live pushes were answered (the pusher keeps going
# while the 300 stored ones are replayed), or "stream": a PushStream burst right after
# the welcome.
TIMINGS = ["0", "20", "60", "120", "stream"]


@pytest.mark.parametrize("timing", TIMINGS)
def test_push_during_replay_no_gap_no_duplicate(
    timing: str, node: NodeProcess, stub: push_pb2_grpc.PushServiceStub
) -> None:
    user = f"racer-{timing}"
    stored = push_many(stub, user, 1, 300)
    assert [list(r.seqs) for r in stored] == [[s] for s in range(1, 301)]
    live: list[Any] = []
    errors: list[BaseException] = []

    def pusher() -> None:
        try:
            if timing == "stream":
                live.extend(push_many(stub, user, 301, 200))
            else:
                for i in range(301, 501):
                    live.append(push(stub, [user], {"i": i}))
        except BaseException as exc:  # reported in the main thread
            errors.append(exc)

    thread = threading.Thread(target=pusher, daemon=True)
    if timing != "stream":
        thread.start()
        wait_for(lambda: len(live) >= int(timing) or errors, what=f"{timing} live pushes")
    with open_ws(node, user, since=0) as client:
        if timing == "stream":
            thread.start()
        got = client.messages(500, timeout=15)
        thread.join(30)
        assert not thread.is_alive() and not errors, errors
        assert seqs(got) == list(range(1, 501))
        assert [m["data"]["i"] for m in got] == list(range(1, 501))
        assert [m["id"] for m in got[300:]] == [r.message_id for r in live]
        assert client.barrier() == []  # and nothing after: no duplicate


# -- fan-out to several connections; online-only ------------------------------------------------


def test_two_connections_and_online_only(
    node: NodeProcess, stub: push_pb2_grpc.PushServiceStub
) -> None:
    with open_ws(node, "twice") as c1, open_ws(node, "twice") as c2:
        out = [push(stub, ["twice"], {"n": n}) for n in range(3)]
        for c in (c1, c2):
            got = c.messages(3)
            assert seqs(got) == [1, 2, 3]
            assert [m["id"] for m in got] == [r.message_id for r in out]

        online = push(stub, ["twice"], {"live": True}, ttl_seconds=0)
        assert list(online.seqs) == [] and online.message_id
        after = push(stub, ["twice"], {"n": 3})
        assert list(after.seqs) == [4]  # online-only took no seq
        for c in (c1, c2):
            live, stored = c.messages(2)
            assert live["id"] == online.message_id and live["data"] == {"live": True}
            assert "seq" not in live
            assert (stored["seq"], stored["id"]) == (4, after.message_id)

    with pytest.raises(grpc.RpcError) as info:
        stub.GetMessageStatus(
            push_pb2.GetMessageStatusRequest(message_id=online.message_id), metadata=AUTH
        )
    assert info.value.code() == grpc.StatusCode.NOT_FOUND

    with open_ws(node, "twice", since=0) as later:
        assert later.welcome["seq"] == 4
        got = later.messages(4)
        assert seqs(got) == [1, 2, 3, 4]
        assert online.message_id not in {m["id"] for m in got}
        assert later.barrier() == []


def test_online_only_pushes_one_after_another_arrive_in_their_order(
    node: NodeProcess, stub: push_pb2_grpc.PushServiceStub
) -> None:
    """Each is answered before its delivery, which the loop runs in the order the
    pushes were accepted: a caller's next push cannot overtake it, on either
    connection."""
    with open_ws(node, "inorder") as c1, open_ws(node, "inorder") as c2:
        out = [push(stub, ["inorder"], {"n": n}, ttl_seconds=0) for n in range(100)]
        for c in (c1, c2):
            got = c.messages(100)
            assert [m["id"] for m in got] == [r.message_id for r in out]
            assert [m["data"]["n"] for m in got] == list(range(100))


def test_online_only_to_offline_user_is_dropped(
    node: NodeProcess, stub: push_pb2_grpc.PushServiceStub
) -> None:
    online = push(stub, ["away"], {"live": True}, ttl_seconds=0)
    assert list(online.seqs) == []
    with open_ws(node, "away", since=0) as client:
        assert client.welcome["seq"] == 0
        assert client.barrier() == []


# -- slow consumer --------------------------------------------------------------------------------


def raw_ws_never_reading(node: NodeProcess, user: str) -> socket.socket:
    """An upgraded WebSocket on a plain socket with a tiny receive buffer, never read again."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", node.ws_port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET /ws?token={token(user)} HTTP/1.1\r\n"
            f"Host: 127.0.0.1:{node.ws_port}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)  # byte by byte: leave the frames after the head unread
        assert chunk, "connection closed during the handshake"
        head += chunk
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0].startswith("HTTP/1.1 101"), head
    accept = base64.b64encode(
        hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()
    ).decode()
    assert f"sec-websocket-accept: {accept.lower()}" in head.decode("latin-1").lower()
    return sock


def closed_4008(node: NodeProcess) -> float:
    _, text = node.admin_get("/metrics")
    for family in text_string_to_metric_families(text):
        if family.name == "pushsvc_connections_closed":
            for s in family.samples:
                if s.name.endswith("_total") and s.labels.get("code") == "4008":
                    return float(s.value)
    return 0.0


def test_slow_consumer_is_cut_and_others_flow(node_factory: Callable[..., NodeProcess]) -> None:
    node = node_factory(env={"PUSHSVC_SEND_QUEUE_SIZE": "50"})
    blob = "x" * (8192 - 20)
    with grpc.insecure_channel(node.grpc_addr) as channel:
        stub = push_pb2_grpc.PushServiceStub(channel)

        def connections(user: str) -> int:
            out = stub.GetPresence(push_pb2.GetPresenceRequest(user_ids=[user]), metadata=AUTH)
            return int(out.presence[0].connections)

        slow = raw_ws_never_reading(node, "slow")
        try:
            with open_ws(node, "fast") as fast:
                assert connections("slow") == 1
                slow_ids: list[str] = []
                fast_ids: list[str] = []
                fast_got: list[dict[str, Any]] = []
                worst = 0.0
                cut_at: int | None = None
                for i in range(4000):
                    slow_ids.append(push(stub, ["slow"], {"i": i, "pad": blob}).message_id)
                    if i % 10 == 0:
                        sent = time.monotonic()
                        fast_ids.append(push(stub, ["fast"], {"i": i}).message_id)
                        fast_got += fast.messages(1, timeout=2.0)
                        worst = max(worst, time.monotonic() - sent)
                    if i % 50 == 49 and cut_at is None and closed_4008(node) >= 1:
                        cut_at = i
                    if cut_at is not None and i >= cut_at + 100:
                        break
                assert cut_at is not None, "the slow consumer was never closed with 4008"
                wait_for(lambda: connections("slow") == 0, what="slow connection gone")
                assert connections("fast") == 1
                assert seqs(fast_got) == list(range(1, len(fast_ids) + 1))
                assert [m["id"] for m in fast_got] == fast_ids
                assert worst < 2.0
        finally:
            slow.close()

        # Everything for the slow user waits in its inbox.
        with open_ws(node, "slow", since=0) as again:
            assert again.welcome["seq"] == len(slow_ids)
            got = again.messages(len(slow_ids), timeout=20)
            assert seqs(got) == list(range(1, len(slow_ids) + 1))
            assert [m["id"] for m in got] == slow_ids
