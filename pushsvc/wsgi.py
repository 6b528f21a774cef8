"""gevent's WSGI server as the admin port runs it: bounded, and quiet on stderr.

``pywsgi`` as it comes waits forever for a request head, prints a client's
malformed request (and, for some, a traceback) straight to stderr, and answers
it with a text body. Here every request head must be complete within
``head_timeout`` of the moment the server starts waiting for it (the socket is
shut down otherwise), every refusal of a malformed request is a JSON answer, and
what gevent would print goes through ``logging`` (one line per event, in the
node's log format).
"""

from __future__ import annotations

import http.client
import logging
import socket
from collections.abc import Callable, Iterable
from typing import Any

from gevent.pywsgi import WSGIHandler, WSGIServer

from pushsvc.httpwire import error_response

log = logging.getLogger("pushsvc.http")

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

_CLIENT_ERRORS = {
    "400": "the request is malformed",
    "414": "the request line is too long",
    "431": "too many or too large header fields",
}


class BoundedHandler(WSGIHandler):
    """One connection of a ``BoundedWSGIServer``."""

    server: BoundedWSGIServer
    _head_timer: Any = None

    def handle_one_request(self) -> Any:
        timer = self.server.loop.timer(self.server.head_timeout)
        timer.start(self._head_too_slow)
        self._head_timer = timer
        try:
            result = super().handle_one_request()
        finally:
            timer.close()
        if isinstance(result, tuple):  # a refusal: (status, the raw answer)
            status = str(result[0])
            message = _CLIENT_ERRORS.get(status, "the request is malformed")
            result = (status, error_response(int(status), message))
        return result

    def read_request(self, raw_requestline: str) -> Any:
        ok = super().read_request(raw_requestline)
        if self._head_timer is not None:
            self._head_timer.close()  # the head is complete: the deadline is met
        return ok

    def _head_too_slow(self) -> None:
        sock = getattr(self, "socket", None)
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _handle_client_error(self, ex: BaseException) -> tuple[str, bytes]:
        status = "400"
        if isinstance(ex, http.client.HTTPException) and not isinstance(ex, ValueError):
            status = "431"  # more than 100 fields, or a field line over 64 KiB
        text = str(getattr(ex, "formatted_message", "") or ex or type(ex).__name__)
        log.info(
            "request refused",
            extra={"status": status, "why": text[:200], "peer": _peer(self.client_address)},
        )
        return status, b""

    def log_error(self, msg: str, *args: Any) -> None:
        try:
            text = msg % args if args else msg
        except (TypeError, ValueError):
            text = f"{msg!r} {args!r}"
        log.info("request error", extra={"why": text[:500], "peer": _peer(self.client_address)})

    def log_request(self) -> None:
        pass  # no access log: request lines may carry credentials


class BoundedWSGIServer(WSGIServer):
    handler_class = BoundedHandler

    def __init__(self, listener: socket.socket, application: WSGIApp, head_timeout: float) -> None:
        super().__init__(listener, application, log=None, error_log=log)
        self.head_timeout = head_timeout


def _peer(address: Any) -> str:
    return str(address[0]) if isinstance(address, tuple) and address else ""
