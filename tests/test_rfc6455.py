"""RFC 6455 conformance of a real node, section by section, in the spirit of the
Autobahn testsuite's server cases (issue 10, point 2).

The node does not echo: a text message is a client frame, so ``{"type":"ping"}``
(padded with JSON white space to any length) is answered with
``{"type":"pong"}``, which shows the message arrived whole. Every violation must
be answered with a close frame carrying the code the RFC asks for, then the end
of the TCP connection; a bystander connection opened first must see none of it.

Case numbers follow Autobahn's sections: 1 framing, 2 pings and pongs, 3
reserved bits, 4 opcodes, 5 fragmentation, 6 UTF-8, 7 the close handshake, 9
limits; "4.2" is the opening handshake (RFC 6455 4.2.1).
"""

from __future__ import annotations

import json
import secrets
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from pushsvc_client.v1 import push_pb2
from tests.nodeproc import NodeProcess, auth
from tests.rawws import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    Closed,
    Frame,
    RawWS,
    encode_frame,
    http_request,
)
from tests.wsclient import Client, open_ws, token

pytestmark = pytest.mark.timeout(120)

HOST = "127.0.0.1"
MAX_FRAME = 70_000
PING = b'{"type":"ping"}'


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    proc = NodeProcess(
        tmp_path_factory.mktemp("rfc6455") / "node",
        {"PUSHSVC_MAX_FRAME_BYTES": str(MAX_FRAME), "PUSHSVC_ABUSE_LIMIT": "1000"},
    )
    proc.start()
    yield proc
    if proc.proc is not None and proc.proc.poll() is None:
        proc.kill()
    log = proc.log()
    assert "Traceback" not in log, log[-3000:]


@pytest.fixture(scope="module")
def bystander(node: NodeProcess) -> Iterator[Client]:
    """Open before every case and checked after all of them."""
    client = open_ws(node, f"bystander-{secrets.token_hex(3)}", proxy=None)
    yield client
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


@pytest.fixture
def ws(node: NodeProcess, bystander: Client) -> Iterator[RawWS]:
    conn = RawWS.connect(HOST, node.ws_port, f"/ws?token={token(f'c-{secrets.token_hex(3)}')}")
    assert conn.recv_json(timeout=30)["type"] == "welcome"
    with conn:
        yield conn


def padded(n: int) -> bytes:
    """A ping client frame of exactly n bytes."""
    return PING + b" " * (n - len(PING))


def next_non_ping(ws: RawWS) -> Frame:
    while True:
        frame = ws.recv_frame(timeout=30)
        if frame.opcode != OP_PING:
            return frame


def expect_pong_json(ws: RawWS) -> None:
    frame = next_non_ping(ws)
    assert frame.opcode == OP_TEXT and frame.json() == {"type": "pong"}, frame


def expect_close(ws: RawWS, code: int) -> Frame:
    """The server's close frame with ``code``, then the end of the connection."""
    while True:
        try:
            frame = ws.recv_frame(timeout=30)
        except Closed:
            raise AssertionError(f"connection ended without a close frame ({code})") from None
        if frame.opcode == OP_CLOSE:
            break
        assert frame.opcode in (OP_PING, OP_PONG, OP_TEXT), frame
    assert frame.close_code == code, (frame.close_code, frame.close_reason)
    ws.wait_eof(timeout=30)  # the server closes TCP after the close handshake (7.1.1)
    return frame


def send_chopped(ws: RawWS, data: bytes) -> None:
    """One byte per TCP segment."""
    ws.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for i in range(len(data)):
        ws.send_raw(data[i : i + 1])


# -- 1 framing ---------------------------------------------------------------------------


@pytest.mark.parametrize("size", [15, 125, 126, 127, 128, 65535, 65536, MAX_FRAME])
def test_1_text_messages_of_every_length_encoding(ws: RawWS, size: int) -> None:
    ws.send_frame(OP_TEXT, padded(size))
    expect_pong_json(ws)


def test_1_binary_messages_are_refused_by_the_application(ws: RawWS) -> None:
    for size in (0, 125, 65536):
        ws.send_frame(OP_BINARY, b"\xfe" * size)
        frame = next_non_ping(ws)
        assert frame.json()["code"] == "bad_request", frame
    ws.send_frame(OP_TEXT, PING)
    expect_pong_json(ws)


def test_1_a_frame_sent_one_byte_at_a_time(ws: RawWS) -> None:
    send_chopped(ws, encode_frame(OP_TEXT, padded(300)))
    expect_pong_json(ws)


def test_1_a_frame_sent_with_the_handshake(node: NodeProcess) -> None:
    """Bytes right after the request head are the first frame (no round trip)."""
    with socket.create_connection((HOST, node.ws_port), timeout=30) as sock:
        head = (
            f"GET /ws?token={token('eager')} HTTP/1.1\r\nHost: {HOST}\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
        sock.sendall(head + encode_frame(OP_TEXT, PING))
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += sock.recv(4096)
        status, _, rest = answer.partition(b"\r\n\r\n")
        assert status.startswith(b"HTTP/1.1 101 ")
        with RawWS(sock, rest) as ws:
            assert ws.recv_json(timeout=30)["type"] == "welcome"
            assert ws.recv_json(timeout=30) == {"type": "pong"}


# -- 2 pings and pongs -------------------------------------------------------------------


@pytest.mark.parametrize("payload", [b"", b"hello", bytes(range(125)), b"\xff\xfe\x00"])
def test_2_ping_is_answered_with_its_payload(ws: RawWS, payload: bytes) -> None:
    ws.send_ping(payload)
    frame = ws.recv_frame(timeout=30)
    assert (frame.opcode, frame.payload) == (OP_PONG, payload)


def test_2_ping_over_125_bytes_is_1002(ws: RawWS) -> None:
    ws.send_ping(b"x" * 126)
    expect_close(ws, 1002)


def test_2_unsolicited_pong_is_ignored(ws: RawWS) -> None:
    ws.send_pong(b"unsolicited")
    ws.send_pong(b"")
    ws.send_frame(OP_TEXT, PING)
    expect_pong_json(ws)


def test_2_ten_pings_get_ten_pongs_in_order(ws: RawWS) -> None:
    payloads = [f"ping {i}".encode() for i in range(10)]
    ws.send_raw(b"".join(encode_frame(OP_PING, p) for p in payloads))
    got = [ws.recv_frame(timeout=30) for _ in payloads]
    assert [(f.opcode, f.payload) for f in got] == [(OP_PONG, p) for p in payloads]


def test_2_ping_sent_one_byte_at_a_time(ws: RawWS) -> None:
    send_chopped(ws, encode_frame(OP_PING, b"chopped"))
    frame = ws.recv_frame(timeout=30)
    assert (frame.opcode, frame.payload) == (OP_PONG, b"chopped")


# -- 3 reserved bits ---------------------------------------------------------------------


@pytest.mark.parametrize("rsv", [0x40, 0x20, 0x10, 0x70])
@pytest.mark.parametrize("opcode", [OP_TEXT, OP_BINARY, OP_PING])
def test_3_reserved_bits_are_1002(ws: RawWS, rsv: int, opcode: int) -> None:
    ws.send_frame(opcode, PING if opcode == OP_TEXT else b"x", rsv=rsv)
    expect_close(ws, 1002)


def test_3_a_valid_message_then_reserved_bits(ws: RawWS) -> None:
    ws.send_raw(encode_frame(OP_TEXT, PING) + encode_frame(OP_TEXT, PING, rsv=0x40))
    expect_pong_json(ws)
    expect_close(ws, 1002)


# -- 4 opcodes ---------------------------------------------------------------------------


@pytest.mark.parametrize("opcode", [0x3, 0x4, 0x5, 0x6, 0x7, 0xB, 0xC, 0xD, 0xE, 0xF])
def test_4_reserved_opcodes_are_1002(ws: RawWS, opcode: int) -> None:
    ws.send_raw(encode_frame(OP_TEXT, PING) + encode_frame(opcode, b"reserved"))
    expect_pong_json(ws)
    expect_close(ws, 1002)


def test_4_unmasked_frames_are_1002(ws: RawWS) -> None:
    ws.send_frame(OP_TEXT, PING, mask=False)
    expect_close(ws, 1002)


def test_4_non_minimal_lengths_are_1002(ws: RawWS) -> None:
    key = b"\x00\x00\x00\x00"
    ws.send_raw(bytes((0x81, 0x80 | 126)) + len(PING).to_bytes(2, "big") + key + PING)
    expect_close(ws, 1002)


# -- 5 fragmentation -----------------------------------------------------------------------


@pytest.mark.parametrize("opcode", [OP_PING, OP_PONG])
def test_5_fragmented_control_frames_are_1002(ws: RawWS, opcode: int) -> None:
    ws.send_frame(opcode, b"frag", fin=False)
    ws.send_frame(OP_CONT, b"ment")
    expect_close(ws, 1002)


def test_5_a_message_in_two_fragments(ws: RawWS) -> None:
    ws.send_frame(OP_TEXT, PING[:5], fin=False)
    ws.send_frame(OP_CONT, PING[5:])
    expect_pong_json(ws)


def test_5_a_message_in_one_byte_fragments_chopped(ws: RawWS) -> None:
    frames = [
        encode_frame(OP_TEXT if i == 0 else OP_CONT, PING[i : i + 1], fin=False)
        for i in range(len(PING))
    ]
    send_chopped(ws, b"".join(frames) + encode_frame(OP_CONT, b""))
    expect_pong_json(ws)


def test_5_pings_between_fragments_are_answered_first(ws: RawWS) -> None:
    ws.send_raw(
        encode_frame(OP_TEXT, PING[:4], fin=False)
        + encode_frame(OP_PING, b"in between")
        + encode_frame(OP_CONT, PING[4:9], fin=False)
        + encode_frame(OP_PONG, b"also")
        + encode_frame(OP_CONT, PING[9:])
    )
    frame = ws.recv_frame(timeout=30)
    assert (frame.opcode, frame.payload) == (OP_PONG, b"in between")
    expect_pong_json(ws)


@pytest.mark.parametrize("fin", [True, False])
def test_5_continuation_without_a_message_is_1002(ws: RawWS, fin: bool) -> None:
    ws.send_frame(OP_CONT, b"orphan", fin=fin)
    expect_close(ws, 1002)


def test_5_continuation_after_a_complete_message_is_1002(ws: RawWS) -> None:
    ws.send_raw(encode_frame(OP_TEXT, PING) + encode_frame(OP_CONT, b"late"))
    expect_pong_json(ws)
    expect_close(ws, 1002)


@pytest.mark.parametrize("second", [OP_TEXT, OP_BINARY])
def test_5_a_new_message_inside_a_fragmented_one_is_1002(ws: RawWS, second: int) -> None:
    ws.send_frame(OP_TEXT, PING[:5], fin=False)
    ws.send_frame(second, PING[5:])
    expect_close(ws, 1002)


# -- 6 UTF-8 ---------------------------------------------------------------------------------

VALID = ["κόσμε", "\U0001f600 \u00e9\u0301", "\u0000\u007f\u0080\u07ff\u0800\uffff", "\U0010ffff"]


def text_ping(s: str) -> bytes:
    return json.dumps({"type": "ping", "s": s}, ensure_ascii=False).encode()


@pytest.mark.parametrize("text", VALID)
def test_6_valid_utf8_whole_and_split_at_every_byte(ws: RawWS, text: str) -> None:
    data = text_ping(text)
    ws.send_frame(OP_TEXT, data)
    expect_pong_json(ws)
    for cut in range(1, len(data)):
        ws.send_raw(
            encode_frame(OP_TEXT, data[:cut], fin=False) + encode_frame(OP_CONT, data[cut:])
        )
        expect_pong_json(ws)


INVALID = {
    "0xff": b"\xff",
    "overlong slash": b"\xc0\xaf",
    "overlong 3-byte": b"\xe0\x80\xaf",
    "surrogate": b"\xed\xa0\x80",
    "above U+10FFFF": b"\xf4\x90\x80\x80",
    "lone continuation": b"\x80",
    "cut at the end": b"\xce",
    "in the middle": "κόσμε".encode() + b"\xed\xa0\x80" + b"edited",
}


@pytest.mark.parametrize("case", sorted(INVALID))
def test_6_invalid_utf8_is_1007(ws: RawWS, case: str) -> None:
    ws.send_frame(OP_TEXT, b'{"type":"ping","s":"' + INVALID[case] + b'"}')
    expect_close(ws, 1007)


@pytest.mark.parametrize("case", sorted(INVALID))
def test_6_invalid_utf8_across_fragments_is_1007(ws: RawWS, case: str) -> None:
    bad = b'{"type":"ping","s":"' + INVALID[case] + b'"}'
    for i in range(len(bad)):
        try:
            ws.send_frame(OP_TEXT if i == 0 else OP_CONT, bad[i : i + 1], fin=i == len(bad) - 1)
        except OSError:
            break  # the node closed already
        if b'"' + INVALID[case] in bad[: i + 1] and case != "cut at the end":
            break  # never finished: the node must not wait for the end (fail fast)
    expect_close(ws, 1007)


def test_6_binary_is_not_utf8_checked(ws: RawWS) -> None:
    ws.send_frame(OP_BINARY, b"\xff\xfe")
    assert next_non_ping(ws).json()["code"] == "bad_request"


# -- 7 the close handshake -------------------------------------------------------------------


def test_7_close_without_a_code_is_answered_and_tcp_closed(ws: RawWS) -> None:
    ws.send_frame(OP_CLOSE, b"")
    assert expect_close(ws, 1000).opcode == OP_CLOSE


def test_7_nothing_after_the_close_frame_is_read(ws: RawWS) -> None:
    ws.send_raw(
        encode_frame(OP_CLOSE, (1000).to_bytes(2, "big") + b"bye")
        + encode_frame(OP_TEXT, PING)
        + encode_frame(OP_PING, b"after")
        + b"\xff garbage"
    )
    frame = ws.recv_frame(timeout=30)
    assert frame.opcode == OP_CLOSE and frame.close_code == 1000, frame
    ws.wait_eof(timeout=30)


def test_7_a_message_then_close(ws: RawWS) -> None:
    ws.send_raw(encode_frame(OP_TEXT, PING) + encode_frame(OP_CLOSE, b"\x03\xe8"))
    expect_pong_json(ws)
    expect_close(ws, 1000)


def test_7_close_in_the_middle_of_a_fragmented_message(ws: RawWS) -> None:
    ws.send_frame(OP_TEXT, PING[:4], fin=False)
    ws.send_close(1000)
    expect_close(ws, 1000)


@pytest.mark.parametrize(
    "code",
    [
        1000,
        1001,
        1002,
        1003,
        1007,
        1008,
        1009,
        1010,
        1011,
        1012,
        1013,
        1014,
        3000,
        3999,
        4000,
        4999,
    ],
)
def test_7_valid_close_codes(ws: RawWS, code: int) -> None:
    ws.send_close(code, "done")
    expect_close(ws, 1000)


@pytest.mark.parametrize(
    "code", [0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535]
)
def test_7_invalid_close_codes_are_1002(ws: RawWS, code: int) -> None:
    ws.send_frame(OP_CLOSE, code.to_bytes(2, "big"))
    expect_close(ws, 1002)


def test_7_close_with_a_1_byte_payload_is_1002(ws: RawWS) -> None:
    ws.send_frame(OP_CLOSE, b"\x03")
    expect_close(ws, 1002)


def test_7_close_reason_of_123_bytes(ws: RawWS) -> None:
    ws.send_frame(OP_CLOSE, (1000).to_bytes(2, "big") + "é".encode() * 61 + b"x")
    expect_close(ws, 1000)


def test_7_close_reason_not_utf8_is_1007(ws: RawWS) -> None:
    ws.send_frame(OP_CLOSE, (1000).to_bytes(2, "big") + b"\xce\xba\xe1\xbd\xb9\xed\xa0\x80")
    expect_close(ws, 1007)


def test_7_close_payload_over_125_bytes_is_1002(ws: RawWS) -> None:
    ws.send_frame(OP_CLOSE, (1000).to_bytes(2, "big") + b"x" * 124)
    expect_close(ws, 1002)


# -- 9 limits --------------------------------------------------------------------------------


def test_9_a_message_over_the_limit_is_1009(ws: RawWS) -> None:
    ws.send_frame(OP_TEXT, padded(MAX_FRAME + 1))
    expect_close(ws, 1009)


def test_9_fragments_adding_up_over_the_limit_are_1009(ws: RawWS) -> None:
    half = MAX_FRAME // 2 + 1
    ws.send_frame(OP_TEXT, PING + b" " * (half - len(PING)), fin=False)
    ws.send_frame(OP_CONT, b" " * half)
    expect_close(ws, 1009)


def test_9_a_huge_announced_length_is_refused_at_once(ws: RawWS) -> None:
    ws.send_raw(bytes((0x81, 0x80 | 127)) + (2**62).to_bytes(8, "big") + b"\x00" * 4)
    expect_close(ws, 1009)


# -- 4.2 the opening handshake -----------------------------------------------------------------


def handshake(node: NodeProcess, lines: list[str]) -> tuple[str, dict[str, str], Any]:
    """Send a raw request head; the answer's status line, fields and JSON body."""
    with socket.create_connection((HOST, node.ws_port), timeout=30) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    status, *rest = head.decode("latin-1").split("\r\n")
    fields = {k.lower(): v for k, v in (line.split(": ", 1) for line in rest)}
    assert int(fields["content-length"]) == len(body)
    assert fields["content-type"] == "application/json"
    parsed = json.loads(body)
    assert parsed["message"], parsed
    return status, fields, parsed


def upgrade_lines(version: str = "HTTP/1.1", **fields: str) -> list[str]:
    base = {
        "Host": HOST,
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version": "13",
    }
    base.update({k.replace("_", "-"): v for k, v in fields.items()})
    return [f"GET /ws?token={token('hs')} {version}"] + [f"{k}: {v}" for k, v in base.items() if v]


@pytest.mark.parametrize("version", ["8", "12", "14", "13, 8", ""])
def test_4_2_only_version_13_is_accepted(node: NodeProcess, version: str) -> None:
    status, fields, _ = handshake(node, upgrade_lines(Sec_WebSocket_Version=version))
    assert status == "HTTP/1.1 426 Upgrade Required", status
    assert fields["sec-websocket-version"] == "13"


def test_4_2_http_1_0_gets_a_correct_status_line(node: NodeProcess) -> None:
    status, _, body = handshake(node, upgrade_lines("HTTP/1.0"))
    assert status == "HTTP/1.1 400 Bad Request", status
    assert "HTTP/1.1" in body["message"]


@pytest.mark.parametrize(
    ("fields", "status"),
    [
        ({"Connection": "keep-alive"}, "HTTP/1.1 400 Bad Request"),
        ({"Sec_WebSocket_Key": ""}, "HTTP/1.1 400 Bad Request"),
        ({"Sec_WebSocket_Key": "too-short"}, "HTTP/1.1 400 Bad Request"),
        ({"Host": ""}, "HTTP/1.1 400 Bad Request"),
    ],
)
def test_4_2_malformed_upgrades(node: NodeProcess, fields: dict[str, str], status: str) -> None:
    assert handshake(node, upgrade_lines(**fields))[0] == status


def test_4_2_an_upgrade_by_post_is_405(node: NodeProcess) -> None:
    lines = upgrade_lines()
    lines[0] = lines[0].replace("GET", "POST", 1)
    status, fields, _ = handshake(node, lines)
    assert status == "HTTP/1.1 405 Method Not Allowed" and fields["allow"] == "GET"


def test_4_2_a_plain_get_is_426(node: NodeProcess) -> None:
    resp = http_request(HOST, node.ws_port, "/ws")
    assert resp.status == 426 and resp.headers["upgrade"] == "websocket"
    assert json.loads(resp.body)["message"]


def test_4_2_no_extension_or_subprotocol_is_negotiated(node: NodeProcess) -> None:
    extra = {
        "Sec-WebSocket-Extensions": "permessage-deflate; client_max_window_bits",
        "Sec-WebSocket-Protocol": "chat, superchat",
    }
    with socket.create_connection((HOST, node.ws_port), timeout=30) as sock:
        lines = upgrade_lines() + [f"{k}: {v}" for k, v in extra.items()]
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += sock.recv(4096)
    head = answer.partition(b"\r\n\r\n")[0].decode().lower()
    assert head.startswith("http/1.1 101 switching protocols")
    assert "sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo=" in head
    assert "sec-websocket-extensions" not in head and "sec-websocket-protocol" not in head
