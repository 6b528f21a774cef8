"""The admin listener: ``/metrics`` for Prometheus, ``/healthz`` and ``/readyz`` for probes,
and the admin console under ``/admin`` when it is on (``admin_console``)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from pushsvc.metrics import Metrics

Readiness = Callable[[], tuple[bool, str]]
WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class AdminApp:
    def __init__(
        self, metrics: Metrics, readiness: Readiness, console: WSGIApp | None = None
    ) -> None:
        self._metrics = metrics
        self._readiness = readiness
        self._console = console

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            body = generate_latest(self._metrics.registry)
            return _respond(start_response, "200 OK", body, CONTENT_TYPE_LATEST)
        if path == "/healthz":
            return _respond(start_response, "200 OK", b'{"status":"ok"}\n')
        if path == "/readyz":
            ready, why = self._readiness()
            body = json.dumps({"ready": ready, "reason": why}).encode() + b"\n"
            status = "200 OK" if ready else "503 Service Unavailable"
            return _respond(start_response, status, body)
        if self._console is not None and (path == "/admin" or path.startswith("/admin/")):
            return self._console(environ, start_response)
        return _respond(start_response, "404 Not Found", b'{"error":"not found"}\n')


def _respond(
    start_response: Callable[..., Any],
    status: str,
    body: bytes,
    content_type: str = "application/json",
) -> list[bytes]:
    start_response(status, [("Content-Type", content_type), ("Content-Length", str(len(body)))])
    return [body]
