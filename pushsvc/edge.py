"""The WebSocket edge: ``GET /ws`` on gevent + gevent-websocket.

Every refusal happens before the upgrade, as a plain HTTP response: 401 for a
bad token, 403 for a disallowed Origin, 400 for a bad ``since``, 503 while the
node drains. After the upgrade the connection belongs to a ``Session``; this
module only reads frames off the socket and hands them over.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import secrets
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

from gevent.pywsgi import WSGIHandler, WSGIServer
from geventwebsocket.exceptions import FrameTooLargeException, ProtocolError, WebSocketError
from geventwebsocket.handler import WebSocketHandler
from geventwebsocket.websocket import Header, Stream, WebSocket

from pushsvc.auth import Identity, TokenVerifier
from pushsvc.authhook import AuthHook, HookUnavailable, credential_of
from pushsvc.config import Address
from pushsvc.errors import Unauthenticated
from pushsvc.metrics import Metrics
from pushsvc.node import Node
from pushsvc.protocol import Close
from pushsvc.session import Session, SessionLimits

log = logging.getLogger("pushsvc.edge")

WSGIEnviron = dict[str, Any]
StartResponse = Callable[..., Any]


class Refusal(Exception):
    """An HTTP answer instead of the upgrade."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class ClientClosed(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def _unmask(payload: bytes, mask: bytes) -> bytes:
    n = len(payload)
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")


class PushWebSocket(WebSocket):
    """gevent-websocket's WebSocket with an inbound size limit, fast unmasking,
    and control frames handed to the session (its writer answers pings)."""

    __slots__ = ("max_size",)

    def __del__(self) -> None:  # the base class would write a close frame from the GC
        pass

    def read_frame(self) -> tuple[Header, bytes]:
        header = Header.decode_header(self.stream)
        if header.flags:
            raise ProtocolError("reserved bits set: no extension was negotiated")
        if not header.mask:
            raise ProtocolError("client frames must be masked (RFC 6455 5.1)")
        if header.length > self.max_size:
            raise FrameTooLargeException(f"frame of {header.length} bytes")
        if not header.length:
            return header, b""
        payload = self.raw_read(header.length)
        if len(payload) != header.length:
            raise WebSocketError("unexpected EOF reading frame payload")
        if header.mask:
            payload = _unmask(payload, header.mask)
        return header, payload

    def next_message(self, session: Session) -> str | bytes:
        """The next text or binary message; control frames are handled on the way."""
        opcode = 0
        parts: list[bytes] = []
        size = 0
        while True:
            header, payload = self.read_frame()
            op = header.opcode
            if op in (self.OPCODE_TEXT, self.OPCODE_BINARY):
                if opcode:
                    raise ProtocolError("new message inside a fragmented one")
                opcode = op
            elif op == self.OPCODE_CONTINUATION:
                if not opcode:
                    raise ProtocolError("continuation frame without a message")
            elif op == self.OPCODE_PING:
                session.on_ping(payload)
                continue
            elif op == self.OPCODE_PONG:
                session.touch()
                continue
            elif op == self.OPCODE_CLOSE:
                code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1000
                raise ClientClosed(code)
            else:
                raise ProtocolError(f"unknown opcode {op}")
            size += len(payload)
            if size > self.max_size:
                raise FrameTooLargeException(f"message of over {size} bytes")
            parts.append(payload)
            if header.fin:
                break
        data = b"".join(parts)
        if opcode == self.OPCODE_TEXT:
            return data.decode("utf-8")  # UnicodeDecodeError → 1007
        return data


@dataclass
class EdgeConfig:
    node_id: str
    allowed_origins: tuple[str, ...]
    max_frame_bytes: int
    limits: SessionLimits


class EdgeApp:
    """The WSGI application behind the WebSocket listener."""

    def __init__(
        self,
        config: EdgeConfig,
        verifier: TokenVerifier,
        node: Node,
        metrics: Metrics,
        extra_routes: dict[str, Callable[[WSGIEnviron, StartResponse], Iterable[bytes]]]
        | None = None,
        auth_hook: AuthHook | None = None,
    ) -> None:
        self.config = config
        self.verifier = verifier
        self.auth_hook = auth_hook  # when set, it decides who connects (not the JWT)
        self.node = node
        self.metrics = metrics
        self.routes = dict(extra_routes or {})
        self.accepting = True
        self._allowed = {o.lower().rstrip("/") for o in config.allowed_origins}

    # -- plain HTTP ----------------------------------------------------------------

    def __call__(self, environ: WSGIEnviron, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        route = self.routes.get(path)
        if route is not None:
            return route(environ, start_response)
        if path == "/ws":
            return _json_response(
                start_response, "426 Upgrade Required", "use a WebSocket client for /ws"
            )
        return _json_response(start_response, "404 Not Found", f"no route {path[:100]}")

    # -- the handshake ----------------------------------------------------------------

    def authorize(self, environ: WSGIEnviron) -> tuple[Identity, int | None]:
        if not self.accepting:
            raise Refusal("503 Service Unavailable", "node is draining: connect to another node")
        self._check_origin(environ)
        query = parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)
        token = ""
        header = environ.get("HTTP_AUTHORIZATION", "")
        if header:
            scheme, _, value = header.partition(" ")
            if scheme.lower() != "bearer":
                raise Refusal("401 Unauthorized", "Authorization must be 'Bearer <jwt>'")
            token = value.strip()
        elif "token" in query:
            token = query["token"][-1]
        hook = self.auth_hook
        try:
            if hook is None:
                identity = self.verifier.verify(token)
            else:
                credential = credential_of(
                    token, bool(header), environ.get("HTTP_COOKIE", ""), hook.cookie
                )
                identity = hook.authenticate(
                    credential, environ.get("REMOTE_ADDR", ""), environ.get("HTTP_ORIGIN", "")
                )
        except Unauthenticated as exc:
            raise Refusal("401 Unauthorized", str(exc)) from None
        except HookUnavailable as exc:
            raise Refusal("503 Service Unavailable", str(exc)) from None
        if identity.jti and self.node.revoked(identity.jti):
            raise Refusal("401 Unauthorized", "token revoked")
        since: int | None = None
        if "since" in query:
            text = query["since"][-1]
            if not text.isdigit() or len(text) > 19:
                raise Refusal("400 Bad Request", "since must be a non-negative integer seq")
            since = int(text)
        return identity, since

    def _check_origin(self, environ: WSGIEnviron) -> None:
        origin = environ.get("HTTP_ORIGIN")
        if origin is None:
            return  # not a browser
        normalized = origin.lower().rstrip("/")
        if self._allowed:
            if "*" in self._allowed or normalized in self._allowed:
                return
        else:
            host = environ.get("HTTP_HOST", "").lower()
            if host and urlsplit(normalized).netloc == host:
                return
        raise Refusal("403 Forbidden", f"origin {origin[:100]} is not allowed")

    # -- after the upgrade ---------------------------------------------------------------

    def run_session(self, handler: EdgeHandler, identity: Identity, since: int | None) -> None:
        """The connection's read loop, from its first moment: the welcome and the
        replay follow when the node's admission has heard from the store."""
        ws: PushWebSocket = handler.websocket
        ws.max_size = self.config.max_frame_bytes
        conn_id = secrets.token_hex(6)
        session = Session(conn_id, identity, handler.socket, self.node, self.config.limits, since)
        log.info(
            "connection opened",
            extra={"conn": conn_id, "user": identity.user_id, "peer": handler.client_address[0]},
        )
        reason = "client went away"
        try:
            self.node.connect(session)
            while True:
                session.on_frame(ws.next_message(session))
        except ClientClosed as exc:
            reason = f"client closed {exc.code}"
            session.close(Close.NORMAL)
        except FrameTooLargeException:
            reason = "frame too big"
            session.close(Close.TOO_BIG)
        except ProtocolError as exc:
            reason = f"protocol error: {exc}"
            session.close(Close.PROTOCOL_ERROR)
        except UnicodeDecodeError:
            reason = "invalid UTF-8"
            session.close(Close.BAD_DATA)
        except OSError:
            pass  # WebSocketError is an OSError too: EOF or reset
        finally:
            session.finish()
            log.info("connection closed", extra={"conn": conn_id, "reason": reason})


def _json_response(start_response: StartResponse, status: str, message: str) -> list[bytes]:
    body = json.dumps({"error": status.split(" ", 1)[1].lower(), "message": message}).encode()
    start_response(
        status,
        [("Content-Type", "application/json"), ("Content-Length", str(len(body)))],
    )
    return [body]


class EdgeHandler(WebSocketHandler):
    """Authorize before the upgrade; then hand the socket to the app's session loop."""

    application: EdgeApp

    def run_application(self) -> None:
        env = self.environ
        if env.get("PATH_INFO") != "/ws" or env.get("HTTP_UPGRADE", "").lower() != "websocket":
            WSGIHandler.run_application(self)
            return
        app = self.application
        try:
            identity, since = app.authorize(env)
        except Refusal as refusal:
            app.metrics.rejected.labels(refusal.status.split(" ", 1)[0]).inc()
            log.info(
                "handshake refused",
                extra={
                    "status": refusal.status,
                    "why": refusal.message,
                    "peer": self.client_address[0] if self.client_address else "",
                },
            )
            self.result = _json_response(self.start_response, refusal.status, refusal.message)
            self.process_result()
            return
        self.result = self.upgrade_websocket()
        if not hasattr(self, "websocket"):
            if self.status:
                self.process_result()
            else:
                WSGIHandler.run_application(self)
            return
        if self.status and not self.headers_sent:
            self.write(b"")
        try:
            app.run_session(self, identity, since)
        finally:
            self.environ.update({"wsgi.websocket": None})

    def upgrade_connection(self) -> list[bytes] | None:
        version = self.environ.get("HTTP_SEC_WEBSOCKET_VERSION")
        if version not in self.SUPPORTED_VERSIONS:
            return _json_response(
                self.start_response,
                "400 Bad Request",
                f"unsupported WebSocket version {str(version)[:20]}: use 13",
            )
        key = self.environ.get("HTTP_SEC_WEBSOCKET_KEY", "").strip()
        try:
            valid = len(base64.b64decode(key, validate=True)) == 16
        except ValueError:
            valid = False
        if not valid:
            return _json_response(
                self.start_response, "400 Bad Request", "invalid Sec-WebSocket-Key"
            )
        self.websocket = PushWebSocket(self.environ, Stream(self), self)
        self.environ.update({"wsgi.websocket_version": version, "wsgi.websocket": self.websocket})
        accept = base64.b64encode(
            hashlib.sha1((key + self.GUID).encode("latin-1")).digest()
        ).decode("latin-1")
        self.start_response(
            "101 Switching Protocols",
            [("Upgrade", "websocket"), ("Connection", "Upgrade"), ("Sec-WebSocket-Accept", accept)],
        )
        return None

    def log_request(self) -> None:
        pass  # connection events are logged by the edge, without query strings (tokens)


def listen_socket(addr: Address, reuse_port: bool = False, backlog: int = 2048) -> socket.socket:
    """A listening TCP socket; with ``reuse_port`` several processes share the port."""
    family = socket.AF_INET6 if ":" in addr.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((addr.host, addr.port))
    sock.listen(backlog)
    return sock


def make_server(
    listener: socket.socket,
    app: EdgeApp,
    server_class: Callable[..., WSGIServer] = WSGIServer,
) -> WSGIServer:
    """The WebSocket listener's server; ``server_class`` is e.g. ``tls.TLSServer``."""
    return server_class(listener, app, handler_class=EdgeHandler, log=None, error_log=log)
