"""A minimal RFC 6455 client on a plain socket, for what a polite client never does.

It never answers pings on its own, can send any frame (oversized, fragmented,
reserved bits, unmasked, truncated, garbage), reads the server's frames one by
one (close code and reason included), and can simply stop reading so the
server's send queue fills.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import time
from dataclasses import dataclass, field
from typing import Any

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

OP_CONT = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA


class HandshakeRefused(Exception):
    """The server answered the upgrade request with something other than 101."""

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        super().__init__(f"HTTP {status}: {body[:200]!r}")
        self.status = status
        self.headers = headers
        self.body = body


class Closed(Exception):
    """The connection ended (EOF or reset) before a frame could be read."""


@dataclass
class Frame:
    opcode: int
    payload: bytes
    fin: bool = True

    @property
    def close_code(self) -> int | None:
        if self.opcode != OP_CLOSE or len(self.payload) < 2:
            return None
        return int.from_bytes(self.payload[:2], "big")

    @property
    def close_reason(self) -> str:
        return self.payload[2:].decode("utf-8", errors="replace")

    def json(self) -> Any:
        assert self.opcode == OP_TEXT, self
        return json.loads(self.payload)


@dataclass
class HttpResponse:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


def encode_frame(
    opcode: int,
    payload: bytes,
    *,
    fin: bool = True,
    rsv: int = 0,
    mask: bool = True,
    length: int | None = None,
    key: bytes | None = None,
) -> bytes:
    """One frame as a client sends it; ``length`` may lie about the payload's size,
    ``key`` fixes the masking key (random otherwise)."""
    n = len(payload) if length is None else length
    first = (0x80 if fin else 0) | (rsv & 0x70) | (opcode & 0x0F)
    mask_bit = 0x80 if mask else 0
    if n < 126:
        header = bytes((first, mask_bit | n))
    elif n < 65536:
        header = bytes((first, mask_bit | 126)) + n.to_bytes(2, "big")
    else:
        header = bytes((first, mask_bit | 127)) + n.to_bytes(8, "big")
    if not mask:
        return header + payload
    if key is None:
        key = os.urandom(4)
    masked = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return header + key + masked


def _read_http_head(sock: socket.socket, deadline: float) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and whatever bytes followed the blank line."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = sock.recv(4096)
        if not chunk:
            raise Closed(f"connection closed during the HTTP response: {buf!r}")
        buf += chunk
        if len(buf) > 65536:
            raise AssertionError("HTTP response head too large")
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, rest


def http_request(
    host: str,
    port: int,
    path: str,
    headers: dict[str, str] | None = None,
    timeout: float = 5.0,
) -> HttpResponse:
    """A plain HTTP/1.1 GET with exactly the headers given (plus Host)."""
    deadline = time.monotonic() + timeout
    with socket.create_connection((host, port), timeout=timeout) as sock:
        lines = [f"GET {path} HTTP/1.1", f"Host: {host}:{port}", "Connection: close"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        status, hdrs, rest = _read_http_head(sock, deadline)
        body = rest
        want = int(hdrs.get("content-length", "-1"))
        while want < 0 or len(body) < want:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
        return HttpResponse(status, hdrs, body)


class RawWS:
    """One raw WebSocket connection. Nothing happens behind the test's back."""

    def __init__(self, sock: socket.socket, buffered: bytes = b"") -> None:
        self.sock = sock
        self._buf = buffered

    @classmethod
    def connect(
        cls,
        host: str,
        port: int,
        path: str,
        headers: dict[str, str] | None = None,
        *,
        timeout: float = 5.0,
        rcvbuf: int | None = None,
    ) -> RawWS:
        """Handshake; raises HandshakeRefused unless the server answers 101."""
        deadline = time.monotonic() + timeout
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:  # before connect, so the window is small from the start
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.settimeout(timeout)
        try:
            sock.connect((host, port))
            key = base64.b64encode(os.urandom(16)).decode("ascii")
            lines = [
                f"GET {path} HTTP/1.1",
                f"Host: {host}:{port}",
                "Upgrade: websocket",
                "Connection: Upgrade",
                f"Sec-WebSocket-Key: {key}",
                "Sec-WebSocket-Version: 13",
            ]
            lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
            sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
            status, hdrs, rest = _read_http_head(sock, deadline)
            if status != 101:
                body = rest
                want = int(hdrs.get("content-length", "0"))
                while len(body) < want:
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    body += chunk
                raise HandshakeRefused(status, hdrs, body)
            expected = base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()
            assert hdrs.get("sec-websocket-accept") == expected, hdrs
        except BaseException:
            sock.close()
            raise
        return cls(sock, rest)

    # -- sending --------------------------------------------------------------------

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_frame(
        self,
        opcode: int,
        payload: bytes = b"",
        *,
        fin: bool = True,
        rsv: int = 0,
        mask: bool = True,
    ) -> None:
        self.sock.sendall(encode_frame(opcode, payload, fin=fin, rsv=rsv, mask=mask))

    def send_text(self, text: str | bytes, *, fin: bool = True) -> None:
        data = text.encode("utf-8") if isinstance(text, str) else text
        self.send_frame(OP_TEXT, data, fin=fin)

    def send_json(self, obj: Any) -> None:
        self.send_text(json.dumps(obj))

    def send_binary(self, data: bytes) -> None:
        self.send_frame(OP_BINARY, data)

    def send_ping(self, data: bytes = b"") -> None:
        self.send_frame(OP_PING, data)

    def send_pong(self, data: bytes = b"") -> None:
        self.send_frame(OP_PONG, data)

    def send_close(self, code: int = 1000, reason: str = "") -> None:
        self.send_frame(OP_CLOSE, code.to_bytes(2, "big") + reason.encode("utf-8"))

    # -- receiving ------------------------------------------------------------------

    def _read_exact(self, n: int, deadline: float) -> bytes:
        while len(self._buf) < n:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no complete frame within the deadline ({len(self._buf)}/{n})")
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(65536)
            except (ConnectionResetError, BrokenPipeError) as exc:
                raise Closed(str(exc)) from None
            if not chunk:
                raise Closed("EOF")
            self._buf += chunk
        out, self._buf = self._buf[:n], self._buf[n:]
        return out

    def recv_frame(self, timeout: float = 5.0) -> Frame:
        """The next server frame (pings included); TimeoutError or Closed otherwise."""
        deadline = time.monotonic() + timeout
        b0, b1 = self._read_exact(2, deadline)
        assert not b1 & 0x80, "server frames must not be masked"
        n = b1 & 0x7F
        if n == 126:
            n = int.from_bytes(self._read_exact(2, deadline), "big")
        elif n == 127:
            n = int.from_bytes(self._read_exact(8, deadline), "big")
        return Frame(b0 & 0x0F, self._read_exact(n, deadline), bool(b0 & 0x80))

    def recv_json(self, timeout: float = 5.0) -> Any:
        """The next text frame as JSON, skipping pings and pongs."""
        deadline = time.monotonic() + timeout
        while True:
            frame = self.recv_frame(max(0.0, deadline - time.monotonic()))
            if frame.opcode in (OP_PING, OP_PONG):
                continue
            assert frame.opcode == OP_TEXT, frame
            return frame.json()

    def recv_close(self, timeout: float = 5.0) -> Frame | None:
        """Read until the server's close frame (returned) or EOF/reset (None)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                frame = self.recv_frame(max(0.0, deadline - time.monotonic()))
            except Closed:
                return None
            if frame.opcode == OP_CLOSE:
                return frame

    def wait_eof(self, timeout: float = 5.0) -> None:
        """Read and discard until the server closes the TCP connection."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("server did not close the connection")
            self.sock.settimeout(remaining)
            try:
                if not self.sock.recv(65536):
                    return
            except (ConnectionResetError, BrokenPipeError):
                return

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawWS:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
