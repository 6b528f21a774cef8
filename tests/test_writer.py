"""The per-connection writer (``pushsvc/writer.py``) on a real socket pair.

The far end of the pair plays the client: it reads (or does not read) the
bytes and parses them as RFC 6455 frames, so every test checks the stream a
client would see, frame boundaries included.
"""

from __future__ import annotations

import gc
import socket
import ssl
import weakref
from collections.abc import Iterator

import gevent
import gevent.socket
import gevent.ssl
import pytest

from pushsvc.protocol import OP_CLOSE, OP_PING, OP_TEXT, wire_close, wire_frame, wire_text
from pushsvc.writer import Writer
from tests.pki import Issued, Pki


class Owner:
    def __init__(self) -> None:
        self.written: list[tuple[str, int, float | None]] = []
        self.drained = 0

    def frame_written(self, message_id: str, seq: int, expires_at: float | None) -> None:
        self.written.append((message_id, seq, expires_at))

    def on_drained(self) -> None:
        self.drained += 1


Pair = tuple[socket.socket, socket.socket]


@pytest.fixture
def pair() -> Iterator[Pair]:
    a, b = gevent.socket.socketpair()
    for s in (a, b):  # small buffers: the writer meets a full socket quickly
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    yield a, b
    a.close()
    b.close()


def frames(data: bytes) -> list[tuple[int, bytes]]:
    """Parse server frames (unmasked); fails on a cut frame."""
    out = []
    i = 0
    while i < len(data):
        op = data[i] & 0x0F
        n = data[i + 1] & 0x7F
        i += 2
        if n == 126:
            n = int.from_bytes(data[i : i + 2], "big")
            i += 2
        elif n == 127:
            n = int.from_bytes(data[i : i + 8], "big")
            i += 8
        assert i + n <= len(data), "a frame was cut"
        out.append((op, data[i : i + n]))
        i += n
    return out


def read_all(sock: socket.socket) -> bytes:
    chunks: list[bytes] = []
    while True:
        with gevent.Timeout(10):
            chunk = sock.recv(65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def test_frames_go_straight_out_and_report_receipts(
    pair: Pair,
) -> None:
    a, b = pair
    owner = Owner()
    w = Writer(a, 16, owner)
    w.release(wire_text('{"type":"welcome"}'))
    assert w.write(wire_text('{"n":1}'), ("m1", 1, 1e9))
    assert w.write_many([(wire_text('{"n":2}'), ("m2", 2, None)), (wire_text('{"n":3}'), None)])
    assert w.backlog == 0  # nothing queued: the socket took it all
    assert owner.written == [("m1", 1, 1e9), ("m2", 2, None)]
    with gevent.Timeout(10):
        got = frames(b.recv(65536))
    assert [p for _, p in got] == [b'{"type":"welcome"}', b'{"n":1}', b'{"n":2}', b'{"n":3}']


def test_held_frames_follow_the_welcome_and_control_frames_do_not_wait(
    pair: Pair,
) -> None:
    a, b = pair
    w = Writer(a, 16, Owner())
    assert w.write(wire_text('{"early":1}'))  # before the welcome: held
    w.control(wire_frame(OP_PING, b"p"))  # a control frame goes out at once
    with gevent.Timeout(10):
        assert frames(b.recv(65536)) == [(OP_PING, b"p")]
    w.release(wire_text('{"type":"welcome"}'))
    with gevent.Timeout(10):
        got = frames(b.recv(65536))
    assert got == [(OP_TEXT, b'{"type":"welcome"}'), (OP_TEXT, b'{"early":1}')]


def test_a_full_socket_queues_then_drains_in_order(
    pair: Pair,
) -> None:
    a, b = pair
    owner = Owner()
    w = Writer(a, 10_000, owner)
    w.release(wire_text("{}"))
    payloads = [f'{{"n":{i},"pad":"{"x" * 500}"}}'.encode() for i in range(200)]
    for i, p in enumerate(payloads):
        assert w.write(wire_frame(OP_TEXT, p), (f"m{i}", i, float(i)))
    assert w.backlog > 0  # the far end has not read: the rest waits in the queue
    reader = gevent.spawn(read_all, b)
    with gevent.Timeout(10):
        while w.backlog:
            gevent.sleep(0.01)  # the flusher drains as the reader reads
    a.shutdown(socket.SHUT_WR)
    got = frames(reader.get(timeout=10))
    assert [p for _, p in got[1:]] == payloads
    assert owner.written == [(f"m{i}", i, float(i)) for i in range(200)]
    assert owner.drained >= 1


def test_overflow_is_refused_and_the_close_goes_ahead_of_the_queue(
    pair: Pair,
) -> None:
    a, b = pair
    w = Writer(a, 5, Owner())
    w.release(wire_text("{}"))
    big = wire_frame(OP_TEXT, b"y" * 3000)
    accepted = 0
    while w.write(big):
        accepted += 1
        assert accepted < 1000
    assert w.backlog == 5  # the limit, in frames
    w.close(wire_close(4008, "slow consumer"), drop_queued=True)
    assert not w.write(big)  # closing: nothing more
    got = frames(read_all_after_close(b))
    # Whole frames only (the one in progress was finished), then the close.
    assert got[-1][0] == OP_CLOSE
    assert int.from_bytes(got[-1][1][:2], "big") == 4008
    assert len(got) - 2 < accepted  # queued frames were dropped, not sent before the close


def test_joined_frames_go_in_one_write_or_are_queued_one_by_one(pair: Pair) -> None:
    a, b = pair
    w = Writer(a, 5, Owner())
    w.release(wire_text("{}"))
    wires = tuple(wire_text(f'{{"n":{i}}}') for i in range(3))
    assert w.write_joined(wires, b"".join(wires))
    with gevent.Timeout(10):
        got = frames(b.recv(65536))
    assert [p for _, p in got] == [b"{}", b'{"n":0}', b'{"n":1}', b'{"n":2}']
    big = wire_frame(OP_TEXT, b"y" * 3000)
    while not w.backlog:  # fill the socket until the writer has to queue
        assert w.write(big)
    queued = w.backlog
    # With a queue, joined frames are queued one by one: the limit stays in frames.
    assert w.write_joined(wires[:2], b"".join(wires[:2])) == (queued + 2 <= 5)
    assert w.backlog <= 5
    assert not w.write_joined(wires * 2, b"".join(wires * 2))  # beyond the limit: refused


def read_all_after_close(sock: socket.socket) -> bytes:
    """Read until the close frame arrives (the writer's grace then cuts the socket)."""
    data = b""
    while True:
        with gevent.Timeout(10):
            chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
        try:
            parsed = frames(data)
        except AssertionError:
            continue  # a frame still arriving
        if parsed and parsed[-1][0] == OP_CLOSE:
            return data


def test_a_close_that_cannot_go_out_cuts_the_socket(
    pair: Pair,
) -> None:
    a, _b = pair
    w = Writer(a, 1000, Owner())
    w.release(wire_text("{}"))
    while w.write(wire_frame(OP_TEXT, b"z" * 3000)) and w.backlog < 50:
        pass
    w.close(wire_close(4008, "slow consumer"), drop_queued=False)  # queued first: stuck
    with gevent.Timeout(30):
        while not w.dead:
            gevent.sleep(0.05)  # the grace period runs out; the socket is shut down
    assert w.dead


# -- over TLS (wss://): the same stream through the TLS session ----------------------------


@pytest.fixture
def tls_pair(pair: Pair, node_cert: Issued, pki: Pki) -> Iterator[Pair]:
    """The socket pair with TLS on top: the node's side and a client's, handshake done."""
    a, b = pair
    server = gevent.ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(node_cert.cert, node_cert.key)
    client = gevent.ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.load_verify_locations(cafile=str(pki.ca))
    accept = gevent.spawn(server.wrap_socket, a, server_side=True)
    tls_b = client.wrap_socket(b, server_hostname="127.0.0.1")
    tls_a = accept.get(timeout=10)
    yield tls_a, tls_b
    tls_a.close()
    tls_b.close()


def test_over_tls_a_full_socket_queues_then_drains_whole_frames(tls_pair: Pair) -> None:
    """A write the TLS session cannot finish is taken up again with the same bytes
    first; the client reads every frame whole and in order."""
    a, b = tls_pair
    owner = Owner()
    w = Writer(a, 10_000, owner)
    w.release(wire_text("{}"))
    payloads = [f'{{"n":{i},"pad":"{"x" * 700}"}}'.encode() for i in range(300)]
    for i, p in enumerate(payloads):
        assert w.write(wire_frame(OP_TEXT, p), (f"m{i}", i, float(i)))
    assert w.backlog > 0  # the client has not read: the rest waits
    reader = gevent.spawn(read_all, b)
    with gevent.Timeout(10):
        while w.backlog:
            gevent.sleep(0.01)  # the flusher drains as the reader reads
    a.shutdown(socket.SHUT_WR)
    got = frames(reader.get(timeout=10))
    assert [p for _, p in got[1:]] == payloads
    assert owner.written == [(f"m{i}", i, float(i)) for i in range(300)]


def test_over_tls_the_close_goes_ahead_of_the_queue_in_whole_frames(tls_pair: Pair) -> None:
    a, b = tls_pair
    w = Writer(a, 5, Owner())
    w.release(wire_text("{}"))
    big = wire_frame(OP_TEXT, b"y" * 3000)
    accepted = 0
    while w.write(big):
        accepted += 1
        assert accepted < 1000
    w.close(wire_close(4008, "slow consumer"), drop_queued=True)
    got = frames(read_all_after_close(b))
    assert got[-1][0] == OP_CLOSE
    assert int.from_bytes(got[-1][1][:2], "big") == 4008
    assert all(payload == b"y" * 3000 for _, payload in got[1:-1])
    assert len(got) - 2 < accepted


class Session(Owner):
    """An owner that holds its writer, as a session does."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__()
        self.writer = Writer(sock, 16, self)


def test_a_stopped_writer_lets_its_session_go_without_the_cycle_collector(
    pair: Pair,
) -> None:
    a, _ = pair
    gc.disable()
    try:
        session = Session(a)
        session.writer.write(wire_text('{"n":1}'), ("m1", 1, None))
        session.writer.stop()
        gone = weakref.ref(session)
        del session
        assert gone() is None  # freed by its reference count alone
    finally:
        gc.enable()
