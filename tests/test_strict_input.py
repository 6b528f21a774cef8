"""Strict JSON, names and tokens against a real node (issue 10, points 3 and 4).

JSON from outside -- push and publish payloads with a JSON content type, client
frames, token claims -- is RFC 8259 only: no NaN or Infinity, no number that
overflows, UTF-8 only, nesting bounded (64); names (user ids, topics, token
``sub``) are matched as whole strings, without control characters. Each refusal
is a clear INVALID_ARGUMENT, ``bad_request`` or 401, never a traceback, and
nothing else is disturbed.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest

from pushsvc import jsontext
from pushsvc_client.v1 import push_pb2, push_pb2_grpc
from tests.nodeproc import JWT_SECRET, NodeProcess, auth
from tests.rawws import HandshakeRefused, RawWS
from tests.wsclient import Client, open_ws, token

pytestmark = pytest.mark.timeout(120)

HOST = "127.0.0.1"
MAX_LIFETIME = 3600


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    proc = NodeProcess(
        tmp_path_factory.mktemp("strict") / "node",
        {"PUSHSVC_MAX_TOKEN_LIFETIME": str(MAX_LIFETIME), "PUSHSVC_ABUSE_LIMIT": "1000"},
    )
    proc.start()
    yield proc
    if proc.proc is not None and proc.proc.poll() is None:
        proc.kill()
    log = proc.log()
    assert "Traceback" not in log, log[-3000:]
    assert " ERROR " not in log and " CRITICAL " not in log, log[-3000:]


@pytest.fixture(scope="module", autouse=True)
def bystander(node: NodeProcess) -> Iterator[None]:
    """A connection open through every test of the module: it must notice nothing."""
    client = open_ws(node, new_user("bystander"), proxy=None)
    yield
    user = client.welcome["user"]
    with node.stub() as stub:
        stub.Push(
            push_pb2.PushRequest(user_ids=[user], payload=b'{"still":"here"}'),
            metadata=auth(),
            timeout=20,
        )
    assert client.messages(1, timeout=30)[0]["data"] == {"still": "here"}
    assert client.barrier(timeout=30) == []
    client.close()


@pytest.fixture(scope="module")
def stub(node: NodeProcess) -> Iterator[push_pb2_grpc.PushServiceStub]:
    channel = grpc.insecure_channel(node.grpc_addr)
    yield push_pb2_grpc.PushServiceStub(channel)
    channel.close()


def new_user(prefix: str = "u") -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


def invalid(call: Any, request: Any) -> str:
    """The INVALID_ARGUMENT message of a call that must fail."""
    with pytest.raises(grpc.RpcError) as info:
        call(request, metadata=auth(), timeout=20)
    err: Any = info.value
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (err.code(), err.details())
    assert err.details()
    return str(err.details())


# -- payloads over gRPC ------------------------------------------------------------------------

BAD_JSON_PAYLOADS = {
    "NaN": b'{"x": NaN}',
    "Infinity": b"[Infinity]",
    "-Infinity": b"-Infinity",
    "overflow": b'{"x": 1e999}',
    "too deep": b"[" * 65 + b"]" * 65,
    "very deep": b"[" * 60_000,
    "UTF-16": '{"x": 1}'.encode("utf-16"),
    "UTF-32": '{"x": 1}'.encode("utf-32"),
    "BOM": b'\xef\xbb\xbf{"x": 1}',
    "not UTF-8": b'{"x": "\xff"}',
    "raw control character": b'{"x": "a\x01b"}',
    "trailing garbage": b'{"x": 1} {"y": 2}',
    "huge integer": b"1" + b"0" * 5000,
    "single quotes": b"{'x': 1}",
    "empty": b"",
}


@pytest.mark.parametrize("case", sorted(BAD_JSON_PAYLOADS))
def test_push_and_publish_refuse_json_that_is_not_rfc_8259(
    stub: push_pb2_grpc.PushServiceStub, node: NodeProcess, case: str
) -> None:
    user = new_user()
    payload = BAD_JSON_PAYLOADS[case]
    for ctype in ("application/json", "application/cloudevents+json; charset=utf-8"):
        message = invalid(
            stub.Push, push_pb2.PushRequest(user_ids=[user], payload=payload, content_type=ctype)
        )
        assert "JSON" in message, message
    invalid(stub.Publish, push_pb2.PublishRequest(topic="news", payload=payload))
    # Nothing was stored for the user.
    with open_ws(node, user, proxy=None) as client:
        assert client.welcome["seq"] == 0


def test_json_within_the_limits_is_delivered_as_sent(
    stub: push_pb2_grpc.PushServiceStub, node: NodeProcess
) -> None:
    user = new_user()
    deep = "[" * 64 + "]" * 64
    payloads = [deep, '{"n": 1e308, "s": "\\ud83d\\ude00", "k": [true, false, null]}', "-0.0"]
    with open_ws(node, user, proxy=None) as client:
        for text in payloads:
            stub.Push(
                push_pb2.PushRequest(user_ids=[user], payload=text.encode()),
                metadata=auth(),
                timeout=20,
            )
        got = [m["data"] for m in client.messages(len(payloads), timeout=30)]
    assert got == [json.loads(p) for p in payloads]


def test_a_depth_message_is_clear(stub: push_pb2_grpc.PushServiceStub) -> None:
    message = invalid(
        stub.Push, push_pb2.PushRequest(user_ids=["x"], payload=b"[" * 200 + b"]" * 200)
    )
    assert "nested more than 64 levels" in message, message


# -- names -------------------------------------------------------------------------------------

BAD_NAMES = ["alice\n", "bob\x00", "carol\u2028", "dave\x7f", "eve\u0085", "\t"]


@pytest.mark.parametrize("name", BAD_NAMES, ids=repr)
def test_user_ids_with_control_characters_are_refused(
    stub: push_pb2_grpc.PushServiceStub, node: NodeProcess, name: str
) -> None:
    good = new_user()
    request = push_pb2.PushRequest(user_ids=[good, name], payload=b'{"x":1}')
    assert "control character" in invalid(stub.Push, request)
    invalid(stub.GetPresence, push_pb2.GetPresenceRequest(user_ids=[name]))
    invalid(stub.Disconnect, push_pb2.DisconnectRequest(user_id=name))
    with open_ws(node, good, proxy=None) as client:  # the good recipient got nothing
        assert client.welcome["seq"] == 0


@pytest.mark.parametrize("topic", ["news\n", "news\r", "news ", "new\x00s", "nëws", "a" * 201, ""])
def test_topics_are_matched_as_whole_strings(
    stub: push_pb2_grpc.PushServiceStub, topic: str
) -> None:
    invalid(stub.Publish, push_pb2.PublishRequest(topic=topic, payload=b"{}"))


def test_content_type_is_matched_as_a_whole_string(stub: push_pb2_grpc.PushServiceStub) -> None:
    for ctype in ("application/json\n", "text/plain; charset=\x00", "application/json\r\nX: y"):
        request = push_pb2.PushRequest(user_ids=["x"], payload=b"{}", content_type=ctype)
        assert "MIME type" in invalid(stub.Push, request)


# -- client frames ------------------------------------------------------------------------------


def expect_error(client: Client, code: str = "bad_request") -> str:
    frame = client.recv(timeout=30)
    assert frame["type"] == "error" and frame["code"] == code, frame
    return str(frame["message"])


BAD_FRAMES = {
    "deep": "[" * 5000,
    "deep in an object": '{"type":"ping","x":' + "[" * 100 + "]" * 100 + "}",
    "NaN": '{"type":"ack","seq":NaN}',
    "Infinity": '{"type":"ack","seq":Infinity}',
    "overflow": '{"type":"ack","seq":1e999}',
    "float seq": '{"type":"ack","seq":1.0}',
    "seq over 64 bits": '{"type":"ack","seq":9223372036854775808}',
    "huge seq": '{"type":"ack","seq":' + "9" * 5000 + "}",
    "topic with newline": '{"type":"subscribe","topic":"news\\n"}',
    "topic with NUL": '{"type":"subscribe","topic":"news\\u0000"}',
    "lone surrogate topic": '{"type":"subscribe","topic":"\\ud800"}',
}


def test_bad_client_frames_get_bad_request_and_the_connection_stays(node: NodeProcess) -> None:
    with open_ws(node, new_user(), topics=["news*"], proxy=None) as client:
        for case, text in BAD_FRAMES.items():
            client.send(text)
            message = expect_error(client)
            assert message, case
        assert "nested more than 64" in _error_for(client, BAD_FRAMES["deep"])
        client.send({"type": "subscribe", "topic": "news"})
        assert client.recv(timeout=30) == {"type": "subscribed", "topic": "news"}


def _error_for(client: Client, text: str) -> str:
    client.send(text)
    return expect_error(client)


def test_rate_limit_charges_by_the_parsed_frame_type(
    node_factory: Callable[..., NodeProcess],
) -> None:
    """An ack costs a fifth of a frame, whatever text it carries; a ping whose
    text mentions an ack costs a whole frame."""
    node = node_factory(
        env={
            "PUSHSVC_CLIENT_RATE": "0.1",
            "PUSHSVC_CLIENT_BURST": "5",
            "PUSHSVC_ABUSE_LIMIT": "100",
        }
    )
    with open_ws(node, new_user(), proxy=None) as client:
        for _ in range(20):  # 20 acks: 4 frames' worth, under the burst of 5
            client.send('{"type":"ack","seq":0,"note":"ping ping ping"}')
        assert client.barrier(timeout=30) == []
    with open_ws(node, new_user(), proxy=None) as client:
        for _ in range(20):
            client.send('{"type":"ping","note":"ack ack"}')
        seen = [client.recv(timeout=30) for _ in range(6)]
        assert {"type": "error", "code": "rate_limited", "message": "slow down"} in seen, seen


# -- tokens ------------------------------------------------------------------------------------


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def raw_token(claims_json: str, header_json: str = '{"alg":"HS256","typ":"JWT"}') -> str:
    """A correctly signed token whose JSON is exactly as given (PyJWT cannot write 1e400)."""
    signing_input = f"{b64url(header_json.encode())}.{b64url(claims_json.encode())}"
    mac = hmac.new(JWT_SECRET.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(mac)}"


def refused_token(node: NodeProcess, tok: str) -> str:
    with pytest.raises(HandshakeRefused) as info:
        RawWS.connect(HOST, node.ws_port, "/ws", {"Authorization": f"Bearer {tok}"}, timeout=10)
    assert info.value.status == 401, info.value
    assert info.value.headers["content-type"] == "application/json"
    return str(json.loads(info.value.body)["message"])


def now() -> int:
    return int(time.time())


BAD_CLAIMS = {
    "exp as a string": lambda: f'{{"sub":"a","exp":"{now() + 60}"}}',
    "exp overflowing": lambda: '{"sub":"a","exp":1e400}',
    "exp NaN": lambda: '{"sub":"a","exp":NaN}',
    "exp huge": lambda: '{"sub":"a","exp":' + "9" * 30 + "}",
    "exp a boolean": lambda: '{"sub":"a","exp":true}',
    "exp negative": lambda: '{"sub":"a","exp":-5}',
    "exp null": lambda: '{"sub":"a","exp":null}',
    "no exp": lambda: '{"sub":"a"}',
    "nbf as a string": lambda: f'{{"sub":"a","exp":{now() + 60},"nbf":"0"}}',
    "nbf in the future": lambda: f'{{"sub":"a","exp":{now() + 600},"nbf":{now() + 300}}}',
    "iat as a string": lambda: f'{{"sub":"a","exp":{now() + 60},"iat":"x"}}',
    "iat in the future": lambda: f'{{"sub":"a","exp":{now() + 600},"iat":{now() + 300}}}',
    "iat huge": lambda: f'{{"sub":"a","exp":{now() + 60},"iat":1e300}}',
    "lifetime over the maximum": lambda: f'{{"sub":"a","exp":{now() + 2 * MAX_LIFETIME}}}',
    "exp - iat over the maximum": lambda: (
        f'{{"sub":"a","iat":{now() - 10 * MAX_LIFETIME},"exp":{now() + 60}}}'
    ),
    "sub with a newline": lambda: f'{{"sub":"alice\\n","exp":{now() + 60}}}',
    "sub with NUL": lambda: f'{{"sub":"a\\u0000b","exp":{now() + 60}}}',
    "sub a number": lambda: f'{{"sub":42,"exp":{now() + 60}}}',
    "sub a lone surrogate": lambda: f'{{"sub":"\\ud800","exp":{now() + 60}}}',
    "topics not a list": lambda: f'{{"sub":"a","exp":{now() + 60},"topics":"news"}}',
    "topic with a newline": lambda: f'{{"sub":"a","exp":{now() + 60},"topics":["news\\n"]}}',
    "claims nested deep": lambda: (
        f'{{"sub":"a","exp":{now() + 60},"x":' + "[" * 2000 + "]" * 2000 + "}"
    ),
    "claims an array": lambda: '[{"sub":"a"}]',
    "claims not JSON": lambda: "{sub: a}",
}


@pytest.mark.parametrize("case", sorted(BAD_CLAIMS))
def test_bad_claims_are_401(node: NodeProcess, case: str) -> None:
    assert refused_token(node, raw_token(BAD_CLAIMS[case]()))


def test_bad_headers_are_401(node: NodeProcess) -> None:
    claims = f'{{"sub":"a","exp":{now() + 60}}}'
    for header in ('{"alg":"HS256","x":' + "[" * 2000 + "]" * 2000 + "}", "[1]", "nope"):
        refused_token(node, raw_token(claims, header))
    refused_token(node, "a.b.c.d")
    refused_token(node, "!!!.???.###")
    refused_token(node, "e" * 9000)


def test_messages_say_what_is_wrong(node: NodeProcess) -> None:
    assert "'exp' must be a number" in refused_token(
        node, raw_token(BAD_CLAIMS["exp as a string"]())
    )
    assert "out of range" in refused_token(node, raw_token(BAD_CLAIMS["exp huge"]()))
    long_lived = refused_token(node, raw_token(BAD_CLAIMS["lifetime over the maximum"]()))
    assert f"maximum of {MAX_LIFETIME} s" in long_lived, long_lived
    assert "control character" in refused_token(node, raw_token(BAD_CLAIMS["sub with NUL"]()))


def test_good_tokens_still_connect(node: NodeProcess) -> None:
    user = new_user()
    for claims in (
        f'{{"sub":"{user}","exp":{now() + 60}}}',
        f'{{"sub":"{user}","exp":{now() + 60}.5,"iat":{now()}.25,"nbf":{now() - 5}}}',
        f'{{"sub":"{user}","exp":{now() + MAX_LIFETIME - 10},"topics":["news*"]}}',
    ):
        with RawWS.connect(HOST, node.ws_port, f"/ws?token={raw_token(claims)}") as ws:
            assert ws.recv_json(timeout=30)["user"] == user
    with open_ws(node, user, proxy=None) as client:  # what `pushsvc token` mints
        assert client.welcome["user"] == user
    assert token(user)  # the helper mints 1 h tokens: within the maximum


# -- the parser itself ----------------------------------------------------------------------------


def test_jsontext_refuses_what_json_accepts() -> None:
    for text in ("NaN", "[Infinity]", "-Infinity", "1e400", "[" * 65 + "]" * 65):
        json.loads(text)  # Python's json takes these
        with pytest.raises(jsontext.JsonError):
            jsontext.loads(text)
    with pytest.raises(jsontext.JsonError):
        jsontext.loads('{"a": 1}'.encode("utf-16"))
    assert jsontext.loads("[" * 64 + "]" * 64) is not None
    # Brackets inside strings do not count as nesting.
    assert jsontext.loads(json.dumps({"s": "[" * 1000})) == {"s": "[" * 1000}
    assert jsontext.loads('"\\\\[[[["') == "\\[[[["
