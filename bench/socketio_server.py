"""python-socketio 5 as a peer of pushsvc, in one of its documented deployments.

Runs in the bench virtualenv (``.tools/bench/venv``, see bench/README.md), not
pushsvc's. One process, one Socket.IO server, the default namespace:

- connect: the client's ``auth`` is ``{"token": "<jwt>"}`` (HS256, ``sub`` and
  ``exp`` required, PyJWT); a bad token refuses the connection; the ``sub``
  claim is the user id and the connection joins the room named after it;
- event ``subscribe`` with a topic: joins the room named after the topic and
  acknowledges ``"ok"``;
- HTTP (the "server API", parsed as JSON and emitted as event ``msg``):
  ``POST /publish?topic=T`` to the topic's room, ``POST /push?user=U`` to the
  user's room, ``POST /push_batch`` with one ``<user> <json>`` per line.

Modes (``--mode``), all from python-socketio's deployment documentation:
``aiohttp`` (AsyncServer on aiohttp), ``uvicorn`` (AsyncServer as an ASGI app on
Uvicorn with uvloop and httptools) and ``gevent`` (Server on gevent's pywsgi
with gevent-websocket).

    .tools/bench/venv/bin/python bench/socketio_server.py --mode aiohttp --port 0 --jwt-secret S
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
from typing import Any
from urllib.parse import parse_qs


def bind(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    return sock


def user_of(auth: Any, secret: str) -> str:
    import jwt

    token = auth.get("token", "") if isinstance(auth, dict) else ""
    claims = jwt.decode(token, secret, algorithms=["HS256"], options={"require": ["sub", "exp"]})
    return str(claims["sub"])


def batch_lines(body: bytes) -> list[tuple[str, Any]]:
    out = []
    for line in body.decode().splitlines():
        user, _, payload = line.partition(" ")
        out.append((user, json.loads(payload)))
    return out


def make_async_server(secret: str, async_mode: str) -> Any:
    import socketio

    sio = socketio.AsyncServer(async_mode=async_mode, cors_allowed_origins=[])

    @sio.event
    async def connect(sid: str, environ: dict[str, Any], auth: Any) -> None:
        try:
            user = user_of(auth, secret)
        except Exception as exc:
            raise socketio.exceptions.ConnectionRefusedError(f"bad token: {exc}") from None
        await sio.enter_room(sid, user)

    @sio.event
    async def subscribe(sid: str, topic: str) -> str:
        await sio.enter_room(sid, str(topic))
        return "ok"

    return sio


async def handle_api(sio: Any, path: str, query: str, body: bytes) -> tuple[int, bytes]:
    q = parse_qs(query)
    if path == "/publish":
        await sio.emit("msg", json.loads(body), to=q.get("topic", [""])[0])
    elif path == "/push":
        await sio.emit("msg", json.loads(body), to=q.get("user", [""])[0])
    elif path == "/push_batch":
        for user, data in batch_lines(body):
            await sio.emit("msg", data, to=user)
    else:
        return 404, b'{"error":"not found"}'
    return 200, b'{"ok":true}'


def run_aiohttp(sock: socket.socket, secret: str) -> None:
    import asyncio

    from aiohttp import web

    sio = make_async_server(secret, "aiohttp")
    app = web.Application()
    sio.attach(app)

    async def api(request: web.Request) -> web.Response:
        status, body = await handle_api(
            sio, request.path, request.query_string, await request.read()
        )
        return web.Response(status=status, body=body, content_type="application/json")

    for path in ("/publish", "/push", "/push_batch"):
        app.router.add_post(path, api)

    async def serve() -> None:
        runner = web.AppRunner(app, access_log=None, handle_signals=True)
        await runner.setup()
        await web.SockSite(runner, sock).start()
        print(f"READY {sock.getsockname()[1]}", flush=True)
        await asyncio.Event().wait()

    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        pass


def run_uvicorn(sock: socket.socket, secret: str) -> None:
    import socketio
    import uvicorn

    sio = make_async_server(secret, "asgi")

    async def other(scope: dict[str, Any], receive: Any, send: Any) -> None:
        body = b""
        while True:
            msg = await receive()
            body += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        status, out = await handle_api(
            sio, scope["path"], scope.get("query_string", b"").decode(), body
        )
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": out})

    app = socketio.ASGIApp(sio, other)
    config = uvicorn.Config(
        app, loop="uvloop", http="httptools", ws="websockets", log_level="warning", lifespan="off"
    )
    server = uvicorn.Server(config)
    print(f"READY {sock.getsockname()[1]}", flush=True)
    server.run(sockets=[sock])


def run_gevent(sock: socket.socket, secret: str) -> None:
    import socketio
    from gevent import pywsgi
    from geventwebsocket.handler import WebSocketHandler

    sio = socketio.Server(async_mode="gevent", cors_allowed_origins=[])

    @sio.event
    def connect(sid: str, environ: dict[str, Any], auth: Any) -> None:
        try:
            user = user_of(auth, secret)
        except Exception as exc:
            raise socketio.exceptions.ConnectionRefusedError(f"bad token: {exc}") from None
        sio.enter_room(sid, user)

    @sio.event
    def subscribe(sid: str, topic: str) -> str:
        sio.enter_room(sid, str(topic))
        return "ok"

    def api(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        path = environ.get("PATH_INFO", "")
        q = parse_qs(environ.get("QUERY_STRING", ""))
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        status = "200 OK"
        if path == "/publish":
            sio.emit("msg", json.loads(body), to=q.get("topic", [""])[0])
        elif path == "/push":
            sio.emit("msg", json.loads(body), to=q.get("user", [""])[0])
        elif path == "/push_batch":
            for user, data in batch_lines(body):
                sio.emit("msg", data, to=user)
        else:
            status = "404 Not Found"
        start_response(status, [("Content-Type", "application/json")])
        return [b"{}"]

    class NoDelayServer(pywsgi.WSGIServer):
        # pywsgi writes headers and body in two send() calls: without this,
        # Nagle's algorithm holds the body for the client's delayed ACK (40 ms).
        def handle(self, client: socket.socket, address: Any) -> None:
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            super().handle(client, address)

    server = NoDelayServer(
        sock, socketio.WSGIApp(sio, api), handler_class=WebSocketHandler, log=None
    )
    print(f"READY {sock.getsockname()[1]}", flush=True)
    server.serve_forever()


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--mode", choices=("aiohttp", "uvicorn", "gevent"), default="aiohttp")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--jwt-secret", required=True)
    args = parser.parse_args()
    if args.mode == "gevent":
        from gevent import monkey

        monkey.patch_all()
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    sock = bind(args.host, args.port)
    {"aiohttp": run_aiohttp, "uvicorn": run_uvicorn, "gevent": run_gevent}[args.mode](
        sock, args.jwt_secret
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
