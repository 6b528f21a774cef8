"""The WebSocket contract (DESIGN.md §2.2) against real `pushsvc serve` nodes.

Handshake refusals happen before the upgrade; frames are policed without
disturbing the connection or the node; limits, heartbeats, abuse and the
Disconnect API close with the documented codes.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import socket
import struct
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import jwt
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection, connect

from pushsvc.auth import mint_token
from pushsvc_client.v1 import push_pb2, push_pb2_grpc
from tests import rawws
from tests.nodeproc import JWT_SECRET, NodeProcess, auth
from tests.rawws import RawWS
from tests.wsclient import Client, open_ws, token

pytestmark = pytest.mark.timeout(60)

HOST = "127.0.0.1"


# -- fixtures and helpers ----------------------------------------------------------------


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    """One default node for the tests that only need defaults (each uses its own users)."""
    proc = NodeProcess(tmp_path_factory.mktemp("ws") / "shared")
    proc.start()
    yield proc
    if proc.proc is not None and proc.proc.poll() is None:
        proc.kill()


@pytest.fixture(scope="module")
def shared_stub(shared: NodeProcess) -> Iterator[push_pb2_grpc.PushServiceStub]:
    channel = grpc.insecure_channel(shared.grpc_addr)
    yield push_pb2_grpc.PushServiceStub(channel)
    channel.close()


def new_user(prefix: str = "u") -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def ws_connect(
    node: NodeProcess, query: str = "", headers: dict[str, str] | None = None, **kw: Any
) -> ClientConnection:
    url = node.ws_url + (f"?{query}" if query else "")
    return connect(url, open_timeout=10, additional_headers=headers, proxy=None, **kw)


def refusal(
    node: NodeProcess, query: str = "", headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any], str]:
    """Status, JSON body and raw body of a handshake the server must refuse."""
    with pytest.raises(InvalidStatus) as info:
        ws_connect(node, query, headers).close()
    response = info.value.response
    raw = (response.body or b"").decode("utf-8", errors="replace")
    body = json.loads(raw)
    assert isinstance(body, dict), raw
    assert isinstance(body.get("message"), str) and body["message"], raw
    return response.status_code, body, raw


def push(
    stub: push_pb2_grpc.PushServiceStub, user: str, data: Any, **kw: Any
) -> push_pb2.PushResponse:
    request = push_pb2.PushRequest(
        user_ids=[user], payload=json.dumps(data).encode(), content_type="application/json", **kw
    )
    response: push_pb2.PushResponse = stub.Push(request, metadata=auth(), timeout=10)
    return response


def publish(stub: push_pb2_grpc.PushServiceStub, topic: str, data: Any) -> push_pb2.PublishResponse:
    request = push_pb2.PublishRequest(
        topic=topic, payload=json.dumps(data).encode(), content_type="application/json"
    )
    response: push_pb2.PublishResponse = stub.Publish(request, metadata=auth(), timeout=10)
    return response


def expect_error(client: Client, code: str) -> dict[str, Any]:
    frame = client.recv()
    assert frame["type"] == "error", frame
    assert frame["code"] == code, frame
    assert isinstance(frame["message"], str) and frame["message"], frame
    return frame


def raw_open(node: NodeProcess, user: str, **kw: Any) -> tuple[RawWS, dict[str, Any]]:
    """A raw connection, past its welcome frame."""
    ws = RawWS.connect(HOST, node.ws_port, "/ws", {"Authorization": f"Bearer {token(user)}"}, **kw)
    welcome = ws.recv_json()
    assert welcome["type"] == "welcome", welcome
    return ws, welcome


def assert_node_healthy(node: NodeProcess, stub: push_pb2_grpc.PushServiceStub) -> None:
    """Alive, ready, and a fresh connection gets a push."""
    assert node.proc is not None and node.proc.poll() is None, node.log()
    status, body = node.admin_get("/readyz")
    assert status == 200, body
    user = new_user("fresh")
    with open_ws(node, user, proxy=None) as client:
        push(stub, user, {"still": "alive"})
        [msg] = client.messages(1)
        assert msg["data"] == {"still": "alive"}
        assert client.barrier() == []


# -- the handshake: 401 before the upgrade --------------------------------------------------


def _alg_none_token(user: str) -> str:
    header = b64url(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    claims = b64url(json.dumps({"sub": user, "exp": int(time.time()) + 3600}).encode())
    return f"{header}.{claims}."


BAD_TOKENS: dict[str, Callable[[str], str]] = {
    "malformed": lambda user: "this-is.not-a.jwt",
    "garbage": lambda user: "x" * 40,
    "expired": lambda user: mint_token(JWT_SECRET, user, ttl=-120),
    "wrong_signature": lambda user: mint_token("another-secret-of-sufficient-length!", user),
    "alg_none": _alg_none_token,
    "no_sub": lambda user: jwt.encode(
        {"exp": int(time.time()) + 3600}, JWT_SECRET, algorithm="HS256"
    ),
    "empty_sub": lambda user: jwt.encode(
        {"sub": "", "exp": int(time.time()) + 3600}, JWT_SECRET, algorithm="HS256"
    ),
    "no_exp": lambda user: jwt.encode({"sub": user}, JWT_SECRET, algorithm="HS256"),
    "hs512": lambda user: jwt.encode(
        {"sub": user, "exp": int(time.time()) + 3600}, JWT_SECRET, algorithm="HS512"
    ),
}


def test_no_token_is_401(shared: NodeProcess) -> None:
    status, body, _ = refusal(shared)
    assert status == 401, body
    status, body, _ = refusal(shared, "token=")
    assert status == 401, body


@pytest.mark.filterwarnings("ignore:The HMAC key")
@pytest.mark.parametrize("kind", sorted(BAD_TOKENS))
def test_bad_token_in_query_is_401(shared: NodeProcess, kind: str) -> None:
    bad = BAD_TOKENS[kind](new_user())
    status, body, raw = refusal(shared, f"token={bad}")
    assert status == 401, (kind, body)
    assert bad not in raw


@pytest.mark.filterwarnings("ignore:The HMAC key")
@pytest.mark.parametrize("kind", sorted(BAD_TOKENS))
def test_bad_token_in_bearer_header_is_401(shared: NodeProcess, kind: str) -> None:
    bad = BAD_TOKENS[kind](new_user())
    status, body, raw = refusal(shared, headers={"Authorization": f"Bearer {bad}"})
    assert status == 401, (kind, body)
    assert bad not in raw


def test_bearer_header_with_good_token_connects(shared: NodeProcess) -> None:
    user = new_user()
    with ws_connect(shared, headers={"Authorization": f"Bearer {token(user)}"}) as conn:
        welcome = json.loads(conn.recv(timeout=5))
        assert welcome["type"] == "welcome"
        assert welcome["user"] == user


@pytest.mark.parametrize("scheme", ["Basic", "Token", "Bearer"])
def test_bad_authorization_header_is_401(shared: NodeProcess, scheme: str) -> None:
    good = token(new_user())
    # "Bearer" alone (no token) is refused too; another scheme is refused even with a
    # good token, and even if the query carries a good one.
    value = f"{scheme} {good}" if scheme != "Bearer" else "Bearer"
    status, body, raw = refusal(shared, f"token={good}", headers={"Authorization": value})
    assert status == 401, body
    assert good not in raw


def test_refused_handshake_is_not_upgraded(shared: NodeProcess) -> None:
    """The 401 is a plain HTTP answer: no 101, no Sec-WebSocket-Accept."""
    with pytest.raises(rawws.HandshakeRefused) as info:
        RawWS.connect(HOST, shared.ws_port, "/ws?token=nope")
    assert info.value.status == 401
    assert "sec-websocket-accept" not in info.value.headers
    assert info.value.headers.get("content-type", "").startswith("application/json")
    assert json.loads(info.value.body)["message"]


# -- Origin -----------------------------------------------------------------------------------


def test_origin_without_allow_list(shared: NodeProcess) -> None:
    good = token(new_user())
    for origin in (
        "https://evil.example",
        f"http://evil.example:{shared.ws_port}",
        "http://127.0.0.1:1",  # same host name, another port: another origin
        "null",
    ):
        status, body, raw = refusal(shared, f"token={good}", headers={"Origin": origin})
        assert status == 403, (origin, body)
        assert good not in raw
    same_host = f"http://127.0.0.1:{shared.ws_port}"
    with ws_connect(shared, f"token={good}", headers={"Origin": same_host}) as conn:
        assert json.loads(conn.recv(timeout=5))["type"] == "welcome"
    with ws_connect(shared, f"token={good}") as conn:  # no Origin: not a browser
        assert json.loads(conn.recv(timeout=5))["type"] == "welcome"


def test_origin_allow_list(node_factory: Callable[..., NodeProcess]) -> None:
    node = node_factory(env={"PUSHSVC_ALLOWED_ORIGINS": "https://app.example"})
    good = token(new_user())
    with ws_connect(node, f"token={good}", headers={"Origin": "https://app.example"}) as conn:
        assert json.loads(conn.recv(timeout=5))["type"] == "welcome"
    for origin in ("https://evil.example", "https://app.example.evil", "http://app.example"):
        status, body, _ = refusal(node, f"token={good}", headers={"Origin": origin})
        assert status == 403, (origin, body)


def test_origin_is_checked_before_the_token(shared: NodeProcess) -> None:
    """A disallowed Origin is refused whatever the token: no token oracle for other sites."""
    status, _, _ = refusal(shared, "token=nope", headers={"Origin": "https://evil.example"})
    assert status == 403


# -- other plain HTTP answers -----------------------------------------------------------------


@pytest.mark.parametrize("since", ["abc", "-1", "1.5", "9" * 25, ""])
def test_bad_since_is_400(shared: NodeProcess, since: str) -> None:
    status, body, _ = refusal(shared, f"token={token(new_user())}&since={since}")
    assert status == 400, body


def test_plain_get_ws_is_426(shared: NodeProcess) -> None:
    resp = rawws.http_request(HOST, shared.ws_port, f"/ws?token={token(new_user())}")
    assert resp.status == 426, resp
    assert json.loads(resp.body)["message"]


def test_unknown_path_is_404(shared: NodeProcess) -> None:
    resp = rawws.http_request(HOST, shared.ws_port, "/nope")
    assert resp.status == 404, resp
    assert json.loads(resp.body)["message"]
    # a WebSocket upgrade on another path is not accepted either
    with pytest.raises(rawws.HandshakeRefused) as info:
        RawWS.connect(HOST, shared.ws_port, f"/other?token={token(new_user())}")
    assert info.value.status == 404


# -- welcome ---------------------------------------------------------------------------------


def test_welcome_frame(shared: NodeProcess, shared_stub: push_pb2_grpc.PushServiceStub) -> None:
    user = new_user()
    with open_ws(shared, user, proxy=None) as first:
        assert first.welcome["seq"] == 0
    seqs = [push(shared_stub, user, {"n": i}).seqs[0] for i in range(3)]
    assert seqs == sorted(seqs)
    with open_ws(shared, user, proxy=None) as client, open_ws(shared, user, proxy=None) as other:
        w = client.welcome
        assert set(w) == {"type", "conn", "user", "node", "seq", "ping_interval"}, w
        assert w["type"] == "welcome"
        assert w["user"] == user
        assert w["node"] == shared.node_id
        assert w["seq"] == seqs[-1]
        assert w["ping_interval"] == 25
        assert isinstance(w["conn"], str) and w["conn"]
        assert other.welcome["conn"] != w["conn"]
        # the welcome came first; the replay follows
        assert [m["data"] for m in client.messages(3)] == [{"n": 0}, {"n": 1}, {"n": 2}]


# -- client frames -----------------------------------------------------------------------------


def test_bad_frames_get_errors_and_the_connection_stays_up(shared: NodeProcess) -> None:
    with open_ws(shared, new_user(), proxy=None) as client:
        client.send("this is not json")
        expect_error(client, "bad_request")
        assert client.barrier() == []
        client.send("[1, 2, 3]")
        expect_error(client, "bad_request")
        client.send('"a string"')
        expect_error(client, "bad_request")
        client.send({"type": "launch_missiles"})
        expect_error(client, "unknown_type")
        client.send({"type": "ack", "seq": 5})  # nothing was ever sent
        expect_error(client, "bad_request")
        client.send(b'{"type":"ping"}')  # binary
        expect_error(client, "bad_request")
        assert client.barrier() == []


def test_ack_of_a_sent_seq_is_accepted(
    shared: NodeProcess, shared_stub: push_pb2_grpc.PushServiceStub
) -> None:
    user = new_user()
    with open_ws(shared, user, proxy=None) as client:
        seq = push(shared_stub, user, {"a": 1}).seqs[0]
        [msg] = client.messages(1)
        assert msg["seq"] == seq
        client.send({"type": "ack", "seq": seq})
        assert client.barrier() == []  # no error frame before the pong
        client.send({"type": "ack", "seq": seq + 1})
        expect_error(client, "bad_request")


def test_subscribe_and_publish(
    shared: NodeProcess, shared_stub: push_pb2_grpc.PushServiceStub
) -> None:
    with open_ws(shared, new_user(), topics=["news*"], proxy=None) as client:
        client.send({"type": "subscribe", "topic": "sports"})
        expect_error(client, "forbidden")
        client.send({"type": "subscribe", "topic": "news.eu"})
        assert client.recv() == {"type": "subscribed", "topic": "news.eu"}
        response = publish(shared_stub, "news.eu", {"headline": "hi"})
        assert response.local_subscribers == 1
        msg = client.recv()
        assert msg["type"] == "message"
        assert msg["topic"] == "news.eu"
        assert msg["id"] == response.message_id
        assert msg["data"] == {"headline": "hi"}
        assert "seq" not in msg
        # a topic not subscribed to is not delivered
        assert publish(shared_stub, "news.us", {"x": 1}).local_subscribers == 0
        assert client.barrier() == []


def test_subscribe_without_topics_claim_is_forbidden(shared: NodeProcess) -> None:
    with open_ws(shared, new_user(), proxy=None) as client:
        client.send({"type": "subscribe", "topic": "news"})
        expect_error(client, "forbidden")


def test_unsubscribe_stops_delivery(
    shared: NodeProcess, shared_stub: push_pb2_grpc.PushServiceStub
) -> None:
    topic = f"news.{secrets.token_hex(3)}"
    with (
        open_ws(shared, new_user("a"), topics=["news*"], proxy=None) as leaver,
        open_ws(shared, new_user("b"), topics=["news*"], proxy=None) as stayer,
    ):
        for c in (leaver, stayer):
            c.send({"type": "subscribe", "topic": topic})
            assert c.recv() == {"type": "subscribed", "topic": topic}
        assert publish(shared_stub, topic, {"n": 1}).local_subscribers == 2
        assert leaver.messages(1)[0]["data"] == {"n": 1}
        assert stayer.messages(1)[0]["data"] == {"n": 1}

        leaver.send({"type": "unsubscribe", "topic": topic})
        assert leaver.recv() == {"type": "unsubscribed", "topic": topic}
        assert publish(shared_stub, topic, {"n": 2}).local_subscribers == 1
        assert stayer.messages(1)[0]["data"] == {"n": 2}
        # frames go out in order: nothing before the pong means nothing was queued
        assert leaver.barrier() == []


# -- inbound size limit ------------------------------------------------------------------------


@pytest.fixture
def small_frames(node_factory: Callable[..., NodeProcess]) -> NodeProcess:
    return node_factory(env={"PUSHSVC_MAX_FRAME_BYTES": "1024"})


def test_frame_over_the_limit_closes_1009(small_frames: NodeProcess) -> None:
    with open_ws(small_frames, new_user(), proxy=None) as client:
        # just under the limit is fine
        client.send('{"type":"ping"}' + " " * (1000 - 15))
        assert client.recv() == {"type": "pong"}
        client.send('{"type":"ping"}' + " " * 5000)
        seen: list[Any] = []
        code, _ = client.close_code(5.0, seen)
        assert code == 1009, (code, seen)
        assert seen == []


def test_fragmented_message_over_the_limit_closes_1009(small_frames: NodeProcess) -> None:
    ws, _ = raw_open(small_frames, new_user())
    with ws:
        # fragments adding up to under the limit make one message
        ws.send_text('{"type":', fin=False)
        ws.send_frame(rawws.OP_CONT, b'"ping"}' + b" " * 500, fin=False)
        ws.send_frame(rawws.OP_CONT, b" " * 400, fin=True)
        assert ws.recv_json() == {"type": "pong"}
        # each fragment under the limit, the message over it
        ws.send_text('{"type":"ping"}' + " " * 600, fin=False)
        ws.send_frame(rawws.OP_CONT, b" " * 600, fin=False)
        ws.send_frame(rawws.OP_CONT, b" " * 10, fin=True)
        close = ws.recv_close()
        assert close is not None, "no close frame"
        assert close.close_code == 1009, close


# -- flood ------------------------------------------------------------------------------------


def test_flood_is_rate_limited_then_closed_4008(
    node_factory: Callable[..., NodeProcess],
) -> None:
    node = node_factory(
        env={
            "PUSHSVC_CLIENT_RATE": "5",
            "PUSHSVC_CLIENT_BURST": "5",
            "PUSHSVC_ABUSE_LIMIT": "5",
        }
    )
    bystander_user = new_user("bob")
    with node.stub() as stub, open_ws(node, bystander_user, proxy=None) as bystander:
        flooder, _ = raw_open(node, new_user("flood"))
        with flooder:
            ping = rawws.encode_frame(rawws.OP_TEXT, b'{"type":"ping"}')
            flooder.send_raw(ping * 100)  # 100 pings in one go
            seen: list[Any] = []
            close: rawws.Frame | None = None
            deadline = time.monotonic() + 5
            while close is None:
                try:
                    frame = flooder.recv_frame(max(0.01, deadline - time.monotonic()))
                except rawws.Closed:
                    break
                if frame.opcode == rawws.OP_CLOSE:
                    close = frame
                elif frame.opcode == rawws.OP_TEXT:
                    seen.append(frame.json())
            assert close is not None, ("no close frame", seen)
            assert close.close_code == 4008, (close, seen)
            errors = [f for f in seen if f["type"] == "error"]
            assert [e["code"] for e in errors] == ["rate_limited"], seen
            # the burst was served, then one warning, then the close
            assert seen[-1] == errors[0], seen
            assert all(f == {"type": "pong"} for f in seen[:-1]), seen
            assert 5 <= len(seen) - 1 <= 10, seen

        # the other user does not notice
        assert bystander.barrier() == []
        push(stub, bystander_user, {"ok": True})
        assert bystander.messages(1)[0]["data"] == {"ok": True}
        status, body = node.admin_get("/readyz")
        assert status == 200, body


# -- heartbeat --------------------------------------------------------------------------------


# Heartbeat timing is asserted only in the direction scheduling cannot break: a
# ping or a close never comes *before* its time. Upper bounds are generous
# deadlines, and "stays connected" is observed over several ping timeouts with
# a timeout far longer than any pause of a busy machine.
PING_INTERVAL = 1.0
PING_TIMEOUT = 5.0


@pytest.fixture
def heartbeat_node(node_factory: Callable[..., NodeProcess]) -> NodeProcess:
    return node_factory(
        env={"PUSHSVC_PING_INTERVAL": str(PING_INTERVAL), "PUSHSVC_PING_TIMEOUT": str(PING_TIMEOUT)}
    )


def test_silent_client_gets_pings_then_is_closed(heartbeat_node: NodeProcess) -> None:
    ws, welcome = raw_open(heartbeat_node, new_user())
    opened = time.monotonic()
    assert welcome["ping_interval"] == PING_INTERVAL
    pings = 0
    close: rawws.Frame | None = None
    with ws:
        while True:  # never answers, never sends
            try:
                frame = ws.recv_frame(timeout=60)
            except rawws.Closed:
                break
            if frame.opcode == rawws.OP_PING:
                pings += 1
            elif frame.opcode == rawws.OP_CLOSE:
                close = frame
                break
        closed_after = time.monotonic() - opened
    assert pings >= 2, pings  # pinged while the timeout ran
    assert closed_after >= PING_TIMEOUT, closed_after  # never before ping_timeout
    assert close is not None and close.close_code == 1001, close
    assert close.close_reason == "ping timeout", close


def test_clients_answering_pings_stay_connected(heartbeat_node: NodeProcess) -> None:
    """A library client (automatic pongs) and a raw one (explicit pongs) stay open
    over three ping timeouts, which a silent client does not survive."""
    ws, _ = raw_open(heartbeat_node, new_user())
    with ws, open_ws(heartbeat_node, new_user(), ping_interval=None, proxy=None) as client:
        until = time.monotonic() + 3 * PING_TIMEOUT
        answered = 0
        while time.monotonic() < until:
            frame = ws.recv_frame(timeout=60)
            assert frame.opcode == rawws.OP_PING, frame
            ws.send_pong(frame.payload)
            answered += 1
        assert answered >= 2
        ws.send_json({"type": "ping"})
        assert ws.recv_json(timeout=30) == {"type": "pong"}
        # The library client answered every ping by itself and is still welcome.
        assert client.barrier(timeout=30) == []


# -- nothing a client sends crashes the node -----------------------------------------------------


def _expect_close(ws: RawWS, codes: set[int], what: str) -> None:
    close = ws.recv_close()
    assert close is not None, f"{what}: no close frame"
    assert close.close_code in codes, (what, close)
    ws.wait_eof()


def test_garbage_does_not_crash_the_node(node: NodeProcess, stub: Any) -> None:
    def fresh() -> RawWS:
        return raw_open(node, new_user("garbage"))[0]

    # random bytes after the handshake, then EOF: the server ends the connection
    for _ in range(5):
        with fresh() as ws:
            ws.send_raw(os.urandom(3000))
            ws.sock.shutdown(socket.SHUT_WR)
            ws.recv_close()
            ws.wait_eof()

    with fresh() as ws:
        ws.send_text(b'{"type":"ping","x":"\xff\xfe"}')
        _expect_close(ws, {1007}, "invalid UTF-8")
    with fresh() as ws:  # invalid UTF-8 split across fragments
        ws.send_text(b'{"type":"\xe2\x82', fin=False)
        ws.send_frame(rawws.OP_CONT, b'"}')
        _expect_close(ws, {1007}, "invalid UTF-8 across fragments")
    for rsv in (0x40, 0x20, 0x10):
        with fresh() as ws:
            ws.send_frame(rawws.OP_TEXT, b'{"type":"ping"}', rsv=rsv)
            _expect_close(ws, {1002}, f"reserved bits {rsv:#x}")
    for opcode in (0x3, 0x7, 0xB, 0xF):
        with fresh() as ws:
            ws.send_frame(opcode, b"x")
            _expect_close(ws, {1002}, f"reserved opcode {opcode:#x}")
    with fresh() as ws:
        ws.send_frame(rawws.OP_CONT, b"orphan")
        _expect_close(ws, {1002}, "continuation without a message")
    with fresh() as ws:
        ws.send_text("{", fin=False)
        ws.send_text("}")
        _expect_close(ws, {1002}, "new message inside a fragmented one")
    with fresh() as ws:
        ws.send_frame(rawws.OP_PING, b"x", fin=False)
        _expect_close(ws, {1002}, "fragmented control frame")
    with fresh() as ws:
        ws.send_frame(rawws.OP_PING, b"x" * 200)
        _expect_close(ws, {1002}, "control frame over 125 bytes")
    with fresh() as ws:
        ws.send_raw(rawws.encode_frame(rawws.OP_TEXT, b"", length=2**63 - 1))
        _expect_close(ws, {1009}, "64-bit length")
    with fresh() as ws:  # truncated frame, then EOF
        ws.send_raw(rawws.encode_frame(rawws.OP_TEXT, b"x" * 100)[:30])
        ws.sock.shutdown(socket.SHUT_WR)
        ws.recv_close()
        ws.wait_eof()
    with fresh() as ws:  # truncated header, then EOF
        ws.send_raw(b"\x81\xfe\x01")
        ws.sock.shutdown(socket.SHUT_WR)
        ws.recv_close()
        ws.wait_eof()
    with fresh() as ws:  # a close frame with a 1-byte body
        ws.send_frame(rawws.OP_CLOSE, b"\x03")
        _expect_close(ws, {1002}, "close frame with a 1-byte payload")
    with fresh() as ws:  # a normal close is answered with a close frame
        ws.send_close(1000, "bye")
        close = ws.recv_close()
        assert close is not None and close.close_code == 1000, close
        ws.wait_eof()
    with fresh() as ws:  # a client that vanishes mid-session (reset)
        ws.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    # garbage instead of an HTTP request
    with socket.create_connection((HOST, node.ws_port), timeout=5) as sock:
        sock.sendall(os.urandom(2000) + b"\r\n\r\n")
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(5)
        while sock.recv(65536):
            pass
    assert_node_healthy(node, stub)
    log = node.log()
    assert "Traceback" not in log, log[-5000:]


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"Sec-WebSocket-Key": "short", "Sec-WebSocket-Version": "13"}, 400),
        ({"Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version": "99"}, 426),
    ],
    ids=["bad_key", "bad_version"],
)
def test_bad_upgrade_request_is_a_complete_answer(
    node: NodeProcess, headers: dict[str, str], status: int
) -> None:
    resp = rawws.http_request(
        HOST,
        node.ws_port,
        f"/ws?token={token(new_user())}",
        {"Upgrade": "websocket", "Connection": "Upgrade", **headers},
    )
    assert resp.status == status, resp
    if status == 426:
        assert resp.headers["sec-websocket-version"] == "13", resp
    # the body the Content-Length announces is actually sent
    assert len(resp.body) == int(resp.headers["content-length"]) > 0, resp
    assert "Traceback" not in node.log()


def test_unmasked_client_frame_is_a_protocol_error(node: NodeProcess) -> None:
    """RFC 6455 §5.1: the server MUST close the connection upon an unmasked frame."""
    ws, _ = raw_open(node, new_user())
    with ws:
        ws.send_frame(rawws.OP_TEXT, b'{"type":"ping"}', mask=False)
        _expect_close(ws, {1002}, "unmasked client frame")


# -- Disconnect ----------------------------------------------------------------------------------


def test_disconnect_closes_every_connection_of_the_user(node: NodeProcess, stub: Any) -> None:
    alice, bob = new_user("alice"), new_user("bob")
    with (
        open_ws(node, alice, proxy=None) as a1,
        open_ws(node, alice, proxy=None) as a2,
        open_ws(node, bob, proxy=None) as b,
    ):
        response = stub.Disconnect(
            push_pb2.DisconnectRequest(user_id=alice, reason="bye"), metadata=auth(), timeout=10
        )
        assert response.connections_closed == 2
        for conn in (a1, a2):
            seen: list[Any] = []
            code, reason = conn.close_code(5.0, seen)
            assert (code, reason) == (4000, "bye"), seen
        assert b.barrier() == []
        push(stub, bob, {"for": "bob"})
        assert b.messages(1)[0]["data"] == {"for": "bob"}
        # the user may connect again
        with open_ws(node, alice, proxy=None) as again:
            assert again.barrier() == []


def test_disconnect_without_reason_uses_the_default(node: NodeProcess, stub: Any) -> None:
    user = new_user()
    with open_ws(node, user, proxy=None) as client:
        stub.Disconnect(push_pb2.DisconnectRequest(user_id=user), metadata=auth(), timeout=10)
        code, reason = client.close_code(5.0)
        assert code == 4000
        assert reason == "disconnected"
