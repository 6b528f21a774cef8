"""Malformed input on every listener, and nothing on stderr but formatted events
(issue 10, point 6).

A node in each log format takes a flood of malformed requests on its WebSocket,
admin and gRPC ports (and malformed frames after good handshakes), from many
sockets at once. Then every line it wrote is parsed: one JSON object with ts,
level, logger and msg (``json``), or one ``<ts> <LEVEL> <logger> <msg>`` event
(``text``); none is an error, none carries a traceback; and the node served a
client afterwards.
"""

from __future__ import annotations

import functools
import json
import os
import random
import re
import socket
import ssl
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest

from pushsvc_client.v1 import push_pb2
from tests.nodeproc import NodeProcess, auth
from tests.rawws import OP_CLOSE, OP_PING, OP_TEXT, Closed, RawWS, encode_frame
from tests.wsclient import open_ws, token

pytestmark = pytest.mark.timeout(300)

TEXT_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ (DEBUG|INFO|WARNING) \S+ \S")

rng = random.Random(10)


def http_garbage(port: int) -> list[bytes]:
    """Requests every HTTP/1.1 server must refuse (and some it must survive)."""
    tok = token("flood")
    return [
        b"garbage\r\n\r\n",
        bytes(rng.getrandbits(8) for _ in range(3000)) + b"\r\n\r\n",
        b"\x00" * 100 + b"\r\n\r\n",
        b"GET / HTTP/1.1\r\n" + b"X: " + b"a" * 70_000 + b"\r\n\r\n",
        b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(300)) + b"\r\n",
        b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\n\r\n",
        b"GET /x HTTP/9.9\r\n\r\n",
        b"GET / HTTP/1.\xff\r\n\r\n",
        b"GET /%zz%00 HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n12345",
        b"GET / HTTP/1.1\r\nHost: x\r\n folded: line\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost : x\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: \xff\xfe\r\nX-\xff: 1\r\n\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + os.urandom(200),
        b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + os.urandom(200),
        b"GET /ws HTTP/1.0\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
        f"GET /ws?token={tok} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Version: 8\r\n\r\n".encode(),
        f"GET /ws?token={tok} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: x\r\nSec-WebSocket-Version: 13\r\n\r\n".encode(),
        f"GET /ws?token={tok}%ff%fe&since=%00 HTTP/1.1\r\nHost: x\r\n\r\n".encode(),
        b"GET /ws?token=" + b"e" * 8000 + b" HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n" * 50,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n" * 20,
        b"\r\n" * 5000,
        b"GET",  # then the client goes away
    ]


def grpc_garbage() -> list[bytes]:
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    settings = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
    return [
        preface + os.urandom(300),
        preface + settings + b"\x00\x00\x05\x01\x05\x00\x00\x00\x01" + os.urandom(5),
        # HEADERS with a literal ":status: x": gRPC's core has a line at ERROR for it.
        preface + settings + b"\x00\x00\x03\x01\x05\x00\x00\x00\x01" + b"\x08\x01x",
        preface + settings + b"\x00\xff\xff\x00\x00\x00\x00\x00\x01" + os.urandom(2000),
        preface + b"\x00\x00\x08\x07\x00\x00\x00\x00\x00" + os.urandom(8),  # GOAWAY
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        os.urandom(5000),
        b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + os.urandom(200),
    ]


def send(port: int, data: bytes) -> None:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.settimeout(10)
            try:
                sock.sendall(data)
                sock.shutdown(socket.SHUT_WR)
                while sock.recv(65536):
                    pass
            except OSError:
                pass  # reset or timed out: the node may cut a hostile client
    except OSError:
        pass


def tls_hello(port: int) -> None:
    """A real TLS client on a cleartext port."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
            context.wrap_socket(raw, server_hostname="localhost"),
        ):
            pass
    except (OSError, ssl.SSLError):
        pass


def bad_frames(node: NodeProcess) -> None:
    """Good handshakes, then frames that break RFC 6455 or the client protocol."""
    frames = [
        encode_frame(0x3, b"x"),
        encode_frame(OP_TEXT, b"x", rsv=0x40),
        encode_frame(OP_TEXT, b'{"type":"ping","x":"\xff"}'),
        encode_frame(OP_PING, b"p" * 126),
        encode_frame(OP_CLOSE, b"\x03"),
        encode_frame(OP_CLOSE, b"\x03\xed"),
        encode_frame(OP_CLOSE, b"\x03\xe8\xff"),
        encode_frame(OP_TEXT, b"", length=2**63 - 1),
        encode_frame(OP_TEXT, b"[" * 5000),
        encode_frame(OP_TEXT, b'{"type":"ack","seq":1e999}'),
        encode_frame(OP_TEXT, b'{"type":"ack","seq":NaN}'),
        encode_frame(OP_TEXT, b'{"type":"subscribe","topic":"a\\n"}'),
        encode_frame(OP_TEXT, b'{"type":"ack","seq":' + b"9" * 5000 + b"}"),
        encode_frame(OP_TEXT, b"x", mask=False),
        encode_frame(OP_TEXT, os.urandom(100)),
        os.urandom(500),
    ]
    for data in frames:
        try:
            ws = RawWS.connect("127.0.0.1", node.ws_port, f"/ws?token={token('frames')}")
        except OSError:
            continue
        with ws:
            try:
                ws.send_raw(data)
                ws.send_json({"type": "ping"})
                while True:  # until the pong (the frame was refused) or the close
                    frame = ws.recv_frame(timeout=30)
                    if frame.opcode == OP_CLOSE:
                        break
                    if frame.opcode == OP_TEXT and frame.json().get("type") == "pong":
                        break
            except (OSError, Closed):
                pass


def flood(node: NodeProcess) -> None:
    jobs: list[Callable[[], None]] = []
    for port in (node.ws_port, node.admin_port):
        jobs += [functools.partial(send, port, data) for data in http_garbage(port)]
        jobs.append(functools.partial(tls_hello, port))
    jobs += [functools.partial(send, node.grpc_port, data) for data in grpc_garbage()]
    jobs.append(functools.partial(tls_hello, node.grpc_port))
    jobs *= 3
    rng.shuffle(jobs)
    jobs.append(functools.partial(bad_frames, node))
    with ThreadPoolExecutor(max_workers=32) as pool:
        for future in [pool.submit(job) for job in jobs]:
            future.result(timeout=120)


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_every_line_is_an_event_under_a_flood(
    fmt: str, node_factory: Callable[..., NodeProcess]
) -> None:
    node = node_factory(
        env={
            "PUSHSVC_LOG_FORMAT": fmt,
            "PUSHSVC_LOG_LEVEL": "debug",
            "PUSHSVC_HANDSHAKE_TIMEOUT": "5",
        }
    )
    flood(node)
    # Still serving: a connection, a push, a probe.
    with open_ws(node, "after-the-flood", proxy=None) as client, node.stub() as stub:
        stub.Push(
            push_pb2.PushRequest(user_ids=["after-the-flood"], payload=b'{"ok":1}'),
            metadata=auth(),
            timeout=20,
        )
        assert client.messages(1, timeout=30)[0]["data"] == {"ok": 1}
    assert node.admin_get("/readyz")[0] == 200
    assert node.stop() == 0
    lines = [line for line in node.log().splitlines() if line.strip()]
    assert len(lines) > 20
    refused = 0
    for line in lines:
        if fmt == "json":
            event = json.loads(line)
            assert isinstance(event, dict), line
            assert {"ts", "level", "logger", "msg"} <= set(event), line
            assert event["level"] in ("DEBUG", "INFO", "WARNING"), line
            assert "exc" not in event and "stack" not in event, line
            refused += event["msg"] in ("request refused", "handshake refused")
        else:
            assert TEXT_LINE.match(line), f"not one formatted event: {line[:300]!r}"
            assert "exc=" not in line, line
            refused += " request refused " in line or " handshake refused " in line
    assert refused > 0
