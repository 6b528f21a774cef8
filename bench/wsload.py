"""A minimal RFC 6455 client for load generation: asyncio protocols over plain sockets.

One ``WsConn`` per connection and no coroutine per connection: the handshake is
written on connect, frames are parsed in ``data_received``, pings are answered
with pongs, and every text frame after the first (the welcome) is handed to a
callback with its arrival time. Thousands of connections cost little CPU in the
load generator, so the server under test is what gets measured.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import time
from collections.abc import Callable

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_TEXT = 0x1
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA


def client_frame(opcode: int, payload: bytes) -> bytes:
    """A masked, final client frame."""
    n = len(payload)
    head = bytes((0x80 | opcode,))
    if n < 126:
        head += bytes((0x80 | n,))
    elif n < 65536:
        head += bytes((0x80 | 126,)) + n.to_bytes(2, "big")
    else:
        head += bytes((0x80 | 127,)) + n.to_bytes(8, "big")
    mask = os.urandom(4)
    key = (mask * (n // 4 + 1))[:n]
    masked = (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(
        n, "little"
    )
    return head + mask + masked


class WsConn(asyncio.Protocol):
    """One client connection. ``welcome`` resolves with the first text frame."""

    __slots__ = (
        "_accept",
        "_buf",
        "_request",
        "close_code",
        "closed",
        "first_message_at",
        "index",
        "messages",
        "on_text",
        "transport",
        "upgraded",
        "welcome",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        host: str,
        path: str,
        token: str | None,
        index: int,
        on_text: Callable[[WsConn, bytes, float], None] | None = None,
    ) -> None:
        key = base64.b64encode(os.urandom(16))
        self._accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
        auth = f"Authorization: Bearer {token}\r\n" if token else ""
        self._request = (
            f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key.decode()}\r\n"
            f"Sec-WebSocket-Version: 13\r\n{auth}\r\n"
        ).encode()
        self._buf = bytearray()
        self.index = index
        self.on_text = on_text
        self.transport: asyncio.Transport | None = None
        self.upgraded = False
        self.welcome: asyncio.Future[bytes] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self.close_code: int | None = None
        self.messages = 0
        self.first_message_at = 0.0

    # -- asyncio.Protocol -----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self._request)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.welcome.done():
            self.welcome.set_exception(ConnectionError(f"closed before welcome: {exc}"))
        if not self.closed.done():
            self.closed.set_result(None)

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        if not self.upgraded:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buf[:end]).decode("latin-1")
            del buf[: end + 4]
            status = head.split(" ", 2)[1] if " " in head else "?"
            if status != "101" or self._accept.decode() not in head:
                self._fail(ConnectionError(f"handshake refused: {head.splitlines()[0]!r}"))
                return
            self.upgraded = True
        now = time.perf_counter()
        while len(buf) >= 2:
            b1 = buf[1] & 0x7F
            pos = 2
            if b1 == 126:
                if len(buf) < 4:
                    return
                b1 = int.from_bytes(buf[2:4], "big")
                pos = 4
            elif b1 == 127:
                if len(buf) < 10:
                    return
                b1 = int.from_bytes(buf[2:10], "big")
                pos = 10
            end = pos + b1
            if len(buf) < end:
                return
            opcode = buf[0] & 0x0F
            payload = bytes(buf[pos:end])
            del buf[:end]
            if opcode == OP_TEXT:
                self._text(payload, now)
            elif opcode == OP_PING:
                self.send(OP_PONG, payload)
            elif opcode == OP_CLOSE:
                self.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                self.send(OP_CLOSE, payload[:2])
                if self.transport is not None:
                    self.transport.close()
                return

    # -- frames ---------------------------------------------------------------------

    def _text(self, payload: bytes, now: float) -> None:
        if not self.welcome.done():
            self.welcome.set_result(payload)
            return
        self.messages += 1
        if not self.first_message_at:
            self.first_message_at = now
        if self.on_text is not None:
            self.on_text(self, payload, now)

    def send(self, opcode: int, payload: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(client_frame(opcode, payload))

    def _fail(self, exc: Exception) -> None:
        if not self.welcome.done():
            self.welcome.set_exception(exc)
        if self.transport is not None:
            self.transport.abort()

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.send(OP_CLOSE, (1000).to_bytes(2, "big"))
            self.transport.close()


async def connect(
    host: str,
    port: int,
    path: str,
    token: str | None,
    index: int,
    *,
    source: str | None = None,
    on_text: Callable[[WsConn, bytes, float], None] | None = None,
    timeout: float = 30.0,
) -> WsConn:
    """Open one connection and wait for its first text frame (the welcome)."""
    loop = asyncio.get_running_loop()
    _, conn = await loop.create_connection(
        lambda: WsConn(loop, f"{host}:{port}", path, token, index, on_text),
        host,
        port,
        local_addr=(source, 0) if source else None,
    )
    try:
        await asyncio.wait_for(asyncio.shield(conn.welcome), timeout)
    except BaseException:
        if conn.transport is not None:
            conn.transport.abort()
        raise
    return conn


async def connect_many(
    host: str,
    port: int,
    path: str,
    tokens: list[str | None],
    *,
    concurrency: int = 200,
    sources: int = 8,
    on_text: Callable[[WsConn, bytes, float], None] | None = None,
    deadline: float = 120.0,
) -> tuple[list[WsConn], list[str]]:
    """Open ``len(tokens)`` connections, at most ``concurrency`` handshakes at a time.

    Source addresses rotate over 127.0.0.1..127.0.0.<sources> so that runs of
    many thousands of connections never run out of ephemeral ports.
    Returns (connections, errors); stops starting new ones after ``deadline`` s.
    """
    sem = asyncio.Semaphore(concurrency)
    conns: list[WsConn] = []
    errors: list[str] = []
    stop_at = time.monotonic() + deadline

    async def one(i: int, token: str | None) -> None:
        async with sem:
            if time.monotonic() > stop_at:
                errors.append("deadline")
                return
            try:
                conns.append(
                    await connect(
                        host,
                        port,
                        path,
                        token,
                        i,
                        source=f"127.0.0.{1 + i % sources}",
                        on_text=on_text,
                    )
                )
            except (TimeoutError, OSError) as exc:
                errors.append(f"{type(exc).__name__}: {exc}")

    await asyncio.gather(*(one(i, t) for i, t in enumerate(tokens)))
    conns.sort(key=lambda c: c.index)
    return conns, errors


async def close_all(conns: list[WsConn], timeout: float = 10.0) -> None:
    for conn in conns:
        conn.close()
    pending = [c.closed for c in conns if not c.closed.done()]
    if pending:
        await asyncio.wait(pending, timeout=timeout)
    for conn in conns:
        if conn.transport is not None and not conn.closed.done():
            conn.transport.abort()
