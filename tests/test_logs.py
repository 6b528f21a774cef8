"""A node's own output, in both log formats: one event per line, connection ids on
connection events, never a token, an API key or a payload.

A whole session runs against a real node at debug level: connections with
``?token=`` and with ``Authorization: Bearer``, pushes with distinctive payloads,
refused tokens, malformed requests that carry a token, gRPC calls with a bad API
key, a drain. Then the captured stderr/stdout is searched for every secret.
"""

from __future__ import annotations

import base64
import json
import re
import socket
import uuid
from collections.abc import Callable

import grpc
import pytest

from pushsvc_client.v1 import push_pb2
from tests.ferretdb import FerretDB, ferretdb  # noqa: F401
from tests.nodeproc import API_KEY, CLUSTER_KEY, JWT_SECRET, NodeProcess, auth
from tests.rawws import HandshakeRefused, RawWS, http_request
from tests.wsclient import token

TEXT_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ (DEBUG|INFO|WARNING|ERROR|CRITICAL) \S+ ")


def run_session(node: NodeProcess) -> list[str]:
    """Everything a node logs about; returns the strings that must never be logged."""
    mark = uuid.uuid4().hex[:12]
    query_token = token(f"alice-{mark}")
    header_token = token(f"bob-{mark}")
    bad_token = f"not-a-jwt-{mark}"
    forged = token("mallory") + "tampered"
    payloads = [f"payload-{mark}-{i}" for i in range(3)]
    binary_payload = f"binary-{mark}".encode()
    bad_key = f"wrong-api-key-{mark}"

    a = RawWS.connect("127.0.0.1", node.ws_port, f"/ws?token={query_token}&since=0")
    b = RawWS.connect("127.0.0.1", node.ws_port, "/ws", {"Authorization": f"Bearer {header_token}"})
    welcome_a, welcome_b = a.recv_json(), b.recv_json()
    with node.stub() as stub:
        for i, text in enumerate(payloads):
            users = [welcome_a["user"], welcome_b["user"]]
            resp = stub.Push(
                push_pb2.PushRequest(user_ids=users, payload=json.dumps({"s": text}).encode()),
                metadata=auth(),
                timeout=10,
            )
            assert len(resp.seqs) == 2, i
        stub.Push(
            push_pb2.PushRequest(
                user_ids=[welcome_a["user"]],
                payload=binary_payload,
                content_type="application/octet-stream",
            ),
            metadata=auth(),
            timeout=10,
        )
        with pytest.raises(grpc.RpcError) as err:
            stub.Push(
                push_pb2.PushRequest(user_ids=["x"], payload=b'{"k": 1}'),
                metadata=auth(bad_key),
                timeout=10,
            )
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError):  # a payload that fails validation
            stub.Push(
                push_pb2.PushRequest(user_ids=["x"], payload=f"{{bad json {mark}".encode()),
                metadata=auth(),
                timeout=10,
            )
    for ws in (a, b):
        for _ in range(len(payloads)):
            assert ws.recv_json()["type"] == "message"
    assert a.recv_json()["type"] == "message"  # the binary one
    a.send_json({"type": "ack", "seq": 2})
    a.send_text(f'{{"type":"nonsense","echo":"{mark}-frame"}}')
    a.recv_json()  # the error frame
    # Refused handshakes: a bad token in either place, a forged one.
    for path, headers in (
        (f"/ws?token={bad_token}", None),
        ("/ws", {"Authorization": f"Bearer {bad_token}"}),
        (f"/ws?token={forged}", None),
    ):
        with pytest.raises(HandshakeRefused) as refused:
            RawWS.connect("127.0.0.1", node.ws_port, path, headers)
        assert refused.value.status == 401
    # Requests the HTTP layer rejects, with a token in the request line.
    for line in (
        f"G@T /ws?token={query_token} HTTP/1.1\r\nConnection: close\r\n\r\n",
        f"GET /ws?token={query_token} HTTP/1.1\r\nbroken header\r\nConnection: close\r\n\r\n",
        f"GET /ws?token={query_token} HTTP/9.9\r\n\r\n",  # gevent logs the request line
    ):
        with socket.create_connection(("127.0.0.1", node.ws_port), timeout=5) as raw:
            raw.sendall(line.encode())
            raw.settimeout(5)
            answer = b""
            while b"\r\n\r\n" not in answer and (chunk := raw.recv(4096)):
                answer += chunk
            assert answer.startswith((b"HTTP/1.1 4", b"HTTP/1.1 505")), answer
    assert http_request("127.0.0.1", node.ws_port, f"/nope?token={query_token}").status == 404
    a.close()
    b.send_close(1000)
    b.recv_close()
    b.close()
    assert node.stop() == 0
    bodies = [json.dumps({"s": text}).encode() for text in payloads] + [binary_payload]
    return [
        *(base64.b64encode(body).decode().rstrip("=") for body in bodies),  # BSON dumps
        query_token,
        header_token,
        bad_token,
        forged,
        *payloads,
        binary_payload.decode(),
        f"{mark}-frame",
        f"bad json {mark}",
        API_KEY,
        bad_key,
        JWT_SECRET,
        CLUSTER_KEY,
        # the signature part alone must not appear either
        query_token.rsplit(".", 1)[1],
    ]


def check_output(output: str, secrets: list[str], fmt: str) -> list[dict[str, str]]:
    for secret in secrets:
        assert secret not in output, f"{secret!r} leaked into the log"
    lines = [line for line in output.splitlines() if line.strip()]
    assert lines
    events: list[dict[str, str]] = []
    for line in lines:
        if fmt == "json":
            obj = json.loads(line)  # every line is one JSON object
            assert {"ts", "level", "logger", "msg"} <= set(obj), line
            events.append(obj)
        else:
            assert TEXT_LINE.match(line), f"not one event per line: {line!r}"
            msg = line.split(" ", 3)[3]
            events.append({"msg": msg})
    return events


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_embedded_node_logs(fmt: str, node_factory: Callable[..., NodeProcess]) -> None:
    node = node_factory(env={"PUSHSVC_LOG_FORMAT": fmt, "PUSHSVC_LOG_LEVEL": "debug"})
    secrets = run_session(node)
    output = node.log()
    events = check_output(output, secrets, fmt)
    text = "\n".join(e["msg"] for e in events)
    assert "connection opened" in text and "handshake refused" in text, output
    if fmt == "json":
        opened = [e for e in events if e["msg"] == "connection opened"]
        closed = [e for e in events if e["msg"] == "connection closed"]
        assert len(opened) == 2 and len(closed) == 2, output
        assert {e["conn"] for e in opened} == {e["conn"] for e in closed}
        assert all(re.fullmatch(r"[0-9a-f]{12}", e["conn"]) for e in opened)
        refused = [e for e in events if e["msg"] == "handshake refused"]
        assert len(refused) == 3 and all(e["status"].startswith("401") for e in refused)
    else:
        assert re.search(r"connection opened conn=[0-9a-f]{12} ", output), output


def test_fleet_node_logs(
    ferretdb: FerretDB,  # noqa: F811
    node_factory: Callable[..., NodeProcess],
) -> None:
    """With MongoDB at debug level: the driver's command log (which holds message
    bodies) stays out."""
    node = node_factory(
        env={
            "PUSHSVC_LOG_FORMAT": "json",
            "PUSHSVC_LOG_LEVEL": "debug",
            "PUSHSVC_MONGO_URI": ferretdb.uri,
            "PUSHSVC_MONGO_DB": f"logs_{uuid.uuid4().hex[:8]}",
            "PUSHSVC_CLUSTER_KEY": CLUSTER_KEY,
        }
    )
    secrets = run_session(node)
    check_output(node.log(), secrets, "json")
