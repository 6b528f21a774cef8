"""The WebSocket wire protocol: frames, close codes, client frame parsing.

Server frames are JSON text. A message frame is encoded once per message; the
only per-recipient part, the seq, is spliced between a prefix and a suffix so
fan-out to many users costs one encode and N string joins.
"""

from __future__ import annotations

import base64
import functools
import json
from dataclasses import dataclass
from enum import Enum

from pushsvc import jsontext
from pushsvc.errors import InvalidArgument
from pushsvc.messages import is_json_type, is_text_type, validate_topic

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


class Close(Enum):
    """Every reason the server closes a connection: code, reason, may reconnect.

    ``docs/protocol.md`` lists them; clients reconnect (with backoff) unless the
    third member is False.
    """

    NORMAL = (1000, "normal closure", True)
    GOING_AWAY = (1001, "going away", True)
    PING_TIMEOUT = (1001, "ping timeout", True)
    SILENT = (1001, "no frame from the client in time", True)
    PROTOCOL_ERROR = (1002, "protocol error", True)
    BAD_DATA = (1007, "invalid UTF-8 in a text frame", True)
    TOO_BIG = (1009, "frame too big", True)
    RESTART = (1012, "node draining: reconnect to another node", True)
    TRY_AGAIN = (1013, "try again later: reconnect after a random pause of 1 to 5 s", True)
    DISCONNECTED = (4000, "disconnected", False)
    REVOKED = (4001, "token revoked", False)
    RATE_LIMITED = (4008, "rate limit exceeded", True)
    ABUSE = (4008, "too many bad frames", True)
    SLOW_CONSUMER = (4008, "slow consumer: send queue overflow", True)

    @property
    def code(self) -> int:
        return self.value[0]

    @property
    def reason(self) -> str:
        return self.value[1]

    @property
    def reconnect(self) -> bool:
        return self.value[2]


def encode_data(payload: bytes, content_type: str) -> str:
    """The ``"data":…`` (or ``"data_b64":…``) member for a payload."""
    if is_json_type(content_type):
        # Validated as JSON at ingress; embed the text as is when it is UTF-8
        # (a byte order mark, refused at ingress, is dropped here all the same).
        try:
            return '"data":' + payload.decode("utf-8").removeprefix("\ufeff").strip()
        except UnicodeDecodeError:
            return '"data":' + _dumps(json.loads(payload))
    if is_text_type(content_type):
        return '"data":' + _dumps(payload.decode("utf-8", errors="replace"))
    return '"data_b64":"' + base64.b64encode(payload).decode("ascii") + '"'


class UserFrame:
    """A stored message's frame with a hole for the recipient's seq, made into its
    UTF-8 halves only when a first recipient is connected here (a push to users
    who are offline, or on other nodes, never frames it)."""

    __slots__ = ("_content_type", "_halves", "_message_id", "_payload")

    def __init__(self, message_id: str, payload: bytes, content_type: str) -> None:
        self._message_id = message_id
        self._payload = payload
        self._content_type = content_type
        self._halves: tuple[bytes, bytes] | None = None

    def wire(self, seq: int) -> bytes:
        """The frame for ``seq``, header included: what every connection of the
        user that has this seq is written."""
        return wire_frame(OP_TEXT, self._utf8(seq))

    def with_seq(self, seq: int) -> str:
        """The frame's text for ``seq``."""
        return self._utf8(seq).decode("utf-8")

    def _utf8(self, seq: int) -> bytes:
        halves = self._halves
        if halves is None:
            halves = self._halves = self._make_halves()
        return b"%b%d%b" % (halves[0], seq, halves[1])

    def _make_halves(self) -> tuple[bytes, bytes]:
        message_id, payload, ctype = self._message_id, self._payload, self._content_type
        if _embeds_as_is(message_id, payload, ctype):
            return (
                b'{"type":"message","id":"%b","seq":' % message_id.encode(),
                b',"content_type":%b,"data":%b}'
                % (_json_type_bytes(ctype), payload.strip(b" \t\n\r")),
            )
        return (
            f'{{"type":"message","id":{_json_id(message_id)},"seq":'.encode(),
            f',"content_type":{_json_type(ctype)},{encode_data(payload, ctype)}}}'.encode(),
        )


def _embeds_as_is(message_id: str, payload: bytes, content_type: str) -> bool:
    """Whether a frame can carry the payload's bytes as they came: a JSON payload
    that passed ``build_push`` (UTF-8 JSON without a byte order mark, which
    ``encode_data`` would decode and strip to the same text) and one of our ids.
    A NUL byte, never in UTF-8 JSON, marks the UTF-16 or UTF-32 JSON that nodes
    before strict RFC 8259 validation stored: ``encode_data`` re-encodes those."""
    return (
        is_json_type(content_type)
        and message_id.isascii()
        and message_id.isalnum()
        and not payload.startswith(b"\xef\xbb\xbf")
        and b"\x00" not in payload
    )


def online_frame(message_id: str, payload: bytes, content_type: str) -> str:
    """The frame of an online-only message: a user frame without a seq (it is
    never stored), made in one step."""
    return (
        f'{{"type":"message","id":{_json_id(message_id)},'
        f'"content_type":{_json_type(content_type)},{encode_data(payload, content_type)}}}'
    )


def online_wire(message_id: str, payload: bytes, content_type: str) -> bytes:
    """``wire_text(online_frame(...))`` of a push that passed ``build_push``, the
    payload's bytes embedded as they came where they can be (``_embeds_as_is``),
    not decoded and encoded again."""
    if _embeds_as_is(message_id, payload, content_type):
        body = _ONLINE % (
            message_id.encode(),
            _json_type_bytes(content_type),
            payload.strip(b" \t\n\r"),
        )
        return wire_frame(OP_TEXT, body)
    return wire_text(online_frame(message_id, payload, content_type))


_ONLINE = b'{"type":"message","id":"%s","content_type":%s,"data":%s}'


@functools.lru_cache(maxsize=256)
def _json_type_bytes(content_type: str) -> bytes:
    return _json_type(content_type).encode()


def topic_frame(message_id: str, topic: str, payload: bytes, content_type: str) -> str:
    return (
        f'{{"type":"message","id":{_json_id(message_id)},"topic":{_dumps(topic)},'
        f'"content_type":{_json_type(content_type)},{encode_data(payload, content_type)}}}'
    )


def _json_id(message_id: str) -> str:
    """A message id as a JSON string: ours are letters and digits (no escaping)."""
    if message_id.isascii() and message_id.isalnum():
        return f'"{message_id}"'
    return _dumps(message_id)


@functools.lru_cache(maxsize=256)
def _json_type(content_type: str) -> str:
    """A content type as a JSON string (a service sends the same few)."""
    return _dumps(content_type)


def welcome_frame(conn_id: str, user: str, node: str, seq: int, ping_interval: float) -> str:
    interval: float | int = (
        int(ping_interval) if ping_interval == int(ping_interval) else ping_interval
    )
    return _dumps(
        {
            "type": "welcome",
            "conn": conn_id,
            "user": user,
            "node": node,
            "seq": seq,
            "ping_interval": interval,
        }
    )


def error_frame(code: str, message: str) -> str:
    return _dumps({"type": "error", "code": code, "message": message})


def subscribed_frame(topic: str) -> str:
    return _dumps({"type": "subscribed", "topic": topic})


def unsubscribed_frame(topic: str) -> str:
    return _dumps({"type": "unsubscribed", "topic": topic})


PONG_FRAME = '{"type":"pong"}'


class FrameError(Exception):
    """A client frame the server refuses; ``code`` is the error frame's code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class ClientFrame:
    type: str  # ack | subscribe | unsubscribe | ping
    seq: int = 0
    topic: str = ""


CLIENT_TYPES = ("ack", "subscribe", "unsubscribe", "ping")
MAX_SEQ = 2**63 - 1  # seqs are 64-bit signed integers in both stores


def parse_client_frame(text: str | bytes) -> ClientFrame:
    """Parse one client frame or raise FrameError with a code and a human message."""
    if isinstance(text, bytes | bytearray):
        raise FrameError("bad_request", "binary frames are not accepted: send JSON text")
    try:
        obj = jsontext.loads(text)
    except jsontext.JsonError as exc:
        raise FrameError("bad_request", str(exc)) from None
    if not isinstance(obj, dict):
        raise FrameError("bad_request", "frame must be a JSON object")
    kind = obj.get("type")
    if not isinstance(kind, str):
        raise FrameError("bad_request", 'frame has no "type" string')
    if kind == "ping":
        return ClientFrame("ping")
    if kind == "ack":
        seq = obj.get("seq")
        if not isinstance(seq, int) or isinstance(seq, bool) or not 0 <= seq <= MAX_SEQ:
            raise FrameError("bad_request", 'ack needs "seq": a non-negative 64-bit integer')
        return ClientFrame("ack", seq=seq)
    if kind in ("subscribe", "unsubscribe"):
        topic = obj.get("topic")
        if not isinstance(topic, str):
            raise FrameError("bad_request", f'{kind} needs "topic": a string')
        try:
            validate_topic(topic)
        except InvalidArgument as exc:
            raise FrameError("bad_request", str(exc)) from None
        return ClientFrame(kind, topic=topic)
    raise FrameError(
        "unknown_type", f"unknown frame type {kind[:40]!r}: use {', '.join(CLIENT_TYPES)}"
    )


# -- RFC 6455 framing of server frames (never masked) --------------------------

OP_TEXT = 0x1
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA


def wire_frame(opcode: int, payload: bytes) -> bytes:
    """One final, unmasked frame: what the server writes to the socket."""
    n = len(payload)
    first = 0x80 | opcode
    if n < 126:
        header = bytes((first, n))
    elif n < 65536:
        header = bytes((first, 126)) + n.to_bytes(2, "big")
    else:
        header = bytes((first, 127)) + n.to_bytes(8, "big")
    return header + payload


def wire_text(text: str) -> bytes:
    """A text frame, encoded once and written as-is to every recipient."""
    return wire_frame(OP_TEXT, text.encode("utf-8"))


def wire_close(code: int, reason: str) -> bytes:
    raw = reason.encode("utf-8")[:123]
    return wire_frame(OP_CLOSE, code.to_bytes(2, "big") + raw)


WIRE_PING = wire_frame(OP_PING, b"")
