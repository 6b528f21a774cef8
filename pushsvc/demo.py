"""The demo page: ``/demo`` when ``PUSHSVC_DEMO=1`` (``pushsvc serve --dev``, ``make run``).

The page connects to this node's ``/ws`` with the browser client
(``clients/js/pushsvc.js``) and shows the connection state and the messages
as they arrive. It takes its token from a text field or ``?token=``: the node
never mints tokens for visitors.

The client module is served from the source tree when there is one (an
editable install: edits show up on reload), else from the copy that setup.py
puts into ``pushsvc/static`` at build time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

WSGIEnviron = dict[str, Any]
StartResponse = Callable[..., Any]
WSGIApp = Callable[[WSGIEnviron, StartResponse], Iterable[bytes]]

STATIC = Path(__file__).resolve().parent / "static"
_SOURCE_ROOT = Path(__file__).resolve().parent.parent
CLIENT_NAME = "pushsvc.js"

# Scripts, styles and connections only from this node; nothing inline, no framing.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}


def client_path() -> Path:
    """clients/js/pushsvc.js of a source checkout, else the packaged copy."""
    source = _SOURCE_ROOT / "clients" / "js" / CLIENT_NAME
    if (_SOURCE_ROOT / "pyproject.toml").is_file() and source.is_file():
        return source
    return STATIC / CLIENT_NAME


def _file_app(locate: Callable[[], Path]) -> WSGIApp:
    def app(environ: WSGIEnviron, start_response: StartResponse) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        if method not in ("GET", "HEAD"):
            return _plain(start_response, "405 Method Not Allowed", "use GET", [("Allow", "GET")])
        path = locate()
        try:
            body = path.read_bytes()
        except OSError:
            return _plain(
                start_response,
                "404 Not Found",
                f"{path.name} is missing from this installation: reinstall pushsvc",
            )
        start_response(
            "200 OK",
            [
                ("Content-Type", _TYPES.get(path.suffix, "application/octet-stream")),
                ("Content-Length", str(len(body))),
                *_security_headers(),
            ],
        )
        return [] if method == "HEAD" else [body]

    return app


def _security_headers() -> list[tuple[str, str]]:
    return [
        ("Content-Security-Policy", CSP),
        ("X-Content-Type-Options", "nosniff"),
        ("Referrer-Policy", "no-referrer"),  # the page URL may carry ?token=
        ("Cache-Control", "no-store"),
    ]


def _plain(
    start_response: StartResponse,
    status: str,
    text: str,
    extra: list[tuple[str, str]] | None = None,
) -> list[bytes]:
    body = (text + "\n").encode()
    start_response(
        status,
        [
            ("Content-Type", "text/plain; charset=utf-8"),
            ("Content-Length", str(len(body))),
            *_security_headers(),
            *(extra or []),
        ],
    )
    return [body]


def routes() -> dict[str, WSGIApp]:
    """The routes EdgeApp serves next to ``/ws`` when the demo is on."""
    return {
        "/demo": _file_app(lambda: STATIC / "demo.html"),
        "/demo/demo.js": _file_app(lambda: STATIC / "demo.js"),
        "/demo/demo.css": _file_app(lambda: STATIC / "demo.css"),
        "/demo/favicon.svg": _file_app(lambda: STATIC / "favicon.svg"),
        "/demo/" + CLIENT_NAME: _file_app(client_path),
    }
