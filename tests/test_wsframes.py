"""The sans-I/O frame reader (``pushsvc.wsframes``) against RFC 6455 sections 5 and 7.

Every rule is checked with the bytes fed at once and one byte at a time; the
Hypothesis properties check that any message sequence, fragmented and chunked any
way with control frames in between, comes out as sent, and that no input at all
makes the reader raise anything but ``ProtocolViolation``.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pushsvc import wsframes
from pushsvc.wsframes import (
    BinaryMessage,
    CloseRequest,
    Event,
    FrameReader,
    Ping,
    Pong,
    ProtocolViolation,
    TextMessage,
)
from tests.rawws import OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT, encode_frame

MAX = 1024


def frame(opcode: int, payload: bytes = b"", **kw: object) -> bytes:
    return encode_frame(opcode, payload, **kw)  # type: ignore[arg-type]


def read_all(data: bytes, max_message: int = MAX, chunk: int = 0) -> list[Event]:
    """Every event of ``data``, fed at once (chunk 0) or ``chunk`` bytes at a time."""
    reader = FrameReader(max_message)
    events: list[Event] = []
    pieces = [data] if not chunk else [data[i : i + chunk] for i in range(0, len(data), chunk)]
    for piece in pieces:
        reader.feed(piece)
        while (event := reader.next_event()) is not None:
            events.append(event)
    return events


def both_ways(data: bytes, max_message: int = MAX) -> list[Event]:
    whole = read_all(data, max_message)
    assert read_all(data, max_message, chunk=1) == whole
    return whole


def violation(data: bytes, max_message: int = MAX) -> tuple[int, str, list[Event]]:
    """The close code of the violation in ``data``, fed at once and byte by byte,
    and the events before it."""
    results = []
    for chunk in (0, 1):
        reader = FrameReader(max_message)
        events: list[Event] = []
        pieces = [data] if not chunk else [data[i : i + 1] for i in range(len(data))]
        with pytest.raises(ProtocolViolation) as info:
            for piece in pieces:
                reader.feed(piece)
                while (event := reader.next_event()) is not None:
                    events.append(event)
        assert reader.finished
        assert reader.next_event() is None  # nothing more after a violation
        results.append((info.value.code, info.value.reason, events))
    assert results[0] == results[1]
    return results[0]


# -- framing (5.2) ----------------------------------------------------------------------


def test_masked_text_frame() -> None:
    assert both_ways(frame(OP_TEXT, b'{"type":"ping"}')) == [TextMessage('{"type":"ping"}')]


def test_empty_and_long_payloads() -> None:
    short, medium, large = b"", b"m" * 300, b"L" * 70_000
    data = frame(OP_TEXT, short) + frame(OP_BINARY, medium) + frame(OP_BINARY, large)
    assert read_all(data, max_message=100_000) == [
        TextMessage(""),
        BinaryMessage(medium),
        BinaryMessage(large),
    ]


def test_bytes_after_a_frame_wait_for_the_rest() -> None:
    reader = FrameReader(MAX)
    data = frame(OP_TEXT, b"one") + frame(OP_TEXT, b"two")
    reader.feed(data[:-2])
    assert reader.next_event() == TextMessage("one")
    assert reader.next_event() is None
    assert reader.buffered > 0
    reader.feed(data[-2:])
    assert reader.next_event() == TextMessage("two")
    assert reader.buffered == 0


@pytest.mark.parametrize("rsv", [0x40, 0x20, 0x10, 0x70])
def test_reserved_bits_are_a_protocol_error(rsv: int) -> None:
    assert violation(frame(OP_TEXT, b"x", rsv=rsv))[0] == 1002


@pytest.mark.parametrize("opcode", [0x3, 0x4, 0x5, 0x6, 0x7, 0xB, 0xC, 0xD, 0xE, 0xF])
def test_reserved_opcodes_are_a_protocol_error(opcode: int) -> None:
    assert violation(frame(opcode, b"x"))[0] == 1002


def test_unmasked_frame_is_a_protocol_error() -> None:
    assert violation(frame(OP_TEXT, b"x", mask=False))[0] == 1002


def test_lengths_must_be_minimal_and_below_2_63() -> None:
    key = b"\x01\x02\x03\x04"
    padded16 = bytes((0x81, 0x80 | 126)) + (5).to_bytes(2, "big") + key + b"hello"
    assert violation(padded16)[0] == 1002
    padded64 = bytes((0x81, 0x80 | 127)) + (5).to_bytes(8, "big") + key + b"hello"
    assert violation(padded64)[0] == 1002
    top_bit = bytes((0x82, 0x80 | 127)) + (1 << 63).to_bytes(8, "big") + key
    assert violation(top_bit, max_message=2**64)[0] == 1002


def test_a_frame_over_the_limit_is_refused_from_its_header() -> None:
    # Only the header arrives: the refusal does not wait for 2**62 bytes.
    header = bytes((0x81, 0x80 | 127)) + (2**62).to_bytes(8, "big")
    code, _, _ = violation(header)
    assert code == 1009
    code, _, _ = violation(frame(OP_TEXT, b"x" * (MAX + 1)))
    assert code == 1009
    assert both_ways(frame(OP_TEXT, b"x" * MAX)) == [TextMessage("x" * MAX)]


# -- fragmentation (5.4) ------------------------------------------------------------------


def test_fragments_make_one_message_with_control_frames_between_them() -> None:
    data = (
        frame(OP_TEXT, b"Hel", fin=False)
        + frame(OP_PING, b"p1")
        + frame(OP_CONT, b"lo, ", fin=False)
        + frame(OP_PONG, b"")
        + frame(OP_CONT, b"world")
    )
    assert both_ways(data) == [Ping(b"p1"), Pong(b""), TextMessage("Hello, world")]


def test_empty_fragments() -> None:
    data = frame(OP_BINARY, b"", fin=False) + frame(OP_CONT, b"", fin=False) + frame(OP_CONT)
    assert both_ways(data) == [BinaryMessage(b"")]


def test_continuation_without_a_message_is_a_protocol_error() -> None:
    assert violation(frame(OP_CONT, b"orphan"))[0] == 1002
    # ... also right after a complete message
    code, _, before = violation(frame(OP_TEXT, b"done") + frame(OP_CONT, b"more"))
    assert (code, before) == (1002, [TextMessage("done")])


def test_a_new_message_inside_a_fragmented_one_is_a_protocol_error() -> None:
    for second in (OP_TEXT, OP_BINARY):
        assert violation(frame(OP_TEXT, b"{", fin=False) + frame(second, b"}"))[0] == 1002


def test_fragments_over_the_limit_are_refused() -> None:
    data = frame(OP_TEXT, b"a" * 600, fin=False) + frame(OP_CONT, b"b" * 600)
    assert violation(data)[0] == 1009
    ok = frame(OP_TEXT, b"a" * 512, fin=False) + frame(OP_CONT, b"b" * 512)
    assert both_ways(ok) == [TextMessage("a" * 512 + "b" * 512)]


# -- control frames (5.5) ------------------------------------------------------------------


def test_ping_and_pong_payloads() -> None:
    data = frame(OP_PING, b"\x00\xffbinary") + frame(OP_PONG, b"x" * 125) + frame(OP_PING)
    assert both_ways(data) == [Ping(b"\x00\xffbinary"), Pong(b"x" * 125), Ping(b"")]


@pytest.mark.parametrize("opcode", [OP_PING, OP_PONG, OP_CLOSE])
def test_control_frames_over_125_bytes_are_a_protocol_error(opcode: int) -> None:
    payload = b"\x03\xe8" + b"x" * 124 if opcode == OP_CLOSE else b"x" * 126
    assert violation(frame(opcode, payload))[0] == 1002


@pytest.mark.parametrize("opcode", [OP_PING, OP_PONG, OP_CLOSE])
def test_fragmented_control_frames_are_a_protocol_error(opcode: int) -> None:
    assert violation(frame(opcode, b"", fin=False))[0] == 1002


# -- UTF-8 (8.1) -----------------------------------------------------------------------------

VALID_UTF8 = "κόσμε, \U0001f600, \u0000, \ufeff, \U0010ffff"


def test_valid_utf8_split_anywhere_across_fragments() -> None:
    raw = VALID_UTF8.encode()
    for cut in range(1, len(raw)):
        data = frame(OP_TEXT, raw[:cut], fin=False) + frame(OP_CONT, raw[cut:])
        assert read_all(data) == [TextMessage(VALID_UTF8)], cut


INVALID_UTF8 = [
    b"\xff",
    b"\xc0\xaf",  # overlong
    b"\xed\xa0\x80",  # a surrogate
    b"\xf4\x90\x80\x80",  # above U+10FFFF
    b"\x80",  # a lone continuation byte
    b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80edited",
]


@pytest.mark.parametrize("bad", INVALID_UTF8)
def test_invalid_utf8_is_1007(bad: bytes) -> None:
    assert violation(frame(OP_TEXT, bad))[0] == 1007


def test_invalid_utf8_fails_at_the_fragment_that_carries_it() -> None:
    """Fail fast: the message is refused before its last fragment arrives."""
    reader = FrameReader(MAX)
    reader.feed(frame(OP_TEXT, b"ok \xce", fin=False))
    assert reader.next_event() is None  # an incomplete character is fine so far
    reader.feed(frame(OP_CONT, b"\xba then \xff", fin=False))
    with pytest.raises(ProtocolViolation) as info:
        reader.next_event()
    assert info.value.code == 1007


def test_a_character_cut_off_at_the_end_of_the_message_is_1007() -> None:
    data = frame(OP_TEXT, b"ok \xe2\x82", fin=False) + frame(OP_CONT, b"")
    assert violation(data)[0] == 1007


def test_binary_messages_are_not_checked_as_utf8() -> None:
    assert both_ways(frame(OP_BINARY, b"\xff\xfe")) == [BinaryMessage(b"\xff\xfe")]


# -- the close handshake (5.5.1, 7.4) ----------------------------------------------------------

VALID_CODES = [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014]
VALID_CODES += [3000, 3999, 4000, 4999]
INVALID_CODES = [0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000]
INVALID_CODES += [65535]


@pytest.mark.parametrize("code", VALID_CODES)
def test_valid_close_codes(code: int) -> None:
    data = frame(OP_CLOSE, code.to_bytes(2, "big") + "bye ✓".encode())
    assert both_ways(data) == [CloseRequest(code, "bye ✓")]


@pytest.mark.parametrize("code", INVALID_CODES)
def test_invalid_close_codes_are_a_protocol_error(code: int) -> None:
    assert violation(frame(OP_CLOSE, code.to_bytes(2, "big")))[0] == 1002


def test_close_without_a_code() -> None:
    assert both_ways(frame(OP_CLOSE)) == [CloseRequest(None, "")]


def test_close_with_a_1_byte_payload_is_a_protocol_error() -> None:
    assert violation(frame(OP_CLOSE, b"\x03"))[0] == 1002


def test_close_reason_must_be_utf8() -> None:
    assert violation(frame(OP_CLOSE, b"\x03\xe8\xff\xfe"))[0] == 1007


def test_nothing_is_read_after_a_close_frame() -> None:
    reader = FrameReader(MAX)
    reader.feed(frame(OP_CLOSE, b"\x03\xe8") + frame(OP_TEXT, b"late") + b"\xff garbage")
    assert reader.next_event() == CloseRequest(1000, "")
    assert reader.finished
    assert reader.next_event() is None
    reader.feed(frame(OP_TEXT, b"later"))
    assert reader.next_event() is None


def test_close_code_table() -> None:
    allowed = {c for c in range(0, 6000) if wsframes.close_code_allowed(c)}
    expected = {1000, 1001, 1002, 1003, *range(1007, 1015), *range(3000, 5000)}
    assert allowed == expected


# -- properties ------------------------------------------------------------------------------

messages = st.lists(
    st.one_of(
        st.text(max_size=40).map(TextMessage),
        st.binary(max_size=40).map(BinaryMessage),
    ),
    max_size=6,
)


@st.composite
def conversations(draw: st.DrawFn) -> tuple[bytes, list[Event]]:
    """Messages cut into fragments at random places, pings and pongs between the
    fragments, every frame with its own masking key."""
    wire = b""
    expected: list[Event] = []
    for message in draw(messages):
        if isinstance(message, TextMessage):
            raw, opcode = message.text.encode(), OP_TEXT
        else:
            raw, opcode = message.data, OP_BINARY
        cuts = sorted(draw(st.lists(st.integers(0, len(raw)), max_size=3)))
        pieces = [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)], strict=True)]
        for i, piece in enumerate(pieces):
            last = i == len(pieces) - 1
            key = draw(st.binary(min_size=4, max_size=4))
            wire += frame(opcode if i == 0 else OP_CONT, piece, fin=last, key=key)
            if last:
                expected.append(message)
            if draw(st.booleans()):
                control = draw(st.sampled_from([OP_PING, OP_PONG]))
                payload = draw(st.binary(max_size=125))
                wire += frame(control, payload, key=key)
                expected.append(Ping(payload) if control == OP_PING else Pong(payload))
    return wire, expected


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(conversations(), st.integers(1, 64))
def test_any_conversation_comes_out_as_sent(case: tuple[bytes, list[Event]], chunk: int) -> None:
    wire, expected = case
    assert read_all(wire, max_message=10_000, chunk=chunk) == expected
