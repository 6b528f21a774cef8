"""The admin console over HTTP: ``/admin`` (static page) and ``/admin/api/*`` (JSON).

Served by the admin listener only (never the public WebSocket port), and only
with ``admin_ui`` on. The page itself holds nothing secret; every API call
needs ``Authorization: Bearer <admin token>``, compared in constant time. No
cookies are set or read, so a page on another site cannot make the browser
act with the operator's credentials; on top of that, POSTs must be
``application/json`` (which a cross-site form cannot send without a CORS
preflight, and no CORS is answered) and a request whose ``Origin`` is not this
listener's is refused. Static files go out with a strict CSP: scripts, styles
and connections from this origin only, nothing inline, no framing.
"""

from __future__ import annotations

import hmac
import json
import logging
import secrets
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from pushsvc import jsontext
from pushsvc.admin_api import AdminApi, Json
from pushsvc.errors import InvalidArgument, NotFound, PushError, RateLimited, StoreUnavailable

log = logging.getLogger("pushsvc.admin")

WSGIEnviron = dict[str, Any]
StartResponse = Callable[..., Any]

STATIC = Path(__file__).resolve().parent / "static"
PAGE_DIR = STATIC / "admin"
API_PREFIX = "/admin/api/"
BODY_SLACK = 64 * 1024  # bytes of a JSON body beyond the payload it carries

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_SECURITY_HEADERS = [
    ("Content-Security-Policy", CSP),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
    ("Cache-Control", "no-store"),
]
_FILES = {
    "/admin": (PAGE_DIR / "index.html", "text/html; charset=utf-8"),
    "/admin/": (PAGE_DIR / "index.html", "text/html; charset=utf-8"),
    "/admin/admin.js": (PAGE_DIR / "admin.js", "text/javascript; charset=utf-8"),
    "/admin/admin.css": (PAGE_DIR / "admin.css", "text/css; charset=utf-8"),
    "/admin/favicon.svg": (STATIC / "favicon.svg", "image/svg+xml"),
}
_STATUS = {
    200: "200 OK",
    400: "400 Bad Request",
    401: "401 Unauthorized",
    403: "403 Forbidden",
    404: "404 Not Found",
    405: "405 Method Not Allowed",
    411: "411 Length Required",
    413: "413 Content Too Large",
    415: "415 Unsupported Media Type",
    429: "429 Too Many Requests",
    500: "500 Internal Server Error",
    503: "503 Service Unavailable",
}


class HttpError(Exception):
    def __init__(self, status: int, message: str, headers: list[tuple[str, str]] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or []


class AdminConsole:
    """The WSGI app behind ``/admin`` on the admin listener."""

    def __init__(self, api: AdminApi, token: str, max_payload: int) -> None:
        self._token = token.encode()
        self._max_body = 6 * max_payload + BODY_SLACK  # JSON escapes a byte in up to 6
        self._get: dict[str, Callable[[Mapping[str, list[str]]], Json]] = {
            "stats": api.stats,
            "nodes": api.nodes,
            "user": api.user,
        }
        self._post: dict[str, Callable[[Mapping[str, Any]], Json]] = {
            "push": api.push,
            "publish": api.publish,
            "disconnect": api.disconnect,
        }

    def __call__(self, environ: WSGIEnviron, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path.startswith(API_PREFIX):
            return self._api(environ, start_response, path[len(API_PREFIX) :])
        return self._file(environ, start_response, path)

    # -- the page ---------------------------------------------------------------------------

    def _file(
        self, environ: WSGIEnviron, start_response: StartResponse, path: str
    ) -> Iterable[bytes]:
        found = _FILES.get(path)
        if found is None:
            return _text(start_response, "404 Not Found", "not found")
        method = environ.get("REQUEST_METHOD", "GET")
        if method not in ("GET", "HEAD"):
            return _text(start_response, "405 Method Not Allowed", "use GET", [("Allow", "GET")])
        file, content_type = found
        try:
            body = file.read_bytes()
        except OSError:
            return _text(
                start_response, "404 Not Found", f"{file.name} is missing: reinstall pushsvc"
            )
        start_response(
            "200 OK",
            [
                ("Content-Type", content_type),
                ("Content-Length", str(len(body))),
                *_SECURITY_HEADERS,
            ],
        )
        return [] if method == "HEAD" else [body]

    # -- the JSON API ------------------------------------------------------------------------

    def _api(self, environ: WSGIEnviron, start_response: StartResponse, name: str) -> list[bytes]:
        peer = environ.get("REMOTE_ADDR", "")
        status, result, headers = 200, {}, []
        try:
            self._authenticate(environ)
            result = self._dispatch(environ, name)
        except HttpError as exc:
            status, result, headers = exc.status, {"error": exc.message}, exc.headers
            if status == 401:
                log.info("admin token refused", extra={"call": name[:64], "peer": peer})
        except PushError as exc:
            status, result = _status_of(exc), {"error": str(exc)}
        except Exception:
            request_id = secrets.token_hex(6)
            log.exception("admin call failed", extra={"call": name[:64], "request": request_id})
            status, result = 500, {"error": f"internal error (request id {request_id} in the log)"}
        if name in self._post and status != 401:
            log.info("admin action", extra={"call": name, "status": status, "peer": peer})
        return _json(start_response, status, result, headers)

    def _authenticate(self, environ: WSGIEnviron) -> None:
        header = environ.get("HTTP_AUTHORIZATION", "").strip()
        scheme, _, given = header.partition(" ")
        given = given.strip()
        challenge = [("WWW-Authenticate", 'Bearer realm="pushsvc admin"')]
        if header and scheme.lower() != "bearer":
            raise HttpError(401, "Authorization must be 'Bearer <admin token>'", challenge)
        if not given:
            missing = "admin token missing: send Authorization: Bearer <token>"
            raise HttpError(401, missing, challenge)
        if not hmac.compare_digest(given.encode(), self._token):
            raise HttpError(401, "admin token is not valid", challenge)

    def _dispatch(self, environ: WSGIEnviron, name: str) -> Json:
        method = environ.get("REQUEST_METHOD", "GET")
        if name in self._get:
            if method != "GET":
                raise HttpError(405, f"{name}: use GET", [("Allow", "GET")])
            return self._get[name](parse_qs(environ.get("QUERY_STRING", "")))
        if name in self._post:
            if method != "POST":
                raise HttpError(405, f"{name}: use POST", [("Allow", "POST")])
            _same_origin(environ)
            return self._post[name](self._body(environ))
        raise HttpError(404, f"no admin API {name!r}")

    def _body(self, environ: WSGIEnviron) -> Mapping[str, Any]:
        ctype = environ.get("CONTENT_TYPE", "").split(";", 1)[0].strip().lower()
        if ctype != "application/json":
            raise HttpError(415, "send the body as Content-Type: application/json")
        length_text = environ.get("CONTENT_LENGTH") or ""
        try:
            length = int(length_text)
        except ValueError:
            raise HttpError(411, "Content-Length is missing or not a number") from None
        if length < 0:
            raise HttpError(411, "Content-Length is missing or not a number")
        if length > self._max_body:
            raise HttpError(413, f"the body is over {self._max_body} bytes")
        raw = environ["wsgi.input"].read(length)
        try:
            body = jsontext.loads(raw)
        except jsontext.JsonError as exc:
            raise InvalidArgument(f"the body is not valid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise InvalidArgument("the body must be a JSON object")
        return body


def _same_origin(environ: WSGIEnviron) -> None:
    """A browser names the page that sent a POST; it must be this listener's own."""
    origin = environ.get("HTTP_ORIGIN")
    if origin is None:
        return  # not a browser (curl, scripts): the token is what counts
    host = environ.get("HTTP_HOST", "")
    if origin == "null" or urlsplit(origin).netloc.lower() != host.lower():
        raise HttpError(403, f"origin {origin[:100]} is not this admin listener")


def _status_of(exc: PushError) -> int:
    if isinstance(exc, InvalidArgument):
        return 400
    if isinstance(exc, NotFound):
        return 404
    if isinstance(exc, RateLimited):
        return 429
    if isinstance(exc, StoreUnavailable):
        return 503
    return 500


def _json(
    start_response: StartResponse,
    status: int,
    body: Json,
    extra: list[tuple[str, str]] | None = None,
) -> list[bytes]:
    data = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"
    start_response(
        _STATUS.get(status, f"{status} Error"),
        [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(data))),
            *_SECURITY_HEADERS,
            *(extra or []),
        ],
    )
    return [data]


def _text(
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
            *_SECURITY_HEADERS,
            *(extra or []),
        ],
    )
    return [body]
