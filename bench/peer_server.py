"""The floor to compare pushsvc with: a bare gevent-websocket server.

It accepts WebSocket connections on ``/ws`` with no authentication and no
store, sends each one a small welcome frame (so a client knows the upgrade is
done, as with pushsvc), and keeps it. ``POST /fanout`` with a text body sends
that text as one frame to every connection and answers how many and how long
it took. Same stack as a pushsvc node (gevent, gevent-websocket, one process),
none of its work: the memory per connection and fan-out time of this machine.

    python -m bench.peer_server --port 8099
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

import gevent  # noqa: E402
from gevent.event import Event  # noqa: E402
from gevent.pywsgi import WSGIServer  # noqa: E402
from geventwebsocket.exceptions import WebSocketError  # noqa: E402
from geventwebsocket.handler import WebSocketHandler  # noqa: E402

WELCOME = '{"type":"welcome"}'


class PeerApp:
    def __init__(self) -> None:
        self.conns: set[Any] = set()

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        ws = environ.get("wsgi.websocket")
        if path == "/ws" and ws is not None:
            self.conns.add(ws)
            try:
                ws.send(WELCOME)
                while ws.receive() is not None:
                    pass
            except (WebSocketError, OSError):
                pass
            finally:
                self.conns.discard(ws)
            return []
        if path == "/fanout" and environ.get("REQUEST_METHOD") == "POST":
            length = int(environ.get("CONTENT_LENGTH") or 0)
            text = environ["wsgi.input"].read(length).decode("utf-8")
            started = time.perf_counter()
            sent = 0
            for conn in list(self.conns):
                try:
                    conn.send(text)
                    sent += 1
                except (WebSocketError, OSError):
                    pass
            took = time.perf_counter() - started
            return _json(start_response, {"sent": sent, "seconds": took})
        if path == "/count":
            return _json(start_response, {"connections": len(self.conns)})
        start_response("404 Not Found", [("Content-Length", "0")])
        return []


def _json(start_response: Callable[..., Any], body: dict[str, Any]) -> list[bytes]:
    data = json.dumps(body).encode()
    start_response(
        "200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(data)))]
    )
    return [data]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((args.host, args.port))
    listener.listen(2048)  # as a pushsvc node's WebSocket listener
    server = WSGIServer(listener, PeerApp(), handler_class=WebSocketHandler, log=None)
    server.start()
    print(f"READY {args.port}", flush=True)
    stop = Event()
    gevent.signal_handler(signal.SIGTERM, stop.set)
    gevent.signal_handler(signal.SIGINT, stop.set)
    stop.wait()
    server.stop(timeout=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
