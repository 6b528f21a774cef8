"""The tests' TLS client socket (tests/tlssocket.py): a reading thread and a writing
thread share it, as websockets' sync client uses it, without losing a write.

The server is a TLS 1.3 one that sends session tickets right after its handshake (what
OpenSSL does by default, and what the node does): the reader takes them while the
writer sends its first bytes at once -- the moment an ``ssl.SSLSocket`` shared that
way loses the write now and then (a few in a hundred connections here).
"""

from __future__ import annotations

import select
import socket
import ssl
import threading
from collections.abc import Iterator

import pytest

from tests.pki import Issued, Pki
from tests.tlssocket import SharedTLSSocket

CONNECTIONS = 300
TIMEOUT = 30.0  # seconds for any one step: generous, the machine may be busy


@pytest.fixture
def echo_port(node_cert: Issued) -> Iterator[int]:
    """A TLS 1.3 server on 127.0.0.1 that answers each connection's first line with
    the same line, in two TLS records, then closes it."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.load_cert_chain(node_cert.cert, node_cert.key)
    listener = socket.create_server(("127.0.0.1", 0))

    def serve(conn: socket.socket) -> None:
        conn.settimeout(TIMEOUT)
        try:
            with context.wrap_socket(conn, server_side=True) as tls:
                line = b""
                while not line.endswith(b"\n"):
                    chunk = tls.recv(4096)
                    if not chunk:
                        return
                    line += chunk
                half = len(line) // 2
                tls.sendall(line[:half])
                tls.sendall(line[half:])
        except OSError:
            pass  # the client's side fails the test

    def accept() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return  # shut at the end of the test
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    yield listener.getsockname()[1]
    listener.shutdown(socket.SHUT_RDWR)  # wakes the accept (a close alone would not)
    listener.close()
    acceptor.join(TIMEOUT)
    assert not acceptor.is_alive()


def test_a_write_beside_a_waiting_reader_arrives(echo_port: int, pki: Pki) -> None:
    """On every connection the reader thread starts before the first write, and the
    write's echo comes back."""
    context = ssl.create_default_context(cafile=str(pki.ca))
    for n in range(CONNECTIONS):
        sock = socket.create_connection(("127.0.0.1", echo_port), timeout=TIMEOUT)
        tls = SharedTLSSocket(sock, context, "127.0.0.1", TIMEOUT)
        received: list[bytes] = []
        done = threading.Event()

        def read(
            tls: SharedTLSSocket = tls,
            received: list[bytes] = received,
            done: threading.Event = done,
        ) -> None:
            while chunk := tls.recv(4096):
                received.append(chunk)
            done.set()

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        line = f"connection {n}\n".encode()
        tls.sendall(line)
        assert done.wait(TIMEOUT), f"connection {n}: no echo, the write was lost"
        assert b"".join(received) == line
        tls.close()
        reader.join(TIMEOUT)


def test_records_not_read_yet_wake_select(echo_port: int, pki: Pki) -> None:
    """A reader that selects before each recv (as websockets' does) gets both records
    of the echo, then the end of the connection as b"", as from a socket: a record
    taken off the socket but not handed out would never wake its select."""
    context = ssl.create_default_context(cafile=str(pki.ca))
    sock = socket.create_connection(("127.0.0.1", echo_port), timeout=TIMEOUT)
    tls = SharedTLSSocket(sock, context, "127.0.0.1", TIMEOUT)
    tls.sendall(b"two records\n")
    data = b""
    while True:
        readable, _, _ = select.select([tls], [], [], TIMEOUT)
        assert readable, f"select timed out with {data!r} read"
        chunk = tls.recv(4096)
        if not chunk:
            break
        data += chunk
    assert data == b"two records\n"
    assert tls.recv(4096) == b""
    tls.close()


def test_a_certificate_the_client_does_not_trust_fails_the_handshake(echo_port: int) -> None:
    sock = socket.create_connection(("127.0.0.1", echo_port), timeout=TIMEOUT)
    with pytest.raises(ssl.SSLCertVerificationError):
        SharedTLSSocket(sock, ssl.create_default_context(), "127.0.0.1", TIMEOUT)
    sock.close()
