"""A real WebSocket client (the `websockets` library) with test conveniences."""

from __future__ import annotations

import json
import socket
import ssl
import time
from typing import Any, cast
from urllib.parse import urlsplit

from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from pushsvc.auth import mint_token
from tests.nodeproc import JWT_SECRET, NodeProcess
from tests.tlssocket import SharedTLSSocket

OPEN_TIMEOUT = 10.0  # seconds for TCP, TLS and the upgrade together


def token(user: str, ttl: int = 3600, topics: list[str] | None = None) -> str:
    return mint_token(JWT_SECRET, user, ttl, topics)


class Client:
    def __init__(self, conn: ClientConnection) -> None:
        self.conn = conn
        self.welcome = self.recv()
        assert self.welcome["type"] == "welcome", self.welcome

    def recv(self, timeout: float = 5.0) -> dict[str, Any]:
        return dict(json.loads(self.conn.recv(timeout=timeout)))

    def send(self, obj: Any) -> None:
        self.conn.send(obj if isinstance(obj, str | bytes) else json.dumps(obj))

    def messages(self, n: int, timeout: float = 5.0) -> list[dict[str, Any]]:
        """The next n message frames (other frame types are skipped)."""
        out: list[dict[str, Any]] = []
        while len(out) < n:
            frame = self.recv(timeout)
            if frame["type"] == "message":
                out.append(frame)
        return out

    def barrier(self, timeout: float = 5.0) -> list[dict[str, Any]]:
        """Send a ping; return every frame received before the pong.

        The server writes a connection's frames in order, so the pong comes after
        everything queued before it.
        """
        self.send({"type": "ping"})
        before: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while True:
            frame = self.recv(max(0.01, deadline - time.monotonic()))
            if frame["type"] == "pong":
                return before
            before.append(frame)

    def close_code(
        self, timeout: float = 10.0, seen: list[Any] | None = None
    ) -> tuple[int | None, str]:
        """Read until the server closes the connection: (close code, reason).

        The frames read meanwhile are appended to ``seen`` when it is given.
        """
        frames = seen if seen is not None else []
        deadline = time.monotonic() + timeout
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"connection still open after {timeout}s; saw {frames}")
                frames.append(json.loads(self.conn.recv(timeout=remaining)))
        except ConnectionClosed as exc:
            return (exc.rcvd.code, exc.rcvd.reason) if exc.rcvd else (None, "")

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_ws(
    node: NodeProcess,
    user: str,
    *,
    since: int | None = None,
    topics: list[str] | None = None,
    **kwargs: Any,
) -> Client:
    url = node.ws_url + f"?token={token(user, topics=topics)}"
    if since is not None:
        url += f"&since={since}"
    context = node.ssl_context() if node.tls else None
    return Client(dial(url, context, **kwargs))


def dial(url: str, context: ssl.SSLContext | None = None, **kwargs: Any) -> ClientConnection:
    """websockets' sync client for ``url``; a ``wss://`` one over a SharedTLSSocket
    verified with ``context`` (never an ssl.SSLSocket, which its reading thread and
    the caller's writes would share unsafely: tests/tlssocket.py)."""
    if not url.startswith("wss://"):
        return connect(url, open_timeout=OPEN_TIMEOUT, legacy=True, **kwargs)
    where = urlsplit(url)
    host, port = where.hostname or "", where.port or 443
    sock = socket.create_connection((host, port), timeout=OPEN_TIMEOUT)
    try:
        tls = SharedTLSSocket(sock, context or ssl.create_default_context(), host, OPEN_TIMEOUT)
    except BaseException:
        sock.close()
        raise
    # The upgrade over the TLS connection made here: the same request as for wss://
    # (its Host names the port either way).
    plain = "ws://" + url.removeprefix("wss://")
    sock_like = cast(socket.socket, tls)
    return connect(plain, sock=sock_like, open_timeout=OPEN_TIMEOUT, legacy=True, **kwargs)
