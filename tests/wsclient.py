"""A real WebSocket client (the `websockets` library) with test conveniences."""

from __future__ import annotations

import json
import time
from typing import Any

from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from pushsvc.auth import mint_token
from tests.nodeproc import JWT_SECRET, NodeProcess


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
    if node.tls:
        kwargs.setdefault("ssl", node.ssl_context())
    return Client(connect(url, open_timeout=10, legacy=True, **kwargs))
