"""Connection budgets on the WebSocket port, against real nodes (issue 10, point 1).

Deadlines here are asserted only in the direction scheduling cannot break: a slow
socket is never closed *before* its deadline (measured from our connect, which
precedes the node's accept), and it is closed eventually (a generous wait).
Every test also checks that the connections it did not attack were untouched.
"""

from __future__ import annotations

import json
import re
import secrets
import select
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from pushsvc.budget import ConnectionBudget, source_key
from pushsvc_client.v1 import push_pb2
from tests.nodeproc import NodeProcess, auth
from tests.pki import Pki
from tests.rawws import OP_CLOSE, OP_PING, Closed, HandshakeRefused, RawWS, http_request
from tests.waiting import wait_for
from tests.wsclient import Client, open_ws, token

pytestmark = pytest.mark.timeout(180)

HOST = "127.0.0.1"
HANDSHAKE_TIMEOUT = 5.0  # long against any pause of a busy machine, short for the test


def new_user(prefix: str = "u") -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


def push(node: NodeProcess, user: str, data: Any) -> None:
    with node.stub() as stub:
        stub.Push(
            push_pb2.PushRequest(user_ids=[user], payload=json.dumps(data).encode()),
            metadata=auth(),
            timeout=20,
        )


def metric(node: NodeProcess, name: str, labels: str = "") -> float:
    _, body = node.admin_get("/metrics")
    pattern = re.escape(name) + (re.escape("{" + labels + "}") if labels else "") + r" (\S+)"
    match = re.search(r"^" + pattern + r"$", body, re.M)
    return float(match[1]) if match else 0.0


def assert_serves(node: NodeProcess, clients: list[Client]) -> None:
    """Each open client still gets its pushes, and a new one connects."""
    for client in clients:
        user = client.welcome["user"]
        push(node, user, {"to": user})
        assert client.messages(1, timeout=30)[0]["data"] == {"to": user}
    with open_ws(node, new_user("fresh"), proxy=None) as fresh:
        assert fresh.barrier(timeout=30) == []


def parse_answer(raw: bytes) -> tuple[int, dict[str, str], Any]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    assert re.fullmatch(r"HTTP/1\.1 \d{3} [A-Za-z -]+", lines[0]), lines[0]
    fields = {k.lower(): v for k, v in (line.split(": ", 1) for line in lines[1:])}
    assert int(fields["content-length"]) == len(body), raw
    return int(lines[0].split()[1]), fields, json.loads(body)


@dataclass
class SlowSocket:
    """A client that sends its request head a few bytes at a time, forever."""

    sock: socket.socket
    opened: float
    answer: bytes = b""
    closed_at: float | None = None
    sent: int = 0
    script: bytes = field(default=b"")


def open_slow(port: int, user: str, silent: bool = False) -> SlowSocket:
    opened = time.monotonic()  # before the node can have accepted it
    sock = socket.create_connection((HOST, port), timeout=10)
    sock.setblocking(False)
    head = f"GET /ws?token={token(user)} HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
    script = b"" if silent else head.encode() + b"X-Slow: 1\r\n" * 10_000
    return SlowSocket(sock, opened, script=script)


def dribble(slow: list[SlowSocket], until: float, step: int = 4) -> None:
    """Send ``step`` more bytes of each slow socket's head every 0.25 s, and read
    what the node answers, until every socket is closed or ``until``."""
    next_drip = 0.0
    while time.monotonic() < until:
        open_ = [s for s in slow if s.closed_at is None]
        if not open_:
            return
        now = time.monotonic()
        if now >= next_drip:
            next_drip = now + 0.25
            for s in open_:
                if s.sent < len(s.script):
                    try:
                        s.sent += s.sock.send(s.script[s.sent : s.sent + step])
                    except BlockingIOError:
                        pass
                    except OSError:
                        s.closed_at = time.monotonic()
        readable, _, _ = select.select([s.sock for s in open_ if s.closed_at is None], [], [], 0.05)
        for s in open_:
            if s.sock in readable:
                try:
                    chunk = s.sock.recv(65536)
                except BlockingIOError:
                    continue
                except OSError:
                    chunk = b""
                if chunk:
                    s.answer += chunk
                else:
                    s.closed_at = time.monotonic()


def close_all(slow: list[SlowSocket]) -> None:
    for s in slow:
        s.sock.close()


# -- the handshake deadline -------------------------------------------------------------


@pytest.fixture
def deadline_node(node_factory: Callable[..., NodeProcess]) -> NodeProcess:
    return node_factory(
        env={"PUSHSVC_HANDSHAKE_TIMEOUT": str(HANDSHAKE_TIMEOUT), "PUSHSVC_LOG_LEVEL": "info"}
    )


def test_slowloris_is_closed_at_the_deadline_while_others_are_served(
    deadline_node: NodeProcess,
) -> None:
    node = deadline_node
    legit = [open_ws(node, new_user("legit"), proxy=None) for _ in range(5)]
    slow = [open_slow(node.ws_port, new_user("slow")) for _ in range(60)]
    slow += [open_slow(node.ws_port, new_user("silent"), silent=True) for _ in range(40)]
    try:
        # While the slow sockets hang on, everyone else is served.
        more = [open_ws(node, new_user("during"), proxy=None) for _ in range(5)]
        assert_serves(node, legit + more)
        dribble(slow, until=time.monotonic() + HANDSHAKE_TIMEOUT + 60)
        for s in slow:
            assert s.closed_at is not None, "a slow socket is still open"
            assert s.closed_at - s.opened >= HANDSHAKE_TIMEOUT, s.closed_at - s.opened
            if s.answer:  # what fitted in its buffer: a complete 408
                status, _, body = parse_answer(s.answer)
                assert status == 408 and body["message"], body
        assert sum(1 for s in slow if s.answer) >= len(slow) // 2
        assert_serves(node, legit + more)
    finally:
        close_all(slow)
        for c in legit:
            c.close()
    assert metric(node, "pushsvc_handshakes_rejected_total", 'status="408"') == len(slow)
    log = node.log()
    assert "Traceback" not in log, log[-3000:]
    # Floods are not logged line by line at info.
    assert log.count("handshake refused") < 10, log[-3000:]


def test_a_complete_request_in_time_is_not_affected(deadline_node: NodeProcess) -> None:
    """A handshake sent in pieces, all within the deadline, connects."""
    with socket.create_connection((HOST, deadline_node.ws_port), timeout=10) as sock:
        request = upgrade_head([], user=new_user())
        for i in range(0, len(request), 50):
            sock.sendall(request[i : i + 50])
        status, rest = read_head(sock)
        assert status == 101
        with RawWS(sock, rest) as ws:
            assert ws.recv_json(timeout=30)["type"] == "welcome"


# -- the first frame after the upgrade ----------------------------------------------------

FIRST_FRAME_TIMEOUT = 6.0


@pytest.fixture
def first_frame_node(node_factory: Callable[..., NodeProcess]) -> NodeProcess:
    return node_factory(env={"PUSHSVC_FIRST_FRAME_TIMEOUT": str(FIRST_FRAME_TIMEOUT)})


def test_a_client_that_never_sends_a_frame_is_pinged_then_closed(
    first_frame_node: NodeProcess,
) -> None:
    opened = time.monotonic()
    ws = RawWS.connect(HOST, first_frame_node.ws_port, f"/ws?token={token(new_user())}")
    with ws:
        assert ws.recv_json(timeout=30)["type"] == "welcome"
        pinged_at = None
        while True:
            frame = ws.recv_frame(timeout=FIRST_FRAME_TIMEOUT + 60)
            if frame.opcode == OP_PING and pinged_at is None:
                pinged_at = time.monotonic()
            elif frame.opcode == OP_CLOSE:
                closed_at = time.monotonic()
                break
        assert pinged_at is not None and pinged_at - opened >= FIRST_FRAME_TIMEOUT / 2
        assert closed_at - opened >= FIRST_FRAME_TIMEOUT
        assert frame.close_code == 1001, frame
        assert frame.close_reason == "no frame from the client in time", frame
        ws.wait_eof(timeout=30)


def test_a_client_that_answers_the_ping_stays(first_frame_node: NodeProcess) -> None:
    ws = RawWS.connect(HOST, first_frame_node.ws_port, f"/ws?token={token(new_user())}")
    with ws:
        assert ws.recv_json(timeout=30)["type"] == "welcome"
        frame = ws.recv_frame(timeout=FIRST_FRAME_TIMEOUT + 60)
        assert frame.opcode == OP_PING, frame
        ws.send_pong(frame.payload)
        # Well past the deadline, nothing but pings (none here: ping_interval is 25 s).
        with pytest.raises(TimeoutError):
            ws.recv_frame(timeout=FIRST_FRAME_TIMEOUT + 2)
        ws.send_json({"type": "ping"})
        assert ws.recv_json(timeout=30) == {"type": "pong"}


# -- max_connections and the per-address cap -----------------------------------------------


def connect_from(port: int, source: str, user: str) -> RawWS:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((source, 0))
    sock.settimeout(10)
    sock.connect((HOST, port))
    sock.sendall(
        (
            f"GET /ws?token={token(user)} HTTP/1.1\r\nHost: {HOST}\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    answer = b""
    while b"\r\n\r\n" not in answer:
        chunk = sock.recv(65536)
        if not chunk:
            break
        answer += chunk
    head, _, rest = answer.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 101 "):
        while chunk := sock.recv(65536):
            rest += chunk
        sock.close()
        status, fields, body = parse_answer(head + b"\r\n\r\n" + rest)
        raise HandshakeRefused(status, fields, json.dumps(body).encode())
    return RawWS(sock, rest)


def test_max_connections_answers_503_before_the_upgrade(
    node_factory: Callable[..., NodeProcess],
) -> None:
    node = node_factory(env={"PUSHSVC_MAX_CONNECTIONS": "4"})
    held = [open_ws(node, new_user("held"), proxy=None) for _ in range(3)]
    silent = socket.create_connection((HOST, node.ws_port), timeout=10)  # a handshake counts
    try:
        wait_for(lambda: metric(node, "pushsvc_connections") == 3, timeout=30)
        with pytest.raises(HandshakeRefused) as info:
            RawWS.connect(HOST, node.ws_port, f"/ws?token={token(new_user())}", timeout=10)
        refusal = info.value
        assert refusal.status == 503, refusal
        assert 1 <= int(refusal.headers["retry-after"]) <= 60, refusal.headers
        assert "maximum of 4 connections" in json.loads(refusal.body)["message"]
        assert "sec-websocket-accept" not in refusal.headers
        # The admin and gRPC ports are not part of the budget.
        assert node.admin_get("/readyz")[0] == 200
        assert_serves_existing(node, held)
        # A socket that goes makes room for another.
        silent.close()

        def connects() -> bool:
            try:
                ws = RawWS.connect(HOST, node.ws_port, f"/ws?token={token(new_user())}")
            except HandshakeRefused:
                return False
            ws.close()
            return True

        wait_for(connects, timeout=30, what="room after a socket closed")
    finally:
        silent.close()
        for c in held:
            c.close()
    assert metric(node, "pushsvc_handshakes_rejected_total", 'status="503"') >= 1


def assert_serves_existing(node: NodeProcess, clients: list[Client]) -> None:
    for client in clients:
        user = client.welcome["user"]
        push(node, user, {"to": user})
        assert client.messages(1, timeout=30)[0]["data"] == {"to": user}


def test_per_address_cap_answers_429(node_factory: Callable[..., NodeProcess]) -> None:
    node = node_factory(env={"PUSHSVC_MAX_CONNECTIONS_PER_IP": "3"})
    mine = [connect_from(node.ws_port, "127.0.0.1", new_user("mine")) for _ in range(3)]
    try:
        for ws in mine:
            assert ws.recv_json(timeout=30)["type"] == "welcome"
        with pytest.raises(HandshakeRefused) as info:
            connect_from(node.ws_port, "127.0.0.1", new_user("one-too-many"))
        assert info.value.status == 429, info.value
        assert 1 <= int(info.value.headers["retry-after"]) <= 60
        # Another address is not affected, and neither are the connections held.
        other = connect_from(node.ws_port, "127.0.0.2", new_user("other"))
        with other:
            assert other.recv_json(timeout=30)["type"] == "welcome"
        for ws in mine:
            ws.send_json({"type": "ping"})
            assert ws.recv_json(timeout=30) == {"type": "pong"}
    finally:
        for ws in mine:
            ws.close()


def test_per_address_cap_of_zero_is_off(node_factory: Callable[..., NodeProcess]) -> None:
    node = node_factory(env={"PUSHSVC_MAX_CONNECTIONS_PER_IP": "0"})
    many = [connect_from(node.ws_port, "127.0.0.1", new_user()) for _ in range(12)]
    try:
        for ws in many:
            assert ws.recv_json(timeout=30)["type"] == "welcome"
    finally:
        for ws in many:
            ws.close()


# -- header limits ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def limits_node(tmp_path_factory: pytest.TempPathFactory) -> Any:
    proc = NodeProcess(
        tmp_path_factory.mktemp("limits") / "node",
        {"PUSHSVC_MAX_HEADER_FIELDS": "12", "PUSHSVC_MAX_HEADER_BYTES": "2048"},
    )
    proc.start()
    yield proc
    if proc.proc is not None and proc.proc.poll() is None:
        proc.kill()


def raw_exchange(port: int, data: bytes) -> bytes:
    """Send ``data``; everything the node answers until it closes the connection."""
    with socket.create_connection((HOST, port), timeout=10) as sock:
        sock.sendall(data)
        answer = b""
        sock.settimeout(30)
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except ConnectionResetError:
            pass
        return answer


def read_head(sock: socket.socket) -> tuple[int, bytes]:
    """The status of the answer on ``sock`` and the bytes after its head."""
    answer = b""
    while b"\r\n\r\n" not in answer:
        chunk = sock.recv(65536)
        if not chunk:
            raise Closed(f"closed during the answer: {answer!r}")
        answer += chunk
    head, _, rest = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), rest


def upgrade_head(extra: list[str], user: str = "limits") -> bytes:
    lines = [
        f"GET /ws?token={token(user)} HTTP/1.1",
        f"Host: {HOST}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
        *extra,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def test_too_many_header_fields_is_431(limits_node: NodeProcess) -> None:
    with open_ws(limits_node, new_user("bystander"), proxy=None) as bystander:
        fields = [f"X-Field-{i}: {i}" for i in range(8)]  # 5 + 8 = 13 fields
        status, _, body = parse_answer(raw_exchange(limits_node.ws_port, upgrade_head(fields)))
        assert status == 431 and "12 header fields" in body["message"], body
        with socket.create_connection((HOST, limits_node.ws_port), timeout=30) as sock:
            sock.sendall(upgrade_head(fields[:7]))  # 12 fields: within the limit
            assert read_head(sock)[0] == 101
        assert bystander.barrier(timeout=30) == []


def test_a_large_head_is_431_and_a_long_request_line_414(limits_node: NodeProcess) -> None:
    with open_ws(limits_node, new_user("bystander"), proxy=None) as bystander:
        big = upgrade_head(["Cookie: " + "c" * 3000])
        status, _, body = parse_answer(raw_exchange(limits_node.ws_port, big))
        assert status == 431 and body["message"], body
        long_line = b"GET /ws?token=" + b"t" * 5000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
        status, _, body = parse_answer(raw_exchange(limits_node.ws_port, long_line))
        assert status == 414 and body["message"], body
        # A head never finished but over the limit is refused without waiting.
        status, _, _ = parse_answer(raw_exchange(limits_node.ws_port, b"GET /" + b"a" * 5000))
        assert status == 414
        assert bystander.barrier(timeout=30) == []
    log = limits_node.log()
    assert "request refused" in log and "Traceback" not in log


def test_refusals_are_plain_json_on_other_paths(limits_node: NodeProcess) -> None:
    resp = http_request(HOST, limits_node.ws_port, "/nope")
    assert resp.status == 404 and json.loads(resp.body)["message"]


# -- the budget itself ------------------------------------------------------------------------


def test_budget_counts_per_source() -> None:
    budget = ConnectionBudget(max_total=4, max_per_source=2)
    assert budget.admit("10.0.0.1") is None
    assert budget.admit("10.0.0.1") is None
    over = budget.admit("10.0.0.1")
    assert over is not None and over.status == 429 and 1 <= over.retry_after <= 5
    assert budget.admit("10.0.0.2") is None
    assert budget.admit("2001:db8::1") is None
    full = budget.admit("10.0.0.3")
    assert full is not None and full.status == 503
    budget.release("10.0.0.1")
    assert budget.admit("10.0.0.3") is None
    assert budget.total == 4


def test_ipv6_counts_by_64_and_mapped_ipv4_as_ipv4() -> None:
    assert source_key("2001:db8:1:2:aaaa::1") == source_key("2001:db8:1:2:bbbb::2")
    assert source_key("2001:db8:1:2::1") != source_key("2001:db8:1:3::1")
    assert source_key("::ffff:10.1.2.3") == "10.1.2.3"
    assert source_key("fe80::1%eth0") == source_key("fe80::2")
    assert source_key("not an address") == "not an address"


# -- the same budgets with TLS (wss://) ------------------------------------------------------


def test_tls_handshakes_count_against_the_budget_and_get_their_503(
    node_factory: Callable[..., NodeProcess], tls_env: dict[str, str], pki: Pki
) -> None:
    """A socket still in its TLS handshake holds a place in max_connections; one over
    the budget gets its 503 (and Retry-After) inside TLS, not in clear."""
    node = node_factory(env={**tls_env, "PUSHSVC_MAX_CONNECTIONS": "2"})
    context = ssl.create_default_context(cafile=str(pki.ca))
    silent = [socket.create_connection((HOST, node.ws_port), timeout=30) for _ in range(2)]
    try:

        def refused() -> bytes | None:
            with (
                socket.create_connection((HOST, node.ws_port), timeout=30) as raw,
                context.wrap_socket(raw, server_hostname=HOST) as tls,
            ):
                tls.sendall(upgrade_head([], user=new_user()))
                answer = b""
                try:
                    while chunk := tls.recv(65536):
                        answer += chunk
                except (ConnectionResetError, ssl.SSLError):
                    pass
                return answer if answer.startswith(b"HTTP/1.1 503 ") else None

        answer = wait_for(refused, timeout=30, what="a 503 over TLS")
        status, fields, body = parse_answer(answer)
        assert status == 503 and 1 <= int(fields["retry-after"]) <= 60, fields
        assert "maximum of 2 connections" in body["message"], body
    finally:
        for sock in silent:
            sock.close()
    # The places are given back: a wss:// client connects.
    with open_ws(node, new_user("after"), proxy=None) as client:
        assert client.barrier(timeout=30) == []
