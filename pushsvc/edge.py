"""The WebSocket edge: the sockets of the WebSocket port, from accept to close.

A gevent ``StreamServer`` accepts; each socket gets one greenlet, which runs
its whole life here. The bytes are parsed by two sans-I/O modules: the request
head by ``httpwire`` and the frames by ``wsframes``. This module only moves
bytes between them and the socket, keeps the budgets and deadlines, and hands
the connection to a ``Session``.

Budgets and deadlines (``docs/operations.md``):

- every socket counts against ``max_connections`` and its source's
  ``max_connections_per_ip`` from accept to close; one over them is answered at
  once with 503 or 429 and ``Retry-After`` (``budget.py``);
- the request head must be complete within ``handshake_timeout`` of the accept
  (408 otherwise), within ``max_header_bytes`` and ``max_header_fields``
  (431/414), and well-formed (400/505);
- after the upgrade the client's first frame must arrive within
  ``first_frame_timeout``; a client silent for half of it gets a ping, which
  any conforming client answers with its first frame (the node's heartbeat
  keeps this deadline: no timer per socket).

Every refusal before the upgrade is a complete HTTP/1.1 answer with a JSON body
(401 token, 403 Origin, 400 ``since`` or a malformed upgrade, 426 version, 503
draining). After the upgrade the connection belongs to a ``Session``: this
module reads frames and hands them over, and closes with 1002, 1007 or 1009 what
breaks RFC 6455.
"""

from __future__ import annotations

import io
import logging
import secrets
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple
from urllib.parse import parse_qs, urlsplit

import gevent
from gevent.server import StreamServer

from pushsvc import wsframes
from pushsvc.auth import Identity, TokenVerifier
from pushsvc.authhook import AuthHook, HookUnavailable, credential_of
from pushsvc.budget import ConnectionBudget
from pushsvc.config import Address
from pushsvc.errors import Unauthenticated
from pushsvc.httpwire import (
    HeadLimits,
    HeadReader,
    HttpError,
    Request,
    check_upgrade,
    error_response,
    reason_phrase,
    response,
    switching_protocols,
    wants_upgrade,
)
from pushsvc.metrics import Metrics
from pushsvc.node import Node
from pushsvc.protocol import Close
from pushsvc.session import Session, SessionLimits
from pushsvc.tls import NodeTLS

log = logging.getLogger("pushsvc.edge")

WSGIEnviron = dict[str, Any]
StartResponse = Callable[..., Any]
WSGIApp = Callable[[WSGIEnviron, StartResponse], Iterable[bytes]]

READ_SIZE = 65536
LINGER = 1.0  # seconds a refused client gets to read its answer before the socket closes
LINGER_BYTES = 65536  # what is read (and dropped) from it meanwhile, at most
OVER_BUDGET_LOG_EVERY = 10.0  # seconds between two log lines about a full node or address
OVER_BUDGET_TLS = 2.0  # seconds a socket over a budget gets for its TLS handshake

_CLOSE_FOR_VIOLATION = {
    wsframes.PROTOCOL_ERROR: Close.PROTOCOL_ERROR,
    wsframes.INVALID_DATA: Close.BAD_DATA,
    wsframes.TOO_BIG: Close.TOO_BIG,
}


@dataclass
class EdgeConfig:
    node_id: str
    allowed_origins: tuple[str, ...]
    max_frame_bytes: int
    limits: SessionLimits
    handshake_timeout: float = 10.0
    first_frame_timeout: float = 30.0
    head_limits: HeadLimits = field(default_factory=HeadLimits)
    max_connections: int = 100_000
    max_connections_per_ip: int = 10_000


class Upgraded(NamedTuple):
    """A socket past its 101: what the session's read loop starts from."""

    socket: socket.socket
    client_address: tuple[str, int]
    buffered: bytes  # bytes the client sent right after its request head


class EdgeApp:
    """What the WebSocket port answers: the handshake's checks, plain HTTP routes,
    and the read loop of an upgraded connection."""

    def __init__(
        self,
        config: EdgeConfig,
        verifier: TokenVerifier,
        node: Node,
        metrics: Metrics,
        extra_routes: dict[str, WSGIApp] | None = None,
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

    def respond(self, request: Request, peer: str) -> bytes:
        """The answer to a request that is not a WebSocket upgrade."""
        path = request.path
        route = self.routes.get(path)
        if route is not None:
            return _run_wsgi(route, request, peer)
        if path == "/ws":
            raise HttpError(
                426,
                "use a WebSocket client for /ws",
                (("Upgrade", "websocket"), ("Sec-WebSocket-Version", "13")),
            )
        raise HttpError(404, f"no route {path[:100]}")

    # -- the handshake ----------------------------------------------------------------

    def authorize(self, request: Request, peer: str = "") -> tuple[Identity, int | None]:
        if not self.accepting:
            raise HttpError(503, "node is draining: connect to another node")
        self._check_origin(request)
        query = parse_qs(request.query, keep_blank_values=True, max_num_fields=100)
        token = ""
        header = request.header("authorization")
        if header is not None:
            scheme, _, value = header.partition(" ")
            if scheme.lower() != "bearer":
                raise HttpError(401, "Authorization must be 'Bearer <jwt>'")
            token = value.strip()
        elif "token" in query:
            token = query["token"][-1]
        hook = self.auth_hook
        try:
            if hook is None:
                identity = self.verifier.verify(token)
            else:
                credential = credential_of(
                    token, header is not None, request.header("cookie") or "", hook.cookie
                )
                identity = hook.authenticate(credential, peer, request.header("origin") or "")
        except Unauthenticated as exc:
            raise HttpError(401, str(exc)) from None
        except HookUnavailable as exc:
            raise HttpError(503, str(exc)) from None
        if identity.jti and self.node.revoked(identity.jti):
            raise HttpError(401, "token revoked")
        since: int | None = None
        if "since" in query:
            text = query["since"][-1]
            if not (text.isascii() and text.isdigit()) or len(text) > 19:
                raise HttpError(400, "since must be a non-negative integer seq")
            since = int(text)
        return identity, since

    def _check_origin(self, request: Request) -> None:
        origin = request.header("origin")
        if origin is None:
            return  # not a browser
        normalized = origin.lower().rstrip("/")
        if self._allowed:
            if "*" in self._allowed or normalized in self._allowed:
                return
        else:
            host = (request.header("host") or "").lower()
            if host and urlsplit(normalized).netloc == host:
                return
        raise HttpError(403, f"origin {origin[:100]} is not allowed")

    # -- after the upgrade ---------------------------------------------------------------

    def run_session(self, conn: Upgraded, identity: Identity, since: int | None) -> None:
        """The connection's read loop, from its first moment: the welcome and the
        replay follow when the node's admission has heard from the store."""
        conn_id = secrets.token_hex(6)
        session = Session(conn_id, identity, conn.socket, self.node, self.config.limits, since)
        log.info(
            "connection opened",
            extra={"conn": conn_id, "user": identity.user_id, "peer": conn.client_address[0]},
        )
        reason = "client went away"
        try:
            self.node.connect(session)
            reason = self._read_frames(conn, session)
        except wsframes.ProtocolViolation as exc:
            reason = f"protocol error: {exc.reason}"
            session.close(_CLOSE_FOR_VIOLATION[exc.code], exc.reason)
        except OSError:
            pass  # EOF or reset
        finally:
            session.finish()
            log.info("connection closed", extra={"conn": conn_id, "reason": reason})

    def _read_frames(self, conn: Upgraded, session: Session) -> str:
        """Feed the socket's bytes to the frame reader and its events to the session,
        until the client closes or goes away. Returns why the loop ended."""
        sock = conn.socket
        reader = wsframes.FrameReader(self.config.max_frame_bytes)
        data = conn.buffered
        # No timeout on the socket: the first frame's deadline (a ping at half of
        # it, a close at its end) is the heartbeat's (Session.tick).
        waiting = True
        session.await_first_frame(self.config.first_frame_timeout)
        sock.settimeout(None)
        while True:
            reader.feed(data)
            while (event := reader.next_event()) is not None:
                if waiting:
                    waiting = False
                    session.first_frame()
                if isinstance(event, wsframes.TextMessage):
                    session.on_frame(event.text)
                elif isinstance(event, wsframes.BinaryMessage):
                    session.on_frame(event.data)
                elif isinstance(event, wsframes.Ping):
                    session.on_ping(event.payload)
                elif isinstance(event, wsframes.Pong):
                    session.touch()
                else:
                    session.close(Close.NORMAL)
                    return f"client closed {event.code or 'without a code'}"
            data = sock.recv(READ_SIZE)
            if not data:
                return "client went away"


# -- the server: sockets, budgets, deadlines ---------------------------------------------


class EdgeServer(StreamServer):
    """The WebSocket port: one greenlet per socket, from accept to close."""

    def __init__(self, listener: socket.socket, app: EdgeApp, tls: NodeTLS | None = None) -> None:
        super().__init__(listener)
        self.app = app
        self.tls = tls
        config = app.config
        self.budget = ConnectionBudget(config.max_connections, config.max_connections_per_ip)
        self._over_budget_logged = -OVER_BUDGET_LOG_EVERY

    @property
    def sockets(self) -> int:
        """Sockets held now: handshakes in progress and WebSocket connections."""
        return self.budget.total

    def handle(self, sock: socket.socket, address: Any) -> None:
        peer = address[0] if isinstance(address, tuple) and address else ""
        over = self.budget.admit(peer)
        if over is not None:
            self._refused(over.status, over.message, peer, quiet=True)
            answer = error_response(
                over.status, over.message, (("Retry-After", str(over.retry_after)),)
            )
            if self.tls is not None:  # the answer needs the TLS session: a short one
                secured = self._secure(sock, peer, time.monotonic() + OVER_BUDGET_TLS)
                if secured is None:
                    _close(sock)
                    return
                sock = secured
            _finish(sock, answer)
            return
        deadline = time.monotonic() + self.app.config.handshake_timeout
        try:
            if self.tls is not None:
                secured = self._secure(sock, peer, deadline)
                if secured is None:
                    return
                sock = secured  # closed below in its place
            self._serve(sock, address, peer, deadline)
        except Exception:
            log.exception("connection failed", extra={"peer": peer})
        finally:
            _close(sock)
            self.budget.release(peer)

    def _secure(self, sock: socket.socket, peer: str, deadline: float) -> socket.socket | None:
        """The TLS handshake, within the handshake deadline (it counts against it)."""
        assert self.tls is not None
        try:
            with gevent.Timeout(max(0.0, deadline - time.monotonic()), TimeoutError):
                return self.tls.accept(sock)
        except (OSError, ValueError) as exc:
            # Scanners and clients that distrust the certificate are not errors.
            log.debug("TLS handshake failed", extra={"peer": peer, "error": str(exc)[:200]})
            return None

    def _serve(self, sock: socket.socket, address: Any, peer: str, deadline: float) -> None:
        app = self.app
        timeout = app.config.handshake_timeout
        reader = HeadReader(app.config.head_limits)
        try:
            request = _read_head(sock, reader, deadline)
        except HttpError as err:
            self._refused(err.status, err.message, peer, what="request refused")
            _finish(sock, err.response())
            return
        except TimeoutError:
            self._refused(408, "handshake timeout", peer, quiet=True)
            _answer_now(sock, error_response(408, f"send the request within {timeout:g} s"))
            return
        except OSError:
            return  # reset during the handshake
        if request is None:
            return  # the client went away before its request was complete
        if not (request.path == "/ws" and wants_upgrade(request)):
            try:
                answer = app.respond(request, peer)
            except HttpError as err:
                answer = err.response()
            _finish(sock, answer)
            return
        try:
            accept = check_upgrade(request)
            identity, since = app.authorize(request, peer)
        except HttpError as err:
            self._refused(err.status, err.message, peer)
            _finish(sock, err.response())
            return
        try:
            _send_head(sock, switching_protocols(accept), timeout)
        except OSError:
            return
        upgraded = Upgraded(sock, address, reader.rest)
        # The session lives on in this frame: drop what only the handshake needed
        # (a few objects per connection less for memory and the collector's passes).
        del reader, request, accept
        app.run_session(upgraded, identity, since)
        _finish(sock)  # the close handshake is over: the server closes TCP first (RFC 6455 7.1.1)

    def _refused(
        self,
        status: int,
        why: str,
        peer: str,
        quiet: bool = False,
        what: str = "handshake refused",
    ) -> None:
        """Count a refusal; log it (at most one line per interval for the budget's
        and the deadline's, which come in floods)."""
        self.app.metrics.rejected.labels(str(status)).inc()
        if quiet:
            now = time.monotonic()
            if status == 408 or now - self._over_budget_logged < OVER_BUDGET_LOG_EVERY:
                log.debug("handshake refused", extra={"status": status, "why": why, "peer": peer})
                return
            self._over_budget_logged = now
            log.warning(
                "handshake refused",
                extra={"status": status, "why": why, "peer": peer, "sockets": self.budget.total},
            )
            return
        log.info(
            what, extra={"status": f"{status} {reason_phrase(status)}", "why": why, "peer": peer}
        )


def _read_head(sock: socket.socket, reader: HeadReader, deadline: float) -> Request | None:
    """The request head, read within ``deadline``; None if the client went away."""
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        sock.settimeout(remaining)
        data = sock.recv(READ_SIZE)
        if not data:
            return None
        request = reader.feed(data)
        if request is not None:
            return request


def _send_head(sock: socket.socket, data: bytes, timeout: float) -> None:
    """Send a short answer: straight to the socket (a fresh socket's buffer always
    has room for it: one system call, no timer), else within ``timeout``."""
    sent = 0
    raw = getattr(sock, "_sock", None)
    if raw is not None and getattr(sock, "_sslobj", None) is None:
        try:
            sent = raw.send(data)  # gevent keeps the real socket non-blocking
        except BlockingIOError:
            sent = 0
        if sent == len(data):
            return
    sock.settimeout(timeout)
    sock.sendall(data[sent:])


def _answer_now(sock: socket.socket, data: bytes) -> None:
    """What fits in the socket's buffer, without waiting (a client that does not read)."""
    try:
        sock.settimeout(0.0)
        sock.send(data)
    except OSError:
        pass


def _finish(sock: socket.socket, answer: bytes = b"") -> None:
    """Send a last answer, end our side, and let the client read it: closing with
    its bytes still unread would reset the connection and could discard the answer."""
    try:
        sock.settimeout(LINGER)
        if answer:
            sock.sendall(answer)
        sock.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + LINGER
        drained = 0
        while drained < LINGER_BYTES:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            sock.settimeout(remaining)
            chunk = sock.recv(READ_SIZE)
            if not chunk:
                break
            drained += len(chunk)
    except OSError:
        pass
    _close(sock)


def _close(sock: socket.socket) -> None:
    try:
        sock.close()
    except OSError:
        pass


# -- plain HTTP routes (the demo page) ----------------------------------------------------


class _ErrorStream:
    """``wsgi.errors``: what an application writes there goes to the log."""

    def write(self, text: str) -> int:
        if text.strip():
            log.warning("application error output", extra={"text": text.strip()[:2000]})
        return len(text)

    def writelines(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        pass


def _environ(request: Request, peer: str) -> WSGIEnviron:
    host = request.header("host") or ""
    env: WSGIEnviron = {
        "REQUEST_METHOD": request.method,
        "SCRIPT_NAME": "",
        "PATH_INFO": request.path,
        "QUERY_STRING": request.query,
        "SERVER_NAME": host.rsplit(":", 1)[0] or "localhost",
        "SERVER_PORT": host.rsplit(":", 1)[1] if ":" in host else "80",
        "SERVER_PROTOCOL": f"HTTP/{request.version[0]}.{request.version[1]}",
        "REMOTE_ADDR": peer,
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(),
        "wsgi.errors": _ErrorStream(),
        "wsgi.multithread": False,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    for name, value in request.fields:
        if "_" in name:
            continue  # would pass for another field once dashes become underscores
        key = "HTTP_" + name.upper().replace("-", "_")
        if key in ("HTTP_CONTENT_TYPE", "HTTP_CONTENT_LENGTH"):
            key = key[5:]
        env[key] = f"{env[key]},{value}" if key in env else value
    return env


def _run_wsgi(app: WSGIApp, request: Request, peer: str) -> bytes:
    """Call a WSGI application and return its whole answer (it closes the connection)."""
    started: list[tuple[str, list[tuple[str, str]]]] = []

    def start_response(
        status: str, headers: list[tuple[str, str]], exc_info: Any = None
    ) -> Callable[[bytes], None]:
        started[:] = [(status, headers)]
        return lambda data: None

    try:
        result = app(_environ(request, peer), start_response)
        try:
            body = b"".join(result)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        if not started:
            raise RuntimeError("the application did not call start_response")
        status_line, headers = started[0]
        status = int(status_line.split(" ", 1)[0])
    except Exception:
        log.exception("route failed", extra={"path": request.path[:100]})
        return error_response(500, "internal error: see the node's log")
    if request.method == "HEAD":  # the application's Content-Length is the GET's
        return response(status, b"", headers=headers, head_only=True)
    headers = [(n, v) for n, v in headers if n.lower() != "content-length"]
    headers.append(("Content-Length", str(len(body))))
    return response(status, body, headers=headers)


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


def make_server(listener: socket.socket, app: EdgeApp, tls: NodeTLS | None = None) -> EdgeServer:
    """The WebSocket listener's server; with ``tls``, every socket speaks wss://."""
    return EdgeServer(listener, app, tls)
