"""A bounded fuzz run (issue 10, point 9): no input makes anything but the
intended error escape, and a node under fuzzed input keeps serving.

In process, with Hypothesis: the frame reader, the request-head reader and the
upgrade checks, the token verifier, the client-frame protocol, strict JSON and
the gRPC request validation (``messages``) get random and mutated input; each
may refuse it only with its own error type. Against a real node: fuzzed frame
streams and client frames over WebSocket connections, fuzzed handshakes, and
fuzzed push requests over gRPC; every answer is one the protocol allows, and a
fresh client is served at the end.

Example counts are fixed so the whole file runs in about a minute; set
``PUSHSVC_FUZZ_EXAMPLES`` (a multiplier) for a longer run outside ``make test``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import socket
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pushsvc import jsontext
from pushsvc.auth import TokenVerifier
from pushsvc.errors import InvalidArgument, Unauthenticated
from pushsvc.httpwire import HeadLimits, HeadReader, HttpError, check_upgrade
from pushsvc.messages import (
    build_push,
    validate_message_id,
    validate_payload,
    validate_reason,
    validate_topic,
    validate_user_ids,
)
from pushsvc.protocol import FrameError, parse_client_frame
from pushsvc.wsframes import FrameReader, ProtocolViolation
from pushsvc_client.v1 import push_pb2, push_pb2_grpc
from tests.nodeproc import JWT_SECRET, NodeProcess, auth
from tests.rawws import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    Closed,
    RawWS,
    encode_frame,
)
from tests.wsclient import open_ws, token

pytestmark = pytest.mark.timeout(600)

SCALE = max(1, int(os.environ.get("PUSHSVC_FUZZ_EXAMPLES", "1")))


def fuzz(n: int) -> Any:
    return settings(
        max_examples=n * SCALE,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


# -- building blocks ---------------------------------------------------------------------

opcodes = st.sampled_from([OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG, 0x3, 0xB])


@st.composite
def frames(draw: st.DrawFn) -> bytes:
    """One frame, mostly well-formed, sometimes not."""
    opcode = draw(opcodes)
    payload = draw(
        st.one_of(
            st.binary(max_size=200),
            st.text(max_size=60).map(str.encode),
            st.sampled_from([b'{"type":"ping"}', b'{"type":"ack","seq":0}', b"\x03\xe8"]),
        )
    )
    return encode_frame(
        opcode,
        payload,
        fin=draw(st.booleans()),
        rsv=draw(st.sampled_from([0, 0, 0, 0x40, 0x10])),
        mask=draw(st.sampled_from([True, True, True, False])),
        key=draw(st.binary(min_size=4, max_size=4)),
    )


@st.composite
def mutated(draw: st.DrawFn, base: st.SearchStrategy[bytes]) -> bytes:
    """``base`` with a few bytes flipped, inserted or cut."""
    data = bytearray(draw(base))
    for _ in range(draw(st.integers(0, 4))):
        if not data:
            break
        i = draw(st.integers(0, len(data) - 1))
        action = draw(st.sampled_from(["flip", "insert", "cut"]))
        if action == "flip":
            data[i] ^= draw(st.integers(1, 255))
        elif action == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=8))
        else:
            del data[i : i + draw(st.integers(1, 8))]
    return bytes(data)


streams = st.lists(frames(), max_size=6).map(b"".join)
chunkings = st.lists(st.integers(1, 64), min_size=1, max_size=8)


def feed_frames(data: bytes, chunks: list[int]) -> None:
    reader = FrameReader(1024)
    i = 0
    n = 0
    while i < len(data):
        step = chunks[n % len(chunks)]
        n += 1
        reader.feed(data[i : i + step])
        i += step
        try:
            while reader.next_event() is not None:
                pass
        except ProtocolViolation as exc:
            assert exc.code in (1002, 1007, 1009)
            assert reader.finished and reader.next_event() is None
            return


# -- in process ------------------------------------------------------------------------------


@fuzz(800)
@given(st.one_of(st.binary(max_size=600), streams, mutated(streams)), chunkings)
def test_frame_reader(data: bytes, chunks: list[int]) -> None:
    feed_frames(data, chunks)


HEAD = (
    b"GET /ws?token=abc HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


@fuzz(800)
@given(st.one_of(st.binary(max_size=600), mutated(st.just(HEAD))), chunkings)
def test_head_reader_and_upgrade(data: bytes, chunks: list[int]) -> None:
    reader = HeadReader(HeadLimits(max_bytes=512, max_fields=10))
    i = n = 0
    while i < len(data):
        step = chunks[n % len(chunks)]
        n += 1
        try:
            request = reader.feed(data[i : i + step])
        except HttpError as exc:
            assert exc.status in (400, 414, 431, 505) and exc.message
            return
        i += step
        if request is not None:
            assert request.path.startswith("/") or request.path
            try:
                assert check_upgrade(request)
            except HttpError as exc:
                assert exc.status in (400, 405, 426)
            return


verifier = TokenVerifier("HS256", JWT_SECRET, max_lifetime=3600)
SOON = int(time.time()) + 1800  # a valid exp for the whole run, the same in every example
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children)
    ),
    max_leaves=20,
)


@st.composite
def signed_tokens(draw: st.DrawFn) -> str:
    """Correctly signed tokens whose claims are anything JSON (or almost)."""
    claims: dict[str, Any] = draw(st.dictionaries(st.text(max_size=5), json_values, max_size=3))
    for name in ("sub", "exp", "nbf", "iat", "topics"):
        if draw(st.booleans()):
            claims[name] = draw(st.one_of(json_values, st.integers(-(2**70), 2**70), st.just(SOON)))
    text = json.dumps(claims, allow_nan=True)  # NaN and Infinity on purpose
    header = draw(st.sampled_from(['{"alg":"HS256","typ":"JWT"}', '{"alg":"none"}', "[]", "{"]))

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    signing_input = f"{b64(header.encode())}.{b64(text.encode())}"
    mac = hmac.new(JWT_SECRET.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(mac)}"


@fuzz(500)
@given(
    st.one_of(
        signed_tokens(),
        st.text(max_size=300),
        mutated(signed_tokens().map(str.encode)).map(lambda b: b.decode("latin-1")),
    )
)
def test_token_verifier(tok: str) -> None:
    try:
        identity = verifier.verify(tok)
    except Unauthenticated as exc:
        assert str(exc)
        return
    assert identity.user_id and identity.expires_at > time.time() - 10


client_frames = st.one_of(
    st.text(max_size=200),
    json_values.map(lambda v: json.dumps(v, allow_nan=True)),
    st.fixed_dictionaries(
        {"type": st.sampled_from(["ack", "subscribe", "unsubscribe", "ping", "x"])},
        optional={"seq": json_values | st.integers(), "topic": json_values | st.text()},
    ).map(lambda d: json.dumps(d, allow_nan=True)),
    st.binary(max_size=50),
)


@fuzz(1000)
@given(client_frames)
def test_client_frame_protocol(text: str | bytes) -> None:
    try:
        frame = parse_client_frame(text)
    except FrameError as exc:
        assert exc.code in ("bad_request", "unknown_type") and exc.message
        return
    assert frame.type in ("ack", "subscribe", "unsubscribe", "ping")


@fuzz(800)
@given(
    st.one_of(
        st.binary(max_size=300),
        st.text(max_size=300),
        mutated(json_values.map(lambda v: json.dumps(v).encode())),
    )
)
def test_strict_json(data: str | bytes) -> None:
    try:
        jsontext.loads(data, max_depth=8)
    except jsontext.JsonError as exc:
        assert str(exc)


@fuzz(800)
@given(
    st.one_of(
        st.text(alphabet=' \t\n\r\x0b[]{}",:0123456789.eE+-truefalsnl\\u', max_size=40),
        mutated(json_values.map(lambda v: json.dumps(v).encode())).map(
            lambda b: b.decode("utf-8", "replace")
        ),
        json_values.map(json.dumps).map(lambda t: f" \n{t}\r\t "),
    )
)
def test_strict_json_accepts_what_json_accepts(text: str) -> None:
    """Beside what RFC 8259 forbids (checked above), the strict parser takes
    exactly the documents Python's own decoder takes, whitespace and all, and
    reads them to the same values."""
    try:
        expected = json.loads(text)
    except (ValueError, RecursionError):
        with pytest.raises(jsontext.JsonError):
            jsontext.loads(text)
        return
    if "NaN" in text or "Infinity" in text or "[" * 65 in text.replace(" ", ""):
        return
    try:
        got = jsontext.loads(text)
    except jsontext.JsonError as exc:
        assert "out of range" in str(exc) or "nested" in str(exc), exc
        return
    assert got == expected


@fuzz(800)
@given(
    st.one_of(
        mutated(json_values.map(lambda v: json.dumps(v, separators=(",", ":")).encode())),
        st.binary(max_size=80).map(lambda b: b"{" + b + b"}"),
        st.binary(max_size=80).map(lambda b: b"[" * 9 + b + b"]"),
    )
)
def test_strict_json_bytes_take_the_short_way_to_the_same_end(data: bytes) -> None:
    """A payload's bytes that look like one document go a shorter way; whatever
    they hold, it ends as the careful way does: the same value, or the same error."""

    def outcome(read: Any) -> Any:
        try:
            return ("value", read())
        except jsontext.JsonError as exc:
            return ("error", str(exc))

    assert outcome(lambda: jsontext.loads(data, 8)) == outcome(
        lambda: jsontext._loads(data, 8)  # the careful way alone
    )


@fuzz(500)
@given(json_values.filter(lambda v: "NaN" not in json.dumps(v) and "Infinity" not in json.dumps(v)))
def test_strict_json_reads_what_json_writes(value: Any) -> None:
    assert jsontext.loads(json.dumps(value)) == value


@fuzz(800)
@given(
    st.lists(st.text(max_size=12), max_size=5),
    st.one_of(st.binary(max_size=100), json_values.map(lambda v: json.dumps(v).encode())),
    st.one_of(
        st.sampled_from(["", "application/json", "text/plain", "a/b+json"]), st.text(max_size=30)
    ),
    st.one_of(st.none(), st.integers(-(2**40), 2**40)),
    st.text(max_size=300),
    st.text(max_size=30),
)
def test_grpc_request_validation(
    users: list[str], payload: bytes, ctype: str, ttl: int | None, key: str, other: str
) -> None:
    try:
        cmd = build_push(
            users, payload, ctype, ttl, key, max_payload=64, default_ttl=60, max_ttl=3600
        )
    except InvalidArgument as exc:
        assert str(exc)
    else:
        assert cmd.user_ids and 0 <= cmd.ttl_seconds <= 3600
    for check in (validate_topic, validate_reason, validate_message_id):
        try:
            check(other)
        except InvalidArgument as exc:
            assert str(exc)
    for call in (lambda: validate_user_ids([other]), lambda: validate_payload(payload, ctype, 64)):
        try:
            call()
        except InvalidArgument as exc:
            assert str(exc)


# -- against a real node ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    proc = NodeProcess(
        tmp_path_factory.mktemp("fuzz") / "node",
        {
            "PUSHSVC_MAX_FRAME_BYTES": str(MAX_FRAME),
            "PUSHSVC_HANDSHAKE_TIMEOUT": "10",
            "PUSHSVC_LOG_LEVEL": "info",
        },
    )
    proc.start()
    yield proc
    if proc.proc is not None and proc.proc.poll() is None:
        proc.kill()


CLOSE_CODES = {1000, 1002, 1007, 1009, 4008}
MAX_FRAME = 4096


def outcome(data: bytes) -> str:
    """What the node must make of ``data``: "violation", "closed" (a close frame),
    "incomplete" (a frame still arriving) or "complete"."""
    reader = FrameReader(MAX_FRAME)
    reader.feed(data)
    try:
        while reader.next_event() is not None:
            pass
    except ProtocolViolation:
        return "violation"
    if reader.finished:
        return "closed"
    return "incomplete" if reader.buffered else "complete"


def exchange(node: NodeProcess, data: bytes) -> None:
    """Send ``data`` on a fresh connection. Complete frames are followed by a ping,
    which the node answers (it took the data, or refused it with an error frame) or
    a close with a code RFC 6455 or the protocol allows; an incomplete frame is
    followed by the end of the stream, which the node must take calmly."""
    expected = outcome(data)
    ws = RawWS.connect("127.0.0.1", node.ws_port, f"/ws?token={token('fuzz')}", timeout=30)
    with ws:
        try:
            ws.send_raw(data)
            if expected == "incomplete":
                ws.sock.shutdown(socket.SHUT_WR)
                ws.recv_close(timeout=30)  # the node ends the connection
                return
            ws.send_frame(OP_PING, b"barrier")
            while True:
                frame = ws.recv_frame(timeout=30)
                if frame.opcode == OP_PONG and frame.payload == b"barrier":
                    assert expected == "complete", (expected, data)
                    return
                if frame.opcode == OP_CLOSE:
                    assert frame.close_code in CLOSE_CODES, frame
                    return
        except (Closed, ConnectionError):
            return  # cut after a close the client could not read in time


@fuzz(120)
@given(st.one_of(streams, mutated(streams), st.binary(min_size=1, max_size=300)))
def test_node_under_fuzzed_frames(node: NodeProcess, data: bytes) -> None:
    exchange(node, data)


@fuzz(120)
@given(client_frames)
def test_node_under_fuzzed_client_frames(node: NodeProcess, text: str | bytes) -> None:
    data = text.encode() if isinstance(text, str) else text
    exchange(node, encode_frame(OP_TEXT if isinstance(text, str) else OP_BINARY, data))


@fuzz(120)
@given(st.one_of(mutated(st.just(HEAD)), st.binary(min_size=1, max_size=300)))
def test_node_under_fuzzed_handshakes(node: NodeProcess, data: bytes) -> None:
    with socket.create_connection(("127.0.0.1", node.ws_port), timeout=30) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)  # nothing more: an incomplete head ends here
        answer = b""
        sock.settimeout(30)
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except ConnectionResetError:
            pass
    if not answer:
        return  # the request never completed: the node closes without a word
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0]
    assert status_line.startswith(b"HTTP/1.1 "), answer[:200]
    status = int(status_line.split()[1])
    if status != 101:
        assert json.loads(body)["message"], answer[:300]


@fuzz(150)
@given(
    st.lists(st.text(max_size=10), max_size=4),
    st.one_of(st.binary(max_size=100), json_values.map(lambda v: json.dumps(v).encode())),
    st.one_of(st.sampled_from(["", "application/json", "text/plain"]), st.text(max_size=20)),
    st.text(max_size=20),
)
def test_node_under_fuzzed_push_requests(
    grpc_stub: push_pb2_grpc.PushServiceStub,
    users: list[str],
    payload: bytes,
    ctype: str,
    topic: str,
) -> None:
    for call, request in (
        (grpc_stub.Push, push_pb2.PushRequest(user_ids=users, payload=payload, content_type=ctype)),
        (
            grpc_stub.Publish,
            push_pb2.PublishRequest(topic=topic, payload=payload, content_type=ctype),
        ),
        (grpc_stub.GetPresence, push_pb2.GetPresenceRequest(user_ids=users)),
    ):
        try:
            call(request, metadata=auth(), timeout=30)
        except grpc.RpcError as err:
            code: Any = err.code()
            assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, err)


@pytest.fixture(scope="module")
def grpc_stub(node: NodeProcess) -> Iterator[push_pb2_grpc.PushServiceStub]:
    channel = grpc.insecure_channel(node.grpc_addr)
    yield push_pb2_grpc.PushServiceStub(channel)
    channel.close()


def test_the_node_still_serves_after_the_fuzzing(node: NodeProcess) -> None:
    """Runs after the fuzzing above (same module, same node)."""
    user = f"after-{secrets.token_hex(3)}"
    with open_ws(node, user, proxy=None) as client, node.stub() as stub:
        stub.Push(
            push_pb2.PushRequest(user_ids=[user], payload=b'{"ok":true}'),
            metadata=auth(),
            timeout=30,
        )
        assert client.messages(1, timeout=30)[0]["data"] == {"ok": True}
    assert node.admin_get("/readyz")[0] == 200
    assert node.proc is not None and node.proc.poll() is None
    log = node.log()
    assert "Traceback" not in log and " ERROR " not in log, log[-3000:]
