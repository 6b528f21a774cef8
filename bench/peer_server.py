"""The floor to compare pushsvc with: a bare gevent-websocket server.

Same stack as a pushsvc node (gevent, gevent-websocket, one process), none of
its work: no store, no presence, no ordering, no receipts. It accepts
WebSocket connections on ``/ws``, sends each one a small welcome frame (so a
client knows the upgrade is done, as with pushsvc), and keeps it.

With ``--jwt-secret``, a connection must carry ``Authorization: Bearer <jwt>``
(HS256, ``sub`` and ``exp`` required, checked with PyJWT as pushsvc does) or it
is refused with 401 before the upgrade; the ``sub`` claim is the user id.

Frames from clients: ``{"type":"subscribe","topic":"news"}`` answers
``{"type":"subscribed","topic":"news"}``; anything else is ignored.

HTTP (the "server API"; bodies are sent to clients verbatim as text frames):

- ``POST /publish?topic=T``: the body to every subscriber of T
- ``POST /push?user=U``: the body to every connection of user U
- ``POST /push_batch``: one ``<user> <payload>`` per line
- ``POST /fanout``: the body to every connection (``bench.connections``)
- ``GET /count``: the number of connections

    python -m bench.peer_server --port 8099 [--jwt-secret S]
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Iterable  # noqa: E402
from typing import Any  # noqa: E402
from urllib.parse import parse_qs  # noqa: E402

import gevent  # noqa: E402
import jwt  # noqa: E402
from gevent.event import Event  # noqa: E402
from gevent.pywsgi import WSGIHandler, WSGIServer  # noqa: E402
from geventwebsocket.exceptions import WebSocketError  # noqa: E402
from geventwebsocket.handler import WebSocketHandler  # noqa: E402

WELCOME = '{"type":"welcome"}'
SECRET: str | None = None


class PeerApp:
    def __init__(self) -> None:
        self.conns: set[Any] = set()
        self.users: dict[str, set[Any]] = {}
        self.topics: dict[str, set[Any]] = {}

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        ws = environ.get("wsgi.websocket")
        if path == "/ws" and ws is not None:
            self.serve(ws, environ.get("bench.user", ""))
            return []
        method = environ.get("REQUEST_METHOD")
        query = parse_qs(environ.get("QUERY_STRING", ""))
        if method == "POST" and path in ("/publish", "/push", "/push_batch", "/fanout"):
            length = int(environ.get("CONTENT_LENGTH") or 0)
            text = environ["wsgi.input"].read(length).decode("utf-8")
            started = time.perf_counter()
            if path == "/publish":
                sent = _send_all(self.topics.get(query.get("topic", [""])[0], ()), text)
            elif path == "/push":
                sent = _send_all(self.users.get(query.get("user", [""])[0], ()), text)
            elif path == "/push_batch":
                sent = 0
                for line in text.splitlines():
                    user, _, payload = line.partition(" ")
                    sent += _send_all(self.users.get(user, ()), payload)
            else:
                sent = _send_all(self.conns, text)
            took = time.perf_counter() - started
            return _json(start_response, {"sent": sent, "seconds": took})
        if path == "/count":
            return _json(start_response, {"connections": len(self.conns)})
        start_response("404 Not Found", [("Content-Length", "0")])
        return []

    def serve(self, ws: Any, user: str) -> None:
        self.conns.add(ws)
        mine = self.users.setdefault(user, set())
        mine.add(ws)
        subscribed: list[str] = []
        try:
            ws.send(WELCOME)
            while (frame := ws.receive()) is not None:
                if isinstance(frame, str) and '"subscribe"' in frame:
                    topic = str(json.loads(frame).get("topic", ""))
                    self.topics.setdefault(topic, set()).add(ws)
                    subscribed.append(topic)
                    ws.send(
                        json.dumps({"type": "subscribed", "topic": topic}, separators=(",", ":"))
                    )
        except (WebSocketError, OSError, ValueError):
            pass
        finally:
            self.conns.discard(ws)
            mine.discard(ws)
            if not mine:
                self.users.pop(user, None)
            for topic in subscribed:
                self.topics.get(topic, set()).discard(ws)


def _send_all(conns: Iterable[Any], text: str) -> int:
    sent = 0
    for conn in list(conns):
        try:
            conn.send(text)
            sent += 1
        except (WebSocketError, OSError):
            pass
    return sent


def _json(
    start_response: Callable[..., Any], body: dict[str, Any], status: str = "200 OK"
) -> list[bytes]:
    data = json.dumps(body).encode()
    start_response(
        status, [("Content-Type", "application/json"), ("Content-Length", str(len(data)))]
    )
    return [data]


class NoDelayServer(WSGIServer):
    """pywsgi writes a response's headers and body with two send() calls; with
    Nagle's algorithm on, the second waits for the client's delayed ACK (40 ms
    on Linux). Every tuned deployment turns it off, as asyncio does by default."""

    def handle(self, sock: socket.socket, address: Any) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().handle(sock, address)


class AuthHandler(WebSocketHandler):
    """Check the JWT before the upgrade (401 with a JSON body otherwise)."""

    def run_application(self) -> None:
        env = self.environ
        if SECRET is not None and env.get("HTTP_UPGRADE", "").lower() == "websocket":
            header = env.get("HTTP_AUTHORIZATION", "")
            token = header[7:] if header.startswith("Bearer ") else ""
            try:
                claims = jwt.decode(
                    token, SECRET, algorithms=["HS256"], options={"require": ["sub", "exp"]}
                )
            except jwt.PyJWTError as exc:
                self.result = _json(self.start_response, {"error": str(exc)}, "401 Unauthorized")
                self.process_result()
                return
            env["bench.user"] = str(claims["sub"])
        if env.get("HTTP_UPGRADE", "").lower() == "websocket":
            super().run_application()
        else:
            WSGIHandler.run_application(self)


def main() -> int:
    global SECRET
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--jwt-secret", help="require an HS256 JWT on /ws")
    args = parser.parse_args()
    SECRET = args.jwt_secret
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((args.host, args.port))
    listener.listen(2048)  # as a pushsvc node's WebSocket listener
    server = NoDelayServer(listener, PeerApp(), handler_class=AuthHandler, log=None)
    server.start()
    print(f"READY {listener.getsockname()[1]}", flush=True)
    stop = Event()
    gevent.signal_handler(signal.SIGTERM, stop.set)
    gevent.signal_handler(signal.SIGINT, stop.set)
    stop.wait()
    server.stop(timeout=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
