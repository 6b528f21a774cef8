"""HTTP/1.1 on the WebSocket port, without I/O: the request head in, answers out.

``HeadReader`` takes bytes as they arrive and yields the parsed ``Request`` once
the head (request line and header fields) is complete, or raises ``HttpError``
with the status the client gets:

- 400 for anything malformed (RFC 9112): a request line that is not
  ``method SP target SP HTTP/x.y``, a field name that is not a token or is
  followed by white space, a folded line, a control character or a bare CR, a
  missing or repeated ``Host``, a request with a body;
- 414 when the request line alone is over the size limit, 431 when the head is
  (``max_bytes``, request line included) or has more than ``max_fields`` fields;
- 505 for an HTTP version other than 1.x.

``check_upgrade`` holds the WebSocket handshake to RFC 6455 4.2.1: a GET over
HTTP/1.1, ``Connection: Upgrade``, one ``Sec-WebSocket-Key`` of 16 bytes in
base64, and version 13 only (else 426 with ``Sec-WebSocket-Version: 13``).

Every answer this module builds (``response``, ``error_response``) has a correct
status line, a ``Content-Length`` and ``Connection: close``; errors have a JSON
body ``{"error": "<reason phrase>", "message": "<what to do>"}``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from dataclasses import dataclass
from http import HTTPStatus
from typing import NamedTuple
from urllib.parse import unquote, urlsplit

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_TARGET = re.compile(rb"[\x21-\x7e]+")
# What a request line may be made of, checked as it arrives (CR only before its LF).
_LINE_BYTES = re.compile(rb"[\x20-\x7e]*\r?")
_VERSION = re.compile(rb"HTTP/([0-9])\.([0-9])")
_VERSION_START = re.compile(rb"[HTP/0-9.]*")
_BAD_LINE = "the request line must be 'METHOD /path HTTP/1.1'"
_BAD_METHOD = "the request method is not a token"
_BAD_TARGET = "the request target has characters that must be percent-encoded"
_BAD_VERSION = "the HTTP version must look like HTTP/1.1"
# A field value without its surrounding white space: visible ASCII, obs-text, and
# spaces or tabs between them (RFC 9110 5.5); no other control character.
_FIELD_VALUE = re.compile(rb"[\t \x21-\x7e\x80-\xff]*")
_MAX_LEADING_EMPTY_LINES = 4
# Header field lines that are all well-formed: a token, a colon, a value of the
# characters _FIELD_VALUE allows (white space around it included), CRLF or LF.
_FIELD_LINES = re.compile(rb"(?:[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[\t \x21-\x7e\x80-\xff]*\r?\n)*")


class HttpError(Exception):
    """A request refused with ``status``; ``message`` tells the client what to do."""

    def __init__(
        self, status: int, message: str, headers: tuple[tuple[str, str], ...] = ()
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers

    def response(self) -> bytes:
        return error_response(self.status, self.message, self.headers)


@dataclass(frozen=True, slots=True)
class HeadLimits:
    max_bytes: int = 16384  # request line and header fields together
    max_fields: int = 100


class Request(NamedTuple):
    method: str
    target: str
    version: tuple[int, int]
    fields: tuple[tuple[str, str], ...]  # (lower-cased name, value) in order

    @property
    def path(self) -> str:
        """The percent-decoded path of the target (origin or absolute form)."""
        return unquote(self._split()[0], errors="replace")

    @property
    def query(self) -> str:
        return self._split()[1]

    def _split(self) -> tuple[str, str]:
        target = self.target
        if not target.startswith("/"):
            parts = urlsplit(target)  # absolute form: http://host/ws?...
            return parts.path or "/", parts.query
        path, _, query = target.partition("?")
        return path, query

    def values(self, name: str) -> list[str]:
        return [v for n, v in self.fields if n == name]

    def header(self, name: str) -> str | None:
        """The field's value; several lines of it are joined with ", " (RFC 9110 5.3)."""
        values = self.values(name)
        return ", ".join(values) if values else None

    def tokens(self, name: str) -> set[str]:
        """The comma-separated, case-insensitive tokens of a field (Connection, Upgrade)."""
        return {t.strip().lower() for v in self.values(name) for t in v.split(",") if t.strip()}


class HeadReader:
    """Accumulates the bytes of one request head; ``rest`` is what came after it.

    Each ``feed`` looks only at the bytes it brings (and the three before them), so
    a client sending its head a byte at a time costs linear, not quadratic, work.
    """

    __slots__ = ("_buf", "_lead", "_limits", "_line_end", "_scanned", "rest")

    def __init__(self, limits: HeadLimits) -> None:
        self._limits = limits
        self._buf = bytearray()
        self._lead = -1  # where the request line starts, once known
        self._line_end = -1  # where it ends (its LF), once known
        self._scanned = 0  # how far the request line has been checked
        self.rest = b""

    def feed(self, data: bytes) -> Request | None:
        """The request once its head is complete; None while more is needed."""
        buf = self._buf
        start = len(buf)
        buf += data
        limit = self._limits.max_bytes
        if self._lead < 0:
            # Empty lines before the request line are skipped (RFC 9112 2.2).
            i = start
            while i < len(buf) and buf[i] in b"\r\n":
                i += 1
            if i == len(buf):
                if len(buf) > limit:
                    raise HttpError(400, "expected a request line")
                return None
            self._lead = self._scanned = i
        if self._line_end < 0:
            # The request line as it arrives: a stranger's binary (a TLS hello on
            # the cleartext port) is refused at once, not at the deadline.
            newline = buf.find(b"\n", self._scanned)
            line_end = newline if newline >= 0 else len(buf)
            if not _LINE_BYTES.fullmatch(buf, self._scanned, line_end):
                _diagnose(bytes(buf[self._lead : line_end]))
            self._scanned = line_end
            if newline < 0:
                if len(buf) - self._lead > limit:
                    raise HttpError(414, f"the request line is over {limit} bytes")
                return None
            self._line_end = newline
        # Only the newly arrived bytes (and the three before them) can end the head.
        end = _head_end(buf, max(start - 3, self._line_end))
        if end is None:
            if len(buf) - self._lead > limit:
                raise self._too_large()
            return None
        head_len, body_start = end
        if head_len - self._lead > limit:
            raise self._too_large()
        self.rest = bytes(buf[body_start:])
        return parse_head(bytes(buf[:head_len]), self._limits)

    def _too_large(self) -> HttpError:
        limit = self._limits.max_bytes
        if self._line_end - self._lead > limit:
            return HttpError(414, f"the request line is over {limit} bytes")
        return HttpError(
            431, f"the request head is over {limit} bytes: send fewer or smaller header fields"
        )


def _diagnose(line: bytes) -> None:
    """Raise the 400 that says what is wrong with a request line (or its start)."""
    parts = line.rstrip(b"\r").split(b" ")
    if parts[0] and not _TOKEN.fullmatch(parts[0]):
        raise HttpError(400, _BAD_METHOD)
    if len(parts) > 1 and parts[1] and not _TARGET.fullmatch(parts[1]):
        raise HttpError(400, _BAD_TARGET)
    if len(parts) > 2 and not _VERSION_START.fullmatch(parts[2]):
        raise HttpError(400, _BAD_VERSION)
    raise HttpError(400, _BAD_LINE)


def _head_end(buf: bytearray, search_from: int) -> tuple[int, int] | None:
    """(length of the head, offset of what follows it): the head ends at the first
    empty line, LF or CRLF, after a line break at or past ``search_from``."""
    lf = buf.find(b"\n\n", search_from)
    crlf = buf.find(b"\n\r\n", search_from, lf + 3 if lf >= 0 else len(buf))
    if crlf >= 0 and (lf < 0 or crlf < lf):
        return crlf + 1, crlf + 3
    if lf >= 0:
        return lf + 1, lf + 2
    return None


def parse_head(head: bytes, limits: HeadLimits) -> Request:
    """Parse a complete head (ending with its last field's line break)."""
    request = _parse_plain_head(head, limits)
    if request is None:
        request = _parse_head_line_by_line(head, limits)
    _check_framing(request)
    return request


def _parse_plain_head(head: bytes, limits: HeadLimits) -> Request | None:
    """The common head, in a few steps: the request line first, and field lines that
    one regular expression finds well-formed (what ``_field`` accepts, line by line).
    None for anything else, which the line-by-line parser refuses with its reason."""
    end = head.find(b"\n")
    if end <= 0 or head[0] in b"\r\n":
        return None
    section = head[end + 1 :]
    if section.count(b"\n") > limits.max_fields or not _FIELD_LINES.fullmatch(section):
        return None
    method, target, version = _request_line(_strip_cr(head[:end]))
    fields = []
    for line in section.splitlines():  # no bare CR: only CRLF or LF end a line here
        name, _, value = line.partition(b":")
        fields.append((name.decode("ascii").lower(), value.strip(b" \t").decode("latin-1")))
    return Request(method, target, version, tuple(fields))


def _parse_head_line_by_line(head: bytes, limits: HeadLimits) -> Request:
    lines = head.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    skipped = 0
    while lines and lines[0] in (b"", b"\r"):
        lines.pop(0)
        skipped += 1
    if skipped > _MAX_LEADING_EMPTY_LINES or not lines:
        raise HttpError(400, "expected a request line")
    request_line, *field_lines = (_strip_cr(line) for line in lines)
    method, target, version = _request_line(request_line)
    if len(field_lines) > limits.max_fields:
        raise HttpError(
            431, f"more than {limits.max_fields} header fields: send fewer header fields"
        )
    fields: list[tuple[str, str]] = []
    for line in field_lines:
        fields.append(_field(line))
    return Request(method, target, version, tuple(fields))


def _strip_cr(line: bytes) -> bytes:
    if line.endswith(b"\r"):
        line = line[:-1]
    if b"\r" in line:
        raise HttpError(400, "bare CR in the request head")
    return line


def _request_line(line: bytes) -> tuple[str, str, tuple[int, int]]:
    parts = line.split(b" ")
    if not _TOKEN.fullmatch(parts[0]):
        raise HttpError(400, _BAD_METHOD)
    if len(parts) != 3 or not all(parts):
        raise HttpError(400, _BAD_LINE)
    raw_method, raw_target, raw_version = parts
    if not _TARGET.fullmatch(raw_target):
        raise HttpError(400, _BAD_TARGET)
    match = _VERSION.fullmatch(raw_version)
    if match is None:
        raise HttpError(400, _BAD_VERSION)
    version = (int(match[1]), int(match[2]))
    if version[0] != 1:
        raise HttpError(505, "only HTTP/1.1 and HTTP/1.0 are served here")
    target = raw_target.decode("ascii")
    if not (target.startswith("/") or target.startswith(("http://", "https://"))):
        raise HttpError(400, "the request target must be a path like /ws")
    return raw_method.decode("ascii"), target, version


def _field(line: bytes) -> tuple[str, str]:
    if line[:1] in (b" ", b"\t"):
        raise HttpError(400, "folded header lines are not accepted")
    name, colon, value = line.partition(b":")
    if not colon or not _TOKEN.fullmatch(name):
        raise HttpError(400, "a header field name is not a token, or is followed by a space")
    value = value.strip(b" \t")
    if not _FIELD_VALUE.fullmatch(value):
        raise HttpError(400, "a header field value has control characters")
    return name.decode("ascii").lower(), value.decode("latin-1")


def _check_framing(request: Request) -> None:
    hosts = request.values("host")
    if len(hosts) > 1:
        raise HttpError(400, "more than one Host header field")
    if request.version >= (1, 1) and not hosts:
        raise HttpError(400, "HTTP/1.1 needs a Host header field")
    if request.values("transfer-encoding"):
        raise HttpError(400, "request bodies are not accepted here")
    lengths = request.values("content-length")
    if lengths and any(v.strip() != "0" for v in lengths):
        raise HttpError(400, "request bodies are not accepted here")


# -- the WebSocket upgrade (RFC 6455 4.2.1) -------------------------------------------


def wants_upgrade(request: Request) -> bool:
    return "websocket" in request.tokens("upgrade")


def check_upgrade(request: Request) -> str:
    """The ``Sec-WebSocket-Accept`` value for a valid upgrade request; HttpError if not."""
    if request.version < (1, 1):
        raise HttpError(400, "a WebSocket handshake needs HTTP/1.1")
    if request.method != "GET":
        raise HttpError(405, "a WebSocket handshake is a GET", (("Allow", "GET"),))
    if "upgrade" not in request.tokens("connection"):
        raise HttpError(400, "a WebSocket handshake needs 'Connection: Upgrade'")
    versions = request.values("sec-websocket-version")
    if len(versions) != 1 or versions[0].strip() != "13":
        raise HttpError(
            426, "only WebSocket version 13 is supported", (("Sec-WebSocket-Version", "13"),)
        )
    keys = request.values("sec-websocket-key")
    if len(keys) != 1 or not _valid_key(keys[0]):
        raise HttpError(400, "Sec-WebSocket-Key must be 16 random bytes in base64")
    return accept_key(keys[0])


def _valid_key(key: str) -> bool:
    try:
        return len(base64.b64decode(key.strip(), validate=True)) == 16
    except (binascii.Error, ValueError):
        return False


def accept_key(key: str) -> str:
    digest = hashlib.sha1((key.strip() + WS_GUID).encode("latin-1")).digest()
    return base64.b64encode(digest).decode("ascii")


def switching_protocols(accept: str) -> bytes:
    return (
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Accept: {accept}\r\n\r\n"
    ).encode("ascii")


# -- answers --------------------------------------------------------------------------


def reason_phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def response(
    status: int,
    body: bytes,
    content_type: str = "application/json",
    headers: tuple[tuple[str, str], ...] | list[tuple[str, str]] = (),
    head_only: bool = False,
) -> bytes:
    """A complete HTTP/1.1 response that closes the connection."""
    lines = [f"HTTP/1.1 {status} {reason_phrase(status)}"]
    names = {name.lower() for name, _ in headers}
    if "content-type" not in names:
        lines.append(f"Content-Type: {content_type}")
    if "content-length" not in names:
        lines.append(f"Content-Length: {len(body)}")
    lines += [f"{name}: {value}" for name, value in headers if name.lower() != "connection"]
    lines.append("Connection: close")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", errors="replace")
    return head if head_only else head + body


def error_body(status: int, message: str) -> bytes:
    return json.dumps({"error": reason_phrase(status).lower(), "message": message}).encode()


def error_response(status: int, message: str, headers: tuple[tuple[str, str], ...] = ()) -> bytes:
    return response(status, error_body(status, message), headers=headers)
