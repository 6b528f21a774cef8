"""A client's TLS socket that a reading thread and a writing thread can share.

websockets' sync client reads its socket in a thread of its own while the caller's
thread writes. An ``ssl.SSLSocket`` used that way calls OpenSSL on one connection
from both threads at once, which OpenSSL does not allow: under TLS 1.3 the reader,
taking the session tickets a server sends after its handshake, races the writer
sending the upgrade request, and now and then the request never leaves (the node,
which got the handshake, answers 408 after handshake_timeout; the client has long
timed out "waiting for handshake response"). Known in CPython as gh-77271.

Here the TLS state is an ``ssl.SSLObject`` over memory buffers, touched only under a
lock; the reader waits on the socket outside it. Only what websockets' sync client
calls is implemented; the rest is the TCP socket's.
"""

from __future__ import annotations

import socket
import ssl
import threading
from typing import Any

HEADER = 5  # a TLS record's header: type, version, length (two bytes)


class SharedTLSSocket:
    """The client side of a TLS connection over ``sock``, handshake done.

    It takes one TLS record at a time off the socket, as OpenSSL does: records not
    taken yet stay in the kernel and wake the caller's ``select()``, as they would
    for an ``ssl.SSLSocket`` (websockets' reader selects before each ``recv``).
    """

    def __init__(
        self, sock: socket.socket, context: ssl.SSLContext, server_hostname: str, timeout: float
    ) -> None:
        self._sock = sock
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._tls = context.wrap_bio(
            self._incoming, self._outgoing, server_hostname=server_hostname
        )
        self._lock = threading.Lock()
        sock.settimeout(timeout)  # the handshake's: one thread, before any reader
        while True:
            try:
                self._tls.do_handshake()
            except ssl.SSLWantReadError:
                self._flush()
                self._take_record()
                continue
            self._flush()
            break
        sock.settimeout(None)

    def _flush(self) -> None:
        """Send what OpenSSL wrote (under the lock, or before there is a reader)."""
        data = self._outgoing.read()
        if data:
            self._sock.sendall(data)

    def _take_record(self) -> None:
        """The next record, or the end of the stream, read off the socket (outside
        the lock: writers go on meanwhile) and given to OpenSSL."""
        data = self._read_exactly(HEADER)
        whole = len(data) == HEADER
        if whole:
            length = int.from_bytes(data[3:5], "big")
            body = self._read_exactly(length)
            whole = len(body) == length
            data += body
        with self._lock:
            if data:
                self._incoming.write(data)
            if not whole:
                self._incoming.write_eof()  # the stream ended

    def _read_exactly(self, n: int) -> bytes:
        """``n`` bytes, or fewer where the stream ended."""
        chunks = []
        while n:
            chunk = self._sock.recv(n)
            if not chunk:
                break
            chunks.append(chunk)
            n -= len(chunk)
        return b"".join(chunks)

    def _decrypted(self, bufsize: int) -> tuple[bytes, bool]:
        """What OpenSSL holds decrypted, up to ``bufsize``; and whether the stream
        ended (cleanly or not) after it."""
        chunks: list[bytes] = []
        size = 0
        while size < bufsize:
            try:
                chunk = self._tls.read(bufsize - size)
            except ssl.SSLWantReadError:
                break
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                return b"".join(chunks), True
            if not chunk:
                return b"".join(chunks), True  # not expected of an SSLObject: an end too
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks), False

    def recv(self, bufsize: int) -> bytes:
        while True:
            with self._lock:
                data, ended = self._decrypted(bufsize)
                self._flush()  # what reading made OpenSSL answer, if anything
            if data or ended:
                return data  # b"" once ended, as a socket's recv
            self._take_record()

    def sendall(self, data: bytes) -> None:
        with self._lock:
            self._tls.write(data)
            self._flush()

    def send(self, data: bytes) -> int:
        self.sendall(data)
        return len(data)

    def getpeercert(self, binary_form: bool = False) -> Any:
        """The server's certificate, as ``ssl.SSLSocket.getpeercert`` gives it."""
        return self._tls.getpeercert(binary_form)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)  # settimeout, shutdown, close, family, ...
