"""A real WebSocket client (the `websockets` library) with test conveniences."""

from __future__ import annotations

import json
from typing import Any

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
    return Client(connect(url, open_timeout=10, legacy=True, **kwargs))
