"""Server message frames: whatever the id, content type and payload, a frame is one
JSON object carrying them exactly (the fast paths for the common case included)."""

from __future__ import annotations

import base64
import json

from hypothesis import given
from hypothesis import strategies as st

from pushsvc.errors import InvalidArgument
from pushsvc.messages import new_message_id, validate_payload
from pushsvc.protocol import UserFrame, online_frame, online_wire, topic_frame, wire_text

JSON_PAYLOAD = b' {"a": [1, 2.5, "\xc3\xa9"], "b": null} '


def test_an_id_of_ours_and_any_other_id_come_out_as_the_same_string() -> None:
    for message_id in (new_message_id(owner="0123456789ab"), 'x"y\\z', "é-1", ""):
        frame = json.loads(UserFrame(message_id, b"{}", "application/json").with_seq(7))
        assert frame == {
            "type": "message",
            "id": message_id,
            "seq": 7,
            "content_type": "application/json",
            "data": {},
        }
        topic = json.loads(topic_frame(message_id, "t.1", b"hi", 'text/plain; x="q"'))
        assert (topic["id"], topic["content_type"], topic["data"]) == (
            message_id,
            'text/plain; x="q"',
            "hi",
        )


@given(
    message_id=st.text(max_size=40),
    content_type=st.sampled_from(
        ["application/json", "application/vnd.x+json", "text/plain", "application/octet-stream"]
    ),
    payload=st.binary(max_size=64),
)
def test_frames_are_json_whatever_they_carry(
    message_id: str, content_type: str, payload: bytes
) -> None:
    if content_type.endswith("json"):
        payload = JSON_PAYLOAD
    stored = json.loads(UserFrame(message_id, payload, content_type).with_seq(7))
    frame = json.loads(online_frame(message_id, payload, content_type))
    assert frame == {k: v for k, v in stored.items() if k != "seq"}  # the same, less the seq
    assert frame["id"] == message_id and frame["content_type"] == content_type
    assert "seq" not in frame
    if content_type.endswith("json"):
        assert frame["data"] == json.loads(JSON_PAYLOAD)
    elif content_type == "text/plain":
        assert frame["data"] == payload.decode("utf-8", errors="replace")
    else:
        assert base64.b64decode(frame["data_b64"]) == payload


def test_a_stored_json_payload_in_utf_16_is_framed_as_utf_8() -> None:
    """Nodes before strict validation stored JSON in UTF-16 or UTF-32 (Python's
    json accepts them): replayed, such a message's frame is UTF-8 JSON all the same."""
    for encoding in ("utf-16", "utf-16-le", "utf-32-be"):
        payload = '{"a": "é"}'.encode(encoding)
        frame = UserFrame(new_message_id(owner="ab12"), payload, "application/json")
        wire = frame.wire(5)
        assert json.loads(wire[2:])["data"] == {"a": "é"}
        assert json.loads(frame.with_seq(5))["seq"] == 5


def _with_seq(online: str, seq: int) -> str:
    """A stored message's frame as the online one with its seq: the id is a JSON
    string, so the first unescaped ',"content_type":' is the member's."""
    return online.replace(',"content_type":', f',"seq":{seq},"content_type":', 1)


def test_content_types_are_checked_the_same_way_every_time() -> None:
    # Repeated (the second answer comes from the cache): same normalisation, same refusal.
    for _ in range(2):
        assert validate_payload(b"{}", "", 100) == "application/json"
        assert validate_payload(b"{}", " application/json\t", 100) == "application/json"
        for bad in ("not a type", "text/plain\n", "x" * 300, " " * 100 + "text/plain" + "x" * 300):
            try:
                validate_payload(b"{}", bad, 100)
            except InvalidArgument as exc:
                assert "is not a MIME type" in str(exc)
            else:
                raise AssertionError(f"{bad!r} accepted")
    # Long only because of its padding: still the type it pads.
    padded = " " * 300 + "text/plain"
    assert validate_payload(b"hi", padded, 100) == "text/plain"


@given(
    message_id=st.one_of(st.builds(new_message_id, owner=st.sampled_from(["", "ab12"])), st.text()),
    content_type=st.sampled_from(
        ["application/json", "application/vnd.x+json; v=1", "text/plain", "image/png"]
    ),
    value=st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
        max_leaves=8,
    ),
    pad=st.sampled_from([0, 1, 60, 120, 70000]),
    space=st.sampled_from(["", " ", "\n\t ", "\r\n"]),
    seq=st.integers(1, 2**53),
)
def test_a_frame_on_the_wire_is_made_in_one_step_alike(
    message_id: str, content_type: str, value: object, pad: int, space: str, seq: int
) -> None:
    """``online_wire`` and ``UserFrame.wire`` make the bytes the frame's text and
    its header would be, for any payload that passed validation (short, medium and
    long frames alike); a stored message's frame is the online one with its seq."""
    payload = (space + json.dumps([value, "x" * pad], ensure_ascii=False) + space).encode()
    ctype = validate_payload(payload, content_type, 1 << 20)
    online = online_frame(message_id, payload, ctype)
    assert online_wire(message_id, payload, ctype) == wire_text(online)
    stored = _with_seq(online, seq)
    frame = UserFrame(message_id, payload, ctype)
    assert frame.wire(seq) == wire_text(stored)
    assert frame.with_seq(seq) == stored
    assert frame.wire(seq + 1) == wire_text(frame.with_seq(seq + 1))  # made once, used again


@given(
    payload=st.one_of(st.binary(max_size=300), st.text(max_size=100).map(str.encode)),
    content_type=st.sampled_from(
        ["", "application/json", "text/plain; charset=utf-8", "image/png", "x/y+json"]
    ),
)
def test_every_push_that_passes_validation_has_an_online_frame(
    payload: bytes, content_type: str
) -> None:
    """An online-only push answered at once has its frame made on the loop, after
    its caller heard OK: whatever bytes validation lets through, making it cannot
    fail, and it carries the payload exactly."""
    try:
        ctype = validate_payload(payload, content_type, 1 << 20)
    except InvalidArgument:
        return
    message_id = new_message_id(owner="ab12")
    wire = online_wire(message_id, payload, ctype)
    assert wire == wire_text(online_frame(message_id, payload, ctype))
    assert UserFrame(message_id, payload, ctype).wire(3) == wire_text(
        _with_seq(online_frame(message_id, payload, ctype), 3)
    )
    frame = json.loads(wire[2:] if len(wire) < 128 else wire[4:])
    assert frame["id"] == message_id and frame["content_type"] == ctype
    if "data_b64" in frame:
        assert base64.b64decode(frame["data_b64"]) == payload
    elif ctype.startswith("text/"):
        assert frame["data"] == payload.decode()
    else:
        assert frame["data"] == json.loads(payload)
