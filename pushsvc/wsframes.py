"""RFC 6455 frames from a client, parsed without I/O (sections 5 and 7).

Bytes go in with ``feed``; ``next_event`` hands out what they make, one event at
a time and in order: a complete text or binary message (fragments joined, text
checked as UTF-8 frame by frame, so invalid UTF-8 fails at the frame that carries
it), a ping, a pong, or the client's close frame. A violation raises
``ProtocolViolation`` with the close code the server answers with:

- 1002: reserved bits set (no extension is negotiated), a reserved opcode, an
  unmasked frame (5.1), a fragmented control frame or one over 125 bytes (5.5),
  a length not in its minimal form or with the top bit set (5.2), a
  continuation without a message or a new message inside a fragmented one
  (5.4), a close frame with a 1-byte payload or a code outside 1000-1003,
  1007-1011 and 3000-4999 (7.4);
- 1007: a text message or a close reason that is not UTF-8 (8.1);
- 1009: a frame or a message larger than ``max_message`` bytes, refused as soon
  as its header announces it.

Nothing is read past a close frame or a violation: the reader is finished and
``next_event`` returns None from then on. ``edge.py`` drives this from the
socket; the tests drive it byte by byte.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass
from typing import NoReturn

OP_CONTINUATION = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA

MAX_CONTROL_PAYLOAD = 125

PROTOCOL_ERROR = 1002
INVALID_DATA = 1007
TOO_BIG = 1009


def close_code_allowed(code: int) -> bool:
    """Whether a client may send ``code`` in a close frame (RFC 6455 7.4).

    1004-1006 and 1015 are reserved and never sent, and 1016-2999 are reserved for
    future revisions of it. 1012-1014 are registered with IANA since the RFC
    (service restart, try again later, bad gateway): this server closes with 1012
    when it drains and 1013 when it sheds a connect, and a client echoing the code
    it received (RFC 6455 5.5.1) is right to.
    """
    return 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999


@dataclass(frozen=True, slots=True)
class TextMessage:
    text: str


@dataclass(frozen=True, slots=True)
class BinaryMessage:
    data: bytes


@dataclass(frozen=True, slots=True)
class Ping:
    payload: bytes


@dataclass(frozen=True, slots=True)
class Pong:
    payload: bytes


@dataclass(frozen=True, slots=True)
class CloseRequest:
    """The client's close frame; ``code`` is None when it carried no status code."""

    code: int | None
    reason: str


Event = TextMessage | BinaryMessage | Ping | Pong | CloseRequest


class ProtocolViolation(Exception):
    """The client broke RFC 6455: close the connection with ``code`` and ``reason``."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def unmask(payload: bytes, key: bytes) -> bytes:
    """XOR ``payload`` with the 4-byte masking ``key`` (RFC 6455 5.3)."""
    n = len(payload)
    if not n:
        return b""
    stream = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(stream, "little")).to_bytes(
        n, "little"
    )


_new_utf8_decoder = codecs.getincrementaldecoder("utf-8")


class FrameReader:
    """The client side of one connection, frame by frame.

    ``max_message`` bounds a single frame's payload and a whole message
    (fragments added up) alike.
    """

    __slots__ = (
        "_buf",
        "_decoder",
        "_done",
        "_max",
        "_opcode",
        "_parts",
        "_pos",
        "_size",
        "_texts",
    )

    def __init__(self, max_message: int) -> None:
        self._max = max_message
        self._buf = bytearray()
        self._pos = 0
        self._done = False
        # The message being assembled from fragments: its opcode (0 = none), its
        # parts so far (decoded text, or bytes), their size in bytes, and the
        # UTF-8 decoder of a text message.
        self._opcode = 0
        self._texts: list[str] = []
        self._parts: list[bytes] = []
        self._size = 0
        self._decoder: codecs.IncrementalDecoder | None = None

    @property
    def finished(self) -> bool:
        """A close frame was read or a violation raised: nothing more is parsed."""
        return self._done

    @property
    def buffered(self) -> int:
        """Bytes fed and not yet consumed (a frame still arriving)."""
        return len(self._buf) - self._pos

    def feed(self, data: bytes) -> None:
        if self._done or not data:
            return
        if self._pos and self._pos * 2 >= len(self._buf):
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += data

    def next_event(self) -> Event | None:
        """The next event, or None until more bytes arrive. Raises ProtocolViolation."""
        while not self._done:
            frame = self._next_frame()
            if frame is None:
                return None
            event = self._handle(*frame)
            if event is not None:
                return event
        return None

    # -- frames --------------------------------------------------------------------

    def _next_frame(self) -> tuple[bool, int, bytes] | None:
        """(fin, opcode, unmasked payload) of the next complete frame, or None."""
        buf, pos = self._buf, self._pos
        available = len(buf) - pos
        if available < 2:
            return None
        b0, b1 = buf[pos], buf[pos + 1]
        fin = bool(b0 & 0x80)
        opcode = b0 & 0x0F
        length = b1 & 0x7F
        # Everything the first two bytes can tell is checked before waiting for more.
        if b0 & 0x70:
            self._fail(PROTOCOL_ERROR, "reserved bits set: no extension was negotiated")
        if opcode in (OP_CLOSE, OP_PING, OP_PONG):
            if not fin:
                self._fail(PROTOCOL_ERROR, "fragmented control frame")
            if length > MAX_CONTROL_PAYLOAD:
                self._fail(PROTOCOL_ERROR, "control frame over 125 bytes")
        elif opcode in (OP_TEXT, OP_BINARY):
            if self._opcode:
                self._fail(PROTOCOL_ERROR, "new message inside a fragmented one")
        elif opcode == OP_CONTINUATION:
            if not self._opcode:
                self._fail(PROTOCOL_ERROR, "continuation frame without a message")
        else:
            self._fail(PROTOCOL_ERROR, f"reserved opcode {opcode:#x}")
        if not b1 & 0x80:
            self._fail(PROTOCOL_ERROR, "client frames must be masked")
        head = 2
        if length == 126:
            if available < 4:
                return None
            length = int.from_bytes(buf[pos + 2 : pos + 4], "big")
            if length < 126:
                self._fail(PROTOCOL_ERROR, "frame length not in its minimal form")
            head = 4
        elif length == 127:
            if available < 10:
                return None
            length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
            if length >> 63:
                self._fail(PROTOCOL_ERROR, "frame length with the most significant bit set")
            if length < 65536:
                self._fail(PROTOCOL_ERROR, "frame length not in its minimal form")
            head = 10
        if opcode < OP_CLOSE and self._size + length > self._max:
            self._fail(TOO_BIG, f"message over {self._max} bytes")
        end = pos + head + 4 + length
        if len(buf) < end:
            return None
        key = bytes(buf[pos + head : pos + head + 4])
        payload = unmask(bytes(buf[pos + head + 4 : end]), key)
        self._pos = end
        return fin, opcode, payload

    def _handle(self, fin: bool, opcode: int, payload: bytes) -> Event | None:
        if opcode == OP_PING:
            return Ping(payload)
        if opcode == OP_PONG:
            return Pong(payload)
        if opcode == OP_CLOSE:
            return self._close(payload)
        if opcode != OP_CONTINUATION:
            self._opcode = opcode
            self._decoder = _new_utf8_decoder() if opcode == OP_TEXT else None
        self._size += len(payload)
        if self._decoder is not None:
            try:
                self._texts.append(self._decoder.decode(payload, fin))
            except UnicodeDecodeError:
                self._fail(INVALID_DATA, "invalid UTF-8 in a text message")
        else:
            self._parts.append(payload)
        if not fin:
            return None
        event: Event
        if self._opcode == OP_TEXT:
            event = TextMessage("".join(self._texts))
        else:
            event = BinaryMessage(b"".join(self._parts))
        self._opcode, self._texts, self._parts, self._size, self._decoder = 0, [], [], 0, None
        return event

    def _close(self, payload: bytes) -> CloseRequest:
        if len(payload) == 1:
            self._fail(PROTOCOL_ERROR, "close frame with a 1-byte payload")
        code: int | None = None
        reason = ""
        if payload:
            code = int.from_bytes(payload[:2], "big")
            if not close_code_allowed(code):
                self._fail(PROTOCOL_ERROR, f"close code {code} is not allowed")
            try:
                reason = payload[2:].decode("utf-8")
            except UnicodeDecodeError:
                self._fail(INVALID_DATA, "close reason is not UTF-8")
        self._done = True
        return CloseRequest(code, reason)

    def _fail(self, code: int, reason: str) -> NoReturn:
        self._done = True
        self._buf = bytearray()
        self._pos = 0
        raise ProtocolViolation(code, reason)
