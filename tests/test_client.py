"""``pushsvc_client.PushClient`` against a real node: every method and the typed errors."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Iterator

import grpc
import pytest
from websockets.sync.client import connect

from pushsvc.auth import mint_token
from pushsvc_client import (
    InvalidArgumentError,
    NotFoundError,
    PushClient,
    PushClientError,
    ResourceExhaustedError,
    UnauthenticatedError,
    UnavailableError,
    encode_payload,
)
from pushsvc_client.v1 import push_pb2
from tests.nodeproc import API_KEY, JWT_SECRET, NodeProcess, closed_port
from tests.waiting import wait_for
from tests.wsclient import Client, open_ws


@pytest.fixture
def client(node: NodeProcess) -> Iterator[PushClient]:
    with PushClient(node.grpc_addr, API_KEY) as push:
        yield push


# -- every method -------------------------------------------------------------------------


def test_push_payload_kinds(node: NodeProcess, client: PushClient, clients: list[Client]) -> None:
    alice, bob = open_ws(node, "alice"), open_ws(node, "bob")
    clients += [alice, bob]

    as_dict = client.push(["alice", "bob"], {"hello": [1, "two"], "ü": None})
    assert list(as_dict.seqs) == [1, 1] and not as_dict.duplicate and as_dict.message_id
    as_str = client.push("alice", "plain words", content_type="text/plain")
    as_bytes = client.push("alice", b"\x00\xffbin", content_type="application/octet-stream")
    json_str = client.push("alice", '"a JSON string"')
    online = client.push("alice", [1, 2], ttl_seconds=0)
    assert list(online.seqs) == [] and online.message_id

    got = alice.messages(5)
    assert [(m["id"], m.get("seq")) for m in got] == [
        (as_dict.message_id, 1),
        (as_str.message_id, 2),
        (as_bytes.message_id, 3),
        (json_str.message_id, 4),
        (online.message_id, None),
    ]
    assert got[0]["data"] == {"hello": [1, "two"], "ü": None}
    assert (got[1]["content_type"], got[1]["data"]) == ("text/plain", "plain words")
    assert got[2]["content_type"] == "application/octet-stream"
    assert base64.b64decode(got[2]["data_b64"]) == b"\x00\xffbin"
    assert got[3]["data"] == "a JSON string"
    assert got[4]["data"] == [1, 2] and "seq" not in got[4]
    (for_bob,) = bob.messages(1)
    assert (for_bob["id"], for_bob["seq"]) == (as_dict.message_id, 1)
    assert alice.barrier() == [] and bob.barrier() == []


def test_push_idempotency_key(node: NodeProcess, client: PushClient, clients: list[Client]) -> None:
    ws = open_ws(node, "carol")
    clients.append(ws)
    first = client.push("carol", {"n": 1}, idempotency_key="invoice-1")
    again = client.push("carol", {"n": "ignored"}, idempotency_key="invoice-1")
    assert again.duplicate and again.message_id == first.message_id
    # without a key, each call gets a fresh one: two pushes, two messages
    third = client.push("carol", {"n": 1})
    fourth = client.push("carol", {"n": 1})
    assert not third.duplicate and not fourth.duplicate
    assert [m["id"] for m in ws.messages(3)] == [
        first.message_id,
        third.message_id,
        fourth.message_id,
    ]
    assert ws.barrier() == []


def test_push_batch(node: NodeProcess, client: PushClient, clients: list[Client]) -> None:
    ws = open_ws(node, "fay")
    clients.append(ws)
    build = PushClient.build_push_request
    responses = client.push_batch(
        [
            build("fay", {"i": 0}, idempotency_key="b-0"),
            build("fay", b"{not json", idempotency_key="b-1"),
            build("fay", {"i": 2}, idempotency_key="b-2"),
        ]
    )
    ok, bad, second = responses
    assert list(ok.seqs) == [1] and list(second.seqs) == [2]
    assert bad.HasField("error") and bad.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert [m["data"]["i"] for m in ws.messages(2)] == [0, 2]
    # The same keys again (a retry): nothing is delivered twice.
    again = client.push_batch([build("fay", {"i": 0}, idempotency_key="b-0")])
    assert again[0].duplicate and again[0].message_id == ok.message_id
    assert ws.barrier() == []


def test_push_stream(node: NodeProcess, client: PushClient, clients: list[Client]) -> None:
    ws = open_ws(node, "dave")
    clients.append(ws)
    build = PushClient.build_push_request
    requests = [
        build("dave", {"i": 0}),
        build("dave", b"{not json"),  # fails alone; the stream goes on
        build(["dave", "erin"], "text", content_type="text/plain", idempotency_key="s-1"),
        build("dave", {"i": 3}, ttl_seconds=0),
        build("dave", {"ignored": True}, idempotency_key="s-1"),
    ]
    responses = list(client.push_stream(requests, timeout=10))
    assert len(responses) == 5
    ok, bad, pair, online, dup = responses
    assert list(ok.seqs) == [1] and not ok.HasField("error")
    assert bad.HasField("error") and not bad.message_id
    assert bad.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "JSON" in bad.error.message
    assert list(pair.seqs) == [2, 1]
    assert list(online.seqs) == []
    assert dup.duplicate and dup.message_id == pair.message_id
    got = ws.messages(3)
    assert [m["id"] for m in got] == [ok.message_id, pair.message_id, online.message_id]
    assert [m.get("seq") for m in got] == [1, 2, None]
    assert ws.barrier() == []


def test_build_push_request() -> None:
    request = PushClient.build_push_request("u", {"a": 1})
    assert list(request.user_ids) == ["u"]
    assert request.payload == b'{"a":1}'
    assert request.content_type == "application/json"
    assert not request.HasField("ttl_seconds")
    assert request.idempotency_key == ""  # push() adds one; the stream request does not
    assert PushClient.build_push_request("u", {}, ttl_seconds=0).HasField("ttl_seconds")
    with pytest.raises(ValueError, match="ttl_seconds"):
        PushClient.build_push_request("u", {}, ttl_seconds=-1)
    assert encode_payload(bytearray(b"x")) == b"x"
    assert encode_payload(memoryview(b"y")) == b"y"
    assert encode_payload("é") == "é".encode()
    with pytest.raises(TypeError, match="JSON-serializable"):
        encode_payload({"s": {1, 2}})
    with pytest.raises(ValueError):
        PushClient("127.0.0.1:1", None, timeout=0)
    with pytest.raises(ValueError):
        PushClient("127.0.0.1:1", None, retries=-1)


def test_publish(node: NodeProcess, client: PushClient, clients: list[Client]) -> None:
    subs = [open_ws(node, f"reader{i}", topics=["news.*"]) for i in range(2)]
    clients += subs
    for ws in subs:
        ws.send({"type": "subscribe", "topic": "news.eu"})
        assert ws.recv() == {"type": "subscribed", "topic": "news.eu"}
    resp = client.publish("news.eu", {"headline": "x"})
    assert resp.local_subscribers == 2 and resp.message_id
    for ws in subs:
        (msg,) = ws.messages(1)
        assert (msg["id"], msg["topic"], msg["data"]) == (
            resp.message_id,
            "news.eu",
            {"headline": "x"},
        )
    assert client.publish("news.us", b"raw", content_type="text/plain").local_subscribers == 0
    assert all(ws.barrier() == [] for ws in subs)


def test_presence_and_disconnect(
    node: NodeProcess, client: PushClient, clients: list[Client]
) -> None:
    a1, a2, other = open_ws(node, "alice"), open_ws(node, "alice"), open_ws(node, "zed")
    clients += [a1, a2, other]
    resp = client.presence(["nobody", "alice"])
    assert [(p.user_id, p.online, p.connections, list(p.node_ids)) for p in resp.presence] == [
        ("nobody", False, 0, []),
        ("alice", True, 2, [node.node_id]),
    ]
    assert client.presence("zed").presence[0].connections == 1

    assert client.disconnect("alice", reason="bye").connections_closed == 2
    assert a1.close_code() == (4000, "bye")
    assert a2.close_code() == (4000, "bye")
    assert other.barrier() == []
    wait_for(lambda: not client.presence("alice").presence[0].online, what="alice offline")
    assert client.disconnect("alice").connections_closed == 0


def test_message_status(node: NodeProcess, client: PushClient, clients: list[Client]) -> None:
    ws = open_ws(node, "erin")
    clients.append(ws)
    resp = client.push(["erin", "frank"], {"n": 1})

    def states() -> dict[str, tuple[int, bool, bool]]:
        status = client.message_status(resp.message_id)
        return {r.user_id: (r.seq, r.delivered, r.acked) for r in status.recipients}

    assert states()["frank"] == (1, False, False)
    (msg,) = ws.messages(1)
    wait_for(lambda: states()["erin"] == (1, True, False), what="erin delivered")
    ws.send({"type": "ack", "seq": msg["seq"]})
    final = wait_for(lambda: (s := states())["erin"] == (1, True, True) and s, what="erin acked")
    assert final == {"erin": (1, True, True), "frank": (1, False, False)}


def test_stream_receipts_and_resume(
    node: NodeProcess, client: PushClient, clients: list[Client]
) -> None:
    ws = open_ws(node, "gina")
    clients.append(ws)
    DELIVERED, ACKED = push_pb2.RECEIPT_KIND_DELIVERED, push_pb2.RECEIPT_KIND_ACKED
    with client.stream_receipts() as stream:  # this API key's messages
        start = stream.wait_started()
        assert start.startswith("r1.") and stream.cursor == start
        first = client.push("gina", {"n": 1})
        (msg,) = ws.messages(1)
        ws.send({"type": "ack", "seq": msg["seq"]})
        got = [next(stream), next(stream)]
        assert [(e.kind, e.message_id, e.user_id, e.seq) for e in got] == [
            (DELIVERED, first.message_id, "gina", 1),
            (ACKED, first.message_id, "gina", 1),
        ]
        cursor = stream.cursor
        assert cursor == got[-1].cursor

    second = client.push("gina", {"n": 2})  # while no stream is open
    ws.messages(1)
    ws.send({"type": "ack", "seq": 2})
    with client.stream_receipts("gina", cursor=cursor) as resumed:
        assert [(e.kind, e.message_id) for e in (next(resumed), next(resumed))] == [
            (DELIVERED, second.message_id),
            (ACKED, second.message_id),
        ]
    with pytest.raises(InvalidArgumentError, match="cursor is malformed"):
        client.stream_receipts(cursor="nope").wait_started()


def test_revoke_token(node: NodeProcess, client: PushClient) -> None:
    token = mint_token(JWT_SECRET, "hal", 3600, jti="jti-hal")
    ws = Client(connect(f"{node.ws_url}?token={token}", open_timeout=10, legacy=True))
    resp = client.revoke_token("jti-hal", time.time() + 3600, reason="bye")
    assert resp.connections_closed == 1
    assert ws.close_code() == (4001, "token revoked: bye")
    with pytest.raises(InvalidArgumentError, match="expires_at must be in the future"):
        client.revoke_token("jti-hal", time.time() - 10)


def test_list_nodes_and_health(node: NodeProcess, client: PushClient) -> None:
    (listed,) = client.list_nodes().nodes
    assert listed.node_id == node.node_id
    assert listed.grpc_addr == node.grpc_addr
    assert listed.ws_addr.endswith(f":{node.ws_port}")
    assert time.time() - 120 < listed.started_at <= time.time()
    assert client.health() == "SERVING"  # the node registers the whole server, ""


# -- typed errors -------------------------------------------------------------------------


def test_invalid_argument(node: NodeProcess, client: PushClient, clients: list[Client]) -> None:
    for call in (
        lambda: client.push("u", b"{not json"),
        lambda: client.push([], {}),
        lambda: client.publish("bad topic!", {}),
        lambda: client.presence([]),
        lambda: client.message_status(""),
    ):
        with pytest.raises(InvalidArgumentError) as err:
            call()
        assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert err.value.code_name == "INVALID_ARGUMENT"
        assert err.value.message
        assert isinstance(err.value, PushClientError)
    # the refused push stored nothing
    ws = open_ws(node, "u", since=0)
    clients.append(ws)
    assert ws.welcome["seq"] == 0 and ws.barrier() == []


def test_unauthenticated(node: NodeProcess) -> None:
    for key in ("wrong-key", None):
        with PushClient(node.grpc_addr, key, retries=5) as bad:
            started = time.monotonic()
            with pytest.raises(UnauthenticatedError) as err:
                bad.push("u", {})
            assert time.monotonic() - started < 2  # not retried
            assert err.value.code_name == "UNAUTHENTICATED"
            with pytest.raises(UnauthenticatedError):
                list(bad.push_stream([PushClient.build_push_request("u", {})], timeout=5))
            assert bad.health() == "SERVING"  # health needs no key


def test_not_found(client: PushClient) -> None:
    with pytest.raises(NotFoundError) as err:
        client.message_status("no-such-message")
    assert err.value.code == grpc.StatusCode.NOT_FOUND
    online = client.push("u", {}, ttl_seconds=0)  # never stored: no status either
    with pytest.raises(NotFoundError):
        client.message_status(online.message_id)


def test_status_without_details_gives_a_one_line_message(client: PushClient) -> None:
    # The health service answers an unknown service name with NOT_FOUND and no details.
    with pytest.raises(NotFoundError) as err:
        client.health("no.such.Service")
    assert err.value.code == grpc.StatusCode.NOT_FOUND
    assert "\n" not in err.value.message, err.value.message
    assert "_InactiveRpcError" not in str(err.value)


def test_resource_exhausted(node_factory: Callable[..., NodeProcess]) -> None:
    node = node_factory(env={"PUSHSVC_API_RATE": "0.01", "PUSHSVC_API_BURST": "1"})
    with PushClient(node.grpc_addr, API_KEY, retries=3) as client:
        client.push("u", {})
        with pytest.raises(ResourceExhaustedError) as err:
            client.push("u", {})
    assert "rate" in err.value.message


def test_unreachable_node_fails_fast() -> None:
    addr = f"127.0.0.1:{closed_port()}"
    with PushClient(addr, API_KEY, timeout=2, retries=2, backoff=0.05) as client:
        started = time.monotonic()
        with pytest.raises(UnavailableError) as err:
            client.push("u", {})
        elapsed = time.monotonic() - started
        assert err.value.unreachable, err.value.message
        assert elapsed < 5, elapsed  # 3 attempts, short backoff, no hang
        with pytest.raises(UnavailableError) as err2:
            list(
                client.push_stream([push_pb2.PushRequest(user_ids=["u"], payload=b"{}")], timeout=2)
            )
        assert err2.value.unreachable
