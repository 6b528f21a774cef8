"""The public gRPC API (DESIGN §2.1) against a real node: auth, validation, every rpc."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from pushsvc_client.v1 import push_pb2, push_pb2_grpc
from tests.nodeproc import API_KEY, JWT_SECRET, NodeProcess, auth
from tests.waiting import wait_for
from tests.wsclient import open_ws

AUTH = auth()


def push(
    stub: push_pb2_grpc.PushServiceStub,
    users: list[str],
    data: Any = None,
    **fields: Any,
) -> Any:
    payload = fields.pop("payload", None)
    if payload is None:
        payload = json.dumps(data if data is not None else {"n": 0}).encode()
    return stub.Push(push_pb2.PushRequest(user_ids=users, payload=payload, **fields), metadata=AUTH)


def rpc_error(call: Callable[[], Any]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


def assert_nothing_stored(
    node: NodeProcess, stub: push_pb2_grpc.PushServiceStub, user: str
) -> None:
    """The user's inbox is empty and its counter untouched: the next push gets seq 1."""
    with open_ws(node, user, since=0) as client:
        assert client.welcome["seq"] == 0, client.welcome
        assert client.barrier() == []
        resp = push(stub, [user], {"after": True})
        assert list(resp.seqs) == [1]
        (msg,) = client.messages(1)
        assert (msg["seq"], msg["id"], msg["data"]) == (1, resp.message_id, {"after": True})


# -- authentication, health, reflection ---------------------------------------------------

BAD_METADATA: dict[str, list[tuple[str, str]] | None] = {
    "missing": None,
    "wrong-key": auth("not-the-key"),
    "basic-scheme": [("authorization", "Basic test-api-key")],
    "no-scheme": [("authorization", "test-api-key")],
}


@pytest.mark.parametrize("case", list(BAD_METADATA))
def test_unauthenticated(case: str, node: NodeProcess, stub: push_pb2_grpc.PushServiceStub) -> None:
    md = BAD_METADATA[case]
    req = push_pb2.PushRequest(user_ids=["u-auth"], payload=b"{}")
    calls: dict[str, Callable[[], Any]] = {
        "Push": lambda: stub.Push(req, metadata=md, timeout=10),
        "PushStream": lambda: list(stub.PushStream(iter([req]), metadata=md, timeout=10)),
        "Publish": lambda: stub.Publish(
            push_pb2.PublishRequest(topic="news", payload=b"{}"), metadata=md, timeout=10
        ),
        "GetPresence": lambda: stub.GetPresence(
            push_pb2.GetPresenceRequest(user_ids=["u-auth"]), metadata=md, timeout=10
        ),
    }
    for name, call in calls.items():
        err = rpc_error(call)
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED, (name, err)
        assert err.details(), name
    assert_nothing_stored(node, stub, "u-auth")


def test_health_without_key(node: NodeProcess) -> None:
    with grpc.insecure_channel(node.grpc_addr) as channel:
        resp = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=10
        )
    assert resp.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_services(node: NodeProcess) -> None:
    with grpc.insecure_channel(node.grpc_addr) as channel:
        db = ProtoReflectionDescriptorDatabase(channel)
        services = set(db.get_services())
        assert {"pushsvc.v1.PushService", "grpc.health.v1.Health"} <= services
        # The descriptors themselves come through too (what grpcurl needs).
        fd = db.FindFileContainingSymbol("pushsvc.v1.PushService")
        assert fd.package == "pushsvc.v1"
        assert any(m.name == "Push" for s in fd.service for m in s.method)


# -- validation -------------------------------------------------------------------------

MAX_TTL = 30 * 86400

INVALID_PUSHES: dict[str, tuple[dict[str, Any], str]] = {
    "empty-user-ids": ({"user_ids": []}, "user_ids"),
    "too-many-user-ids": ({"user_ids": [f"x{i}" for i in range(1001)]}, "1000"),
    "payload-over-64k": ({"payload": b'"' + b"a" * 65535 + b'"'}, "payload"),
    "json-not-json": ({"payload": b"{not json", "content_type": "application/json"}, "JSON"),
    "default-type-not-json": ({"payload": b"hello"}, "JSON"),
    "text-not-utf8": ({"payload": b"\xff\xfe\xfa", "content_type": "text/plain"}, "UTF-8"),
    "ttl-over-max": ({"ttl_seconds": MAX_TTL + 1}, "ttl"),
    "idempotency-key-too-long": ({"idempotency_key": "k" * 257}, "idempotency_key"),
}


@pytest.mark.parametrize("case", list(INVALID_PUSHES))
def test_push_invalid_argument_stores_nothing(
    case: str, node: NodeProcess, stub: push_pb2_grpc.PushServiceStub
) -> None:
    fields, word = INVALID_PUSHES[case]
    user = f"u-{case}"
    req: dict[str, Any] = {"user_ids": [user], "payload": b'{"ok":1}'}
    if case == "too-many-user-ids":
        req["user_ids"] = [user, *fields["user_ids"][1:]]  # the watched user among 1,001
    else:
        req.update(fields)
    err = rpc_error(lambda: stub.Push(push_pb2.PushRequest(**req), metadata=AUTH, timeout=10))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err
    assert word.lower() in (err.details() or "").lower(), err.details()
    assert_nothing_stored(node, stub, user)


def test_payload_limit_boundary(node: NodeProcess, stub: push_pb2_grpc.PushServiceStub) -> None:
    exactly = b'"' + b"a" * (65536 - 2) + b'"'
    resp = stub.Push(
        push_pb2.PushRequest(user_ids=["u-big"], payload=exactly), metadata=AUTH, timeout=10
    )
    assert list(resp.seqs) == [1]


def test_max_payload_setting_lowers_limit(node_factory: Callable[..., NodeProcess]) -> None:
    node = node_factory(env={"PUSHSVC_MAX_PAYLOAD_BYTES": "1024"})
    with grpc.insecure_channel(node.grpc_addr) as channel:
        stub = push_pb2_grpc.PushServiceStub(channel)
        over = b'"' + b"a" * 1023 + b'"'  # 1,025 bytes
        err = rpc_error(
            lambda: stub.Push(
                push_pb2.PushRequest(user_ids=["u-small"], payload=over), metadata=AUTH
            )
        )
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "1024" in (err.details() or "")
        assert_nothing_stored(node, stub, "u-small")
        at = b'"' + b"a" * 1022 + b'"'  # exactly 1,024 bytes
        resp = stub.Push(push_pb2.PushRequest(user_ids=["u-small"], payload=at), metadata=AUTH)
        assert list(resp.seqs) == [2]


@pytest.mark.parametrize(("topic", "word"), [("", "empty"), ("bad topic!", "malformed")])
def test_publish_invalid_topic(
    topic: str, word: str, node: NodeProcess, stub: push_pb2_grpc.PushServiceStub
) -> None:
    err = rpc_error(
        lambda: stub.Publish(
            push_pb2.PublishRequest(topic=topic, payload=b"{}"), metadata=AUTH, timeout=10
        )
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert word in (err.details() or ""), err.details()


# -- Push, GetMessageStatus ----------------------------------------------------------------


def test_push_seqs_per_user(node: NodeProcess, stub: push_pb2_grpc.PushServiceStub) -> None:
    r1 = push(stub, ["a", "b"])
    r2 = push(stub, ["b", "c"])
    r3 = push(stub, ["a", "b", "c"])
    r4 = push(stub, ["c"])
    assert [list(r.seqs) for r in (r1, r2, r3, r4)] == [[1, 1], [2, 1], [2, 3, 2], [3]]
    ids = {r.message_id for r in (r1, r2, r3, r4)}
    assert len(ids) == 4 and all(ids)
    assert not any(r.duplicate for r in (r1, r2, r3, r4))


def test_message_status_lifecycle(node: NodeProcess, stub: push_pb2_grpc.PushServiceStub) -> None:
    push(stub, ["s1"])  # s1 is one ahead of s2
    resp = push(stub, ["s1", "s2"], {"hello": "status"})
    assert list(resp.seqs) == [2, 1]

    def status() -> dict[str, tuple[int, bool, bool]]:
        out = stub.GetMessageStatus(
            push_pb2.GetMessageStatusRequest(message_id=resp.message_id), metadata=AUTH
        )
        return {r.user_id: (r.seq, r.delivered, r.acked) for r in out.recipients}

    assert status() == {"s1": (2, False, False), "s2": (1, False, False)}

    with open_ws(node, "s2") as client:
        (msg,) = client.messages(1)
        assert (msg["id"], msg["seq"], msg["data"]) == (resp.message_id, 1, {"hello": "status"})
        wait_for(lambda: status()["s2"] == (1, True, False), what="delivered receipt")
        assert status()["s1"] == (2, False, False)
        client.send({"type": "ack", "seq": 1})
        wait_for(lambda: status()["s2"] == (1, True, True), what="ack stored")
    assert status()["s1"] == (2, False, False)


def test_message_status_unknown_id(stub: push_pb2_grpc.PushServiceStub) -> None:
    err = rpc_error(
        lambda: stub.GetMessageStatus(
            push_pb2.GetMessageStatusRequest(message_id="0" * 26), metadata=AUTH, timeout=10
        )
    )
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert err.details()


# -- idempotency -------------------------------------------------------------------------


def test_idempotency_key(node: NodeProcess, stub: push_pb2_grpc.PushServiceStub) -> None:
    with open_ws(node, "idem") as client:
        first = push(stub, ["idem"], {"n": 1}, idempotency_key="order-17")
        again = push(stub, ["idem"], {"n": 1}, idempotency_key="order-17")
        third = push(stub, ["idem"], {"n": 3}, idempotency_key="order-18")
        assert (list(first.seqs), first.duplicate) == ([1], False)
        assert (again.message_id, again.duplicate) == (first.message_id, True)
        assert (list(third.seqs), third.duplicate) == ([2], False)
        got = client.messages(2)
        assert [(m["seq"], m["id"]) for m in got] == [
            (1, first.message_id),
            (2, third.message_id),
        ]


# -- PushStream ----------------------------------------------------------------------------


def test_push_stream(node: NodeProcess, stub: push_pb2_grpc.PushServiceStub) -> None:
    bad_at = 100

    def requests() -> Iterator[push_pb2.PushRequest]:
        for i in range(200):
            payload = b"{broken" if i == bad_at else json.dumps({"i": i}).encode()
            yield push_pb2.PushRequest(user_ids=["streamer"], payload=payload)

    with open_ws(node, "streamer") as client:
        responses = list(stub.PushStream(requests(), metadata=AUTH, timeout=60))
        assert len(responses) == 200
        bad = responses[bad_at]
        assert bad.HasField("error")
        assert bad.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0] == 3
        assert "JSON" in bad.error.message
        assert bad.message_id == "" and list(bad.seqs) == []
        good = [r for i, r in enumerate(responses) if i != bad_at]
        assert not any(r.HasField("error") for r in good)
        assert [list(r.seqs) for r in good] == [[s] for s in range(1, 200)]
        msgs = client.messages(199, timeout=10)
    assert [m["seq"] for m in msgs] == list(range(1, 200))
    assert [m["data"]["i"] for m in msgs] == [i for i in range(200) if i != bad_at]
    assert [m["id"] for m in msgs] == [r.message_id for r in good]


def test_push_stream_mixing_online_only_and_stored_keeps_order(
    node: NodeProcess, stub: push_pb2_grpc.PushServiceStub
) -> None:
    """Online-only and stored requests in one stream: answers and deliveries follow
    the requests' order, and only the stored ones take seqs."""
    mix = random.Random(9)
    ttls = [mix.choice([0, 0, 0, 60]) for _ in range(300)]

    def requests() -> Iterator[push_pb2.PushRequest]:
        for i, ttl in enumerate(ttls):
            payload = json.dumps({"i": i}).encode()
            yield push_pb2.PushRequest(user_ids=["mixer"], payload=payload, ttl_seconds=ttl)

    with open_ws(node, "mixer") as client:
        responses = list(stub.PushStream(requests(), metadata=AUTH, timeout=60))
        msgs = client.messages(len(ttls), timeout=30)
        assert client.barrier() == []
    assert not any(r.HasField("error") for r in responses)
    assert [m["data"]["i"] for m in msgs] == list(range(len(ttls)))
    assert [m["id"] for m in msgs] == [r.message_id for r in responses]
    stored = [list(r.seqs) for r, ttl in zip(responses, ttls, strict=True) if ttl]
    assert stored == [[s] for s in range(1, len(stored) + 1)]
    assert all(not r.seqs for r, ttl in zip(responses, ttls, strict=True) if not ttl)


def test_push_stream_is_charged_per_message(node_factory: Callable[..., NodeProcess]) -> None:
    node = node_factory(env={"PUSHSVC_API_RATE": "0.001", "PUSHSVC_API_BURST": "3"})
    pushes = [push_pb2.PushRequest(user_ids=["u"], payload=b"{}", ttl_seconds=0)] * 5
    with node.stub() as stub:
        out = list(stub.PushStream(iter(pushes), metadata=AUTH, timeout=30))
    codes = [x.error.code for x in out]
    limited = grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    assert codes == [0, 0, 0, limited, limited], codes


def test_push_batch_answers_each_push_on_its_own(
    node: NodeProcess, stub: push_pb2_grpc.PushServiceStub
) -> None:
    pushes = [
        push_pb2.PushRequest(user_ids=["batcher"], payload=b'{"i":0}'),
        push_pb2.PushRequest(user_ids=["batcher"], payload=b"{broken"),
        push_pb2.PushRequest(user_ids=["batcher", "other"], payload=b'{"i":2}', ttl_seconds=0),
        push_pb2.PushRequest(user_ids=["batcher"], payload=b'{"i":3}', idempotency_key="b-3"),
        push_pb2.PushRequest(user_ids=["batcher"], payload=b'{"i":4}', idempotency_key="b-3"),
        push_pb2.PushRequest(user_ids=[], payload=b"{}"),
    ]
    with open_ws(node, "batcher") as client:
        out = stub.PushBatch(push_pb2.PushBatchRequest(pushes=pushes), metadata=AUTH, timeout=30)
        r = list(out.responses)
        assert len(r) == len(pushes)
        assert [x.HasField("error") for x in r] == [False, True, False, False, False, True]
        assert r[1].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        assert "JSON" in r[1].error.message
        assert list(r[0].seqs) == [1] and list(r[2].seqs) == [] and list(r[3].seqs) == [2]
        # The same idempotency key twice in one batch: stored once.
        assert r[4].duplicate and r[4].message_id == r[3].message_id
        assert list(r[4].seqs) == [2] and not r[3].duplicate
        msgs = client.messages(3, timeout=30)
        assert client.barrier() == []
    assert [m["data"]["i"] for m in msgs] == [0, 2, 3]
    assert [m.get("seq") for m in msgs] == [1, None, 2]


def test_push_batch_size_is_bounded(stub: push_pb2_grpc.PushServiceStub) -> None:
    for n in (0, 1001):
        pushes = [push_pb2.PushRequest(user_ids=["u"], payload=b"{}")] * n
        with pytest.raises(grpc.RpcError) as info:
            stub.PushBatch(push_pb2.PushBatchRequest(pushes=pushes), metadata=AUTH, timeout=30)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "1 to 1000" in (info.value.details() or "")


def test_push_batch_is_charged_per_push(node_factory: Callable[..., NodeProcess]) -> None:
    node = node_factory(env={"PUSHSVC_API_RATE": "0.001", "PUSHSVC_API_BURST": "3"})
    pushes = [push_pb2.PushRequest(user_ids=["u"], payload=b"{}", ttl_seconds=0)] * 5
    with node.stub() as stub:
        out = stub.PushBatch(push_pb2.PushBatchRequest(pushes=pushes), metadata=AUTH, timeout=30)
    codes = [x.error.code for x in out.responses]
    limited = grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    assert codes == [0, 0, 0, limited, limited], codes


# -- Publish, presence, disconnect, nodes --------------------------------------------------


def test_publish_counts_local_subscribers(
    node: NodeProcess, stub: push_pb2_grpc.PushServiceStub
) -> None:
    def publish(topic: str, data: Any) -> Any:
        return stub.Publish(
            push_pb2.PublishRequest(topic=topic, payload=json.dumps(data).encode()),
            metadata=AUTH,
            timeout=10,
        )

    assert publish("news", {"nobody": 1}).local_subscribers == 0
    with (
        open_ws(node, "reader1", topics=["news*"]) as c1,
        open_ws(node, "reader2", topics=["news*"]) as c2,
    ):
        for c in (c1, c2):
            c.send({"type": "subscribe", "topic": "news"})
            assert c.recv() == {"type": "subscribed", "topic": "news"}
        resp = publish("news", {"headline": 1})
        assert resp.local_subscribers == 2 and resp.message_id
        for c in (c1, c2):
            frame = c.recv()
            assert frame["type"] == "message" and frame["topic"] == "news"
            assert (frame["id"], frame["data"]) == (resp.message_id, {"headline": 1})
            assert "seq" not in frame
        assert publish("other", {"x": 1}).local_subscribers == 0


def test_presence_and_disconnect(node: NodeProcess, stub: push_pb2_grpc.PushServiceStub) -> None:
    def presence(*users: str) -> list[tuple[str, bool, int, list[str]]]:
        out = stub.GetPresence(push_pb2.GetPresenceRequest(user_ids=users), metadata=AUTH)
        return [(p.user_id, p.online, p.connections, list(p.node_ids)) for p in out.presence]

    with open_ws(node, "kicked") as c1, open_ws(node, "kicked") as c2:
        node_id = c1.welcome["node"]
        assert presence("kicked", "ghost") == [
            ("kicked", True, 2, [node_id]),
            ("ghost", False, 0, []),
        ]
        resp = stub.Disconnect(
            push_pb2.DisconnectRequest(user_id="kicked", reason="account closed"), metadata=AUTH
        )
        assert resp.connections_closed == 2
        for c in (c1, c2):
            code, reason = c.close_code()
            assert code is not None
            assert (code, reason) == (4000, "account closed")
    wait_for(lambda: presence("kicked") == [("kicked", False, 0, [])], what="kicked offline")
    again = stub.Disconnect(push_pb2.DisconnectRequest(user_id="kicked"), metadata=AUTH)
    assert again.connections_closed == 0


def test_list_nodes(node_factory: Callable[..., NodeProcess]) -> None:
    node = node_factory(env={"PUSHSVC_HEARTBEAT_INTERVAL": "0.2"})
    with grpc.insecure_channel(node.grpc_addr) as channel:
        stub = push_pb2_grpc.PushServiceStub(channel)

        def listed() -> list[tuple[str, int]]:
            out = stub.ListNodes(push_pb2.ListNodesRequest(), metadata=AUTH, timeout=10)
            return [(n.node_id, n.connections) for n in out.nodes]

        first = stub.ListNodes(push_pb2.ListNodesRequest(), metadata=AUTH).nodes
        assert [n.node_id for n in first] == [node.node_id]
        assert first[0].grpc_addr.endswith(f":{node.grpc_port}")
        assert first[0].ws_addr.endswith(f":{node.ws_port}")
        assert abs(first[0].started_at - time.time()) < 120
        with open_ws(node, "lister"), open_ws(node, "lister2"):
            wait_for(lambda: listed() == [(node.node_id, 2)], what="2 connections listed")
        wait_for(lambda: listed() == [(node.node_id, 0)], what="0 connections listed")


# -- rate limit ----------------------------------------------------------------------------


def test_rate_limit(node_factory: Callable[..., NodeProcess]) -> None:
    node = node_factory(env={"PUSHSVC_API_RATE": "5", "PUSHSVC_API_BURST": "5"})
    with grpc.insecure_channel(node.grpc_addr) as channel:
        stub = push_pb2_grpc.PushServiceStub(channel)
        outcomes: list[Any] = []
        started = time.monotonic()
        for i in range(20):
            try:
                outcomes.append(push(stub, ["limited"], {"i": i}))
            except grpc.RpcError as err:
                outcomes.append(err)
        elapsed = time.monotonic() - started
    ok = [o for o in outcomes if not isinstance(o, grpc.RpcError)]
    refused = [o for o in outcomes if isinstance(o, grpc.RpcError)]
    assert all(not isinstance(o, grpc.RpcError) for o in outcomes[:5]), outcomes[:5]
    assert isinstance(outcomes[5], grpc.RpcError), "the 6th rapid push was not refused"
    assert len(ok) <= 5 + int(5 * elapsed) + 1
    for refusal in refused:
        assert refusal.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, refusal
        assert "rate" in (refusal.details() or "")
    # Only the accepted pushes were stored, with consecutive seqs.
    assert [list(r.seqs) for r in ok] == [[s] for s in range(1, len(ok) + 1)]
    with open_ws(node, "limited", since=0) as client:
        assert client.welcome["seq"] == len(ok)
        got = client.messages(len(ok))
        assert [m["id"] for m in got] == [r.message_id for r in ok]
        assert client.barrier() == []


# -- requests that are not their message, and a port that cannot be bound ------------------

# Raw request bytes, sent as they are (a generic call with the identity serializer).
UNDECODABLE = {
    # user_ids (field 1, a string) holding bytes that are not UTF-8
    "invalid UTF-8 in a string": b"\x0a\x05u-raw\x0a\x02\xff\xfe",
    # payload (field 2) announces 16 bytes and carries 2
    "truncated": b"\x0a\x05u-raw\x12\x10{}",
    "garbage": b"\xff\xff\xff\xff\xff\xff",
}


def _raw_unary(channel: grpc.Channel, method: str) -> Callable[..., bytes]:
    call: Callable[..., bytes] = channel.unary_unary(
        method, request_serializer=None, response_deserializer=None
    )
    return call


def test_an_undecodable_request_ends_a_stream_after_those_before_it(
    node: NodeProcess, stub: push_pb2_grpc.PushServiceStub
) -> None:
    """In a ``PushStream`` (screened on the thread that reads it): the requests
    before it are answered, the stream ends INVALID_ARGUMENT, nothing after it is
    pushed, and the node serves on without a traceback in its log."""
    good = push_pb2.PushRequest(
        user_ids=["u-undecodable"], payload=b'{"n":1}', content_type="application/json"
    ).SerializeToString()
    with grpc.insecure_channel(node.grpc_addr) as channel:
        call = channel.stream_stream(
            "/pushsvc.v1.PushService/PushStream",
            request_serializer=None,
            response_deserializer=None,
        )
        for case, data in UNDECODABLE.items():
            answers: list[bytes] = []
            responses = call(iter([good, good, data, good]), metadata=tuple(AUTH), timeout=30)
            err = rpc_error(lambda r=responses, a=answers: a.extend(r))  # type: ignore[misc]
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (case, err)
            assert "not a valid protobuf message" in str(err.details()), err.details()
            ids = [push_pb2.PushResponse.FromString(a).message_id for a in answers]
            assert len(ids) == 2 and all(ids), (case, ids)
    assert push(stub, ["u-undecodable"]).message_id
    log = node.log()
    refused = "rpc refused rpc=pushsvc.v1.PushService/PushStream code=INVALID_ARGUMENT why=decode"
    assert log.count(refused) >= len(UNDECODABLE), log[-3000:]  # each refusal logged
    assert "Traceback" not in log, log[-3000:]


def test_undecodable_requests_answer_invalid_argument(
    node: NodeProcess, stub: push_pb2_grpc.PushServiceStub
) -> None:
    """Not INTERNAL (grpcio's default, as if the node had failed): the caller's mistake."""
    with grpc.insecure_channel(node.grpc_addr) as channel:
        for case, data in UNDECODABLE.items():
            for method in ("/pushsvc.v1.PushService/Push", "/pushsvc.v1.PushService/GetPresence"):
                call = _raw_unary(channel, method)
                err = rpc_error(lambda c=call, d=data: c(d, metadata=AUTH, timeout=10))  # type: ignore[misc]
                assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (case, method, err)
                assert "not a valid protobuf message" in str(err.details()), err.details()
        # Health (no key needed) decodes the same way.
        health_check = _raw_unary(channel, "/grpc.health.v1.Health/Check")
        err = rpc_error(lambda: health_check(UNDECODABLE["garbage"], timeout=10))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        # Without a key, the answer is about the key.
        push_raw = _raw_unary(channel, "/pushsvc.v1.PushService/Push")
        err = rpc_error(lambda: push_raw(UNDECODABLE["garbage"], timeout=10))
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED
        # A stream: the good request is answered, the bad one ends the stream.
        stream = channel.stream_stream(
            "/pushsvc.v1.PushService/PushStream",
            request_serializer=None,
            response_deserializer=push_pb2.PushResponse.FromString,
        )
        good = push_pb2.PushRequest(user_ids=["u-stream"], payload=b"{}").SerializeToString()
        requests = iter([good, UNDECODABLE["garbage"]])
        responses = iter(stream(requests, metadata=tuple(AUTH), timeout=10))
        first = next(responses)
        assert list(first.seqs) == [1] and not first.HasField("error")
        err = rpc_error(lambda: next(responses))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err
    assert_nothing_stored(node, stub, "u-raw")
    log = node.log()
    assert "Exception deserializing" not in log and "rpc failed" not in log


def _serve_with(env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("PUSHSVC_")}
    full.update(
        PUSHSVC_WS_ADDR="127.0.0.1:0",
        PUSHSVC_ADMIN_ADDR="127.0.0.1:0",
        PUSHSVC_DATA_DIR=str(tmp_path / "data"),
        PUSHSVC_API_KEYS=API_KEY,
        PUSHSVC_JWT_SECRET=JWT_SECRET,
        **env,
    )
    return subprocess.run(
        [sys.executable, "-m", "pushsvc", "serve"],
        env=full,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_grpc_port_that_cannot_be_bound_stops_the_node(node: NodeProcess, tmp_path: Path) -> None:
    """The same one line and exit code 2 as the other listeners, without gRPC's own
    line: the port in use (by the running node), and an address not on this host."""
    cases = {
        node.grpc_addr: "Address already in use",
        "192.0.2.1:50051": "Cannot assign requested address",  # TEST-NET-1: not on this host
    }
    for addr, why in cases.items():
        proc = _serve_with({"PUSHSVC_GRPC_ADDR": addr}, tmp_path)
        assert proc.returncode == 2, (addr, proc.stdout, proc.stderr)
        line = f"pushsvc: error: cannot listen on PUSHSVC_GRPC_ADDR {addr}: {why}"
        assert proc.stderr.splitlines() == [line], proc.stderr
