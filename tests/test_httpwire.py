"""The sans-I/O request-head reader and upgrade checks (``pushsvc.httpwire``).

RFC 9112 for the head (what is malformed, what is too large), RFC 6455 4.2.1 for
the upgrade. Each head is fed whole and one byte at a time.
"""

from __future__ import annotations

import json

import pytest

from pushsvc.httpwire import (
    HeadLimits,
    HeadReader,
    HttpError,
    Request,
    accept_key,
    check_upgrade,
    error_response,
    response,
    wants_upgrade,
)

LIMITS = HeadLimits(max_bytes=2048, max_fields=20)
RFC_KEY = "dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455 1.3's example


def head(*lines: str, end: str = "\r\n") -> bytes:
    return (end.join(lines) + end + end).encode("latin-1")


UPGRADE = head(
    "GET /ws?token=abc&since=4 HTTP/1.1",
    "Host: push.example:8080",
    "Upgrade: websocket",
    "Connection: keep-alive, Upgrade",
    f"Sec-WebSocket-Key: {RFC_KEY}",
    "Sec-WebSocket-Version: 13",
    "Origin: https://app.example",
)


def parse(data: bytes, limits: HeadLimits = LIMITS) -> tuple[Request | None, bytes]:
    """The request (fed whole, and byte by byte: the same) and the bytes after it."""
    whole = HeadReader(limits)
    request = whole.feed(data)
    slow = HeadReader(limits)
    slow_request = None
    for i in range(len(data)):
        slow_request = slow.feed(data[i : i + 1])
        if slow_request is not None:
            assert i == len(data) - 1 - len(whole.rest), "complete only at its end"
            break
    assert slow_request == request
    return request, whole.rest


def refused(data: bytes, limits: HeadLimits = LIMITS) -> HttpError:
    errors = []
    for chunk in (len(data), 1):
        reader = HeadReader(limits)
        with pytest.raises(HttpError) as info:
            for i in range(0, len(data), chunk):
                reader.feed(data[i : i + chunk])
        errors.append((info.value.status, info.value.message))
    assert errors[0] == errors[1]
    return info.value


def test_an_upgrade_request() -> None:
    request, rest = parse(UPGRADE + b"\x81\x85early")
    assert request is not None
    assert rest == b"\x81\x85early"  # a frame sent right after the head is kept
    assert (request.method, request.version) == ("GET", (1, 1))
    assert (request.path, request.query) == ("/ws", "token=abc&since=4")
    assert request.header("host") == "push.example:8080"
    assert request.tokens("connection") == {"keep-alive", "upgrade"}
    assert wants_upgrade(request)
    assert check_upgrade(request) == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    assert accept_key(RFC_KEY) == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def test_incomplete_head_waits() -> None:
    reader = HeadReader(LIMITS)
    assert reader.feed(UPGRADE[:-2]) is None
    assert reader.feed(UPGRADE[-2:]) is not None


def test_bare_lf_line_ends_and_leading_empty_lines() -> None:
    request, _ = parse(b"\r\n" + head("GET /x HTTP/1.1", "Host: h", end="\n"))
    assert request is not None and request.path == "/x"


def test_absolute_form_and_percent_encoding() -> None:
    request, _ = parse(head("GET http://push.example/%77s?token=t HTTP/1.1", "Host: push.example"))
    assert request is not None
    assert (request.path, request.query) == ("/ws", "token=t")


def test_http_1_0_needs_no_host() -> None:
    request, _ = parse(head("GET /ws HTTP/1.0"))
    assert request is not None and request.version == (1, 0)


def test_repeated_fields_are_joined() -> None:
    request, _ = parse(head("GET / HTTP/1.1", "Host: h", "X-A: 1", "x-a: 2"))
    assert request is not None and request.header("x-a") == "1, 2"


def test_obs_text_and_inner_spaces_in_values() -> None:
    request, _ = parse(head("GET / HTTP/1.1", "Host: h", "X-Name: \tJosé  Müller \t"))
    assert request is not None and request.header("x-name") == "José  Müller"


MALFORMED = {
    "method not a token": head("G@T / HTTP/1.1", "Host: h"),
    "two spaces": head("GET  / HTTP/1.1", "Host: h"),
    "no version": head("GET /", "Host: h"),
    "lower-case version": head("GET / http/1.1", "Host: h"),
    "version garbage": head("GET / HTTP/1.\xff", "Host: h"),
    "target not a path": head("GET ws HTTP/1.1", "Host: h"),
    "non-ASCII target": head("GET /wß HTTP/1.1", "Host: h"),
    "bare CR": head("GET / HTTP/1.1", "Host: h", "X-A: a\rb"),
    "space before colon": head("GET / HTTP/1.1", "Host : h"),
    "no colon": head("GET / HTTP/1.1", "Host: h", "broken header"),
    "folded line": head("GET / HTTP/1.1", "Host: h", "X-A: a", " continued"),
    "NUL in a value": head("GET / HTTP/1.1", "Host: h", "X-A: a\x00b"),
    "DEL in a value": head("GET / HTTP/1.1", "Host: h", "X-A: a\x7fb"),
    "no Host": head("GET / HTTP/1.1"),
    "two Hosts": head("GET / HTTP/1.1", "Host: a", "Host: b"),
    "a body": head("GET / HTTP/1.1", "Host: h", "Content-Length: 5"),
    "a chunked body": head("GET / HTTP/1.1", "Host: h", "Transfer-Encoding: chunked"),
    "garbage": b"\x16\x03\x01\x00\xa5\x01\x00\x00\r\n\r\n",
    "too many empty lines first": b"\r\n" * 6 + head("GET / HTTP/1.1", "Host: h"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_heads_are_400(case: str) -> None:
    err = refused(MALFORMED[case])
    assert err.status == 400, (case, err.message)
    assert err.message


@pytest.mark.parametrize("version", ["HTTP/2.0", "HTTP/0.9", "HTTP/9.9"])
def test_other_http_versions_are_505(version: str) -> None:
    assert refused(head(f"GET / {version}", "Host: h")).status == 505


def test_a_content_length_of_zero_is_no_body() -> None:
    request, _ = parse(head("GET / HTTP/1.1", "Host: h", "Content-Length: 0"))
    assert request is not None


def test_a_long_request_line_is_414() -> None:
    assert refused(b"GET /" + b"a" * 3000).status == 414


def test_a_large_head_is_431() -> None:
    data = head("GET / HTTP/1.1", "Host: h", "Cookie: " + "c" * 3000)
    assert refused(data).status == 431
    # ... also when the end never comes
    assert refused(data[:-4]).status == 431


def test_too_many_fields_is_431() -> None:
    fields = [f"X-{i}: {i}" for i in range(21)]
    err = refused(head("GET / HTTP/1.1", "Host: h", *fields))
    assert err.status == 431 and "20" in err.message
    request, _ = parse(head("GET / HTTP/1.1", "Host: h", *fields[:19]))
    assert request is not None


def _upgrade_without(*names: str, **replace: str) -> Request:
    lines = [
        line
        for line in UPGRADE.decode("latin-1").split("\r\n")
        if line and line.split(":", 1)[0].lower() not in names
    ]
    lines += [f"{k.replace('_', '-')}: {v}" for k, v in replace.items()]
    request, _ = parse(head(*lines))
    assert request is not None
    return request


def test_upgrade_needs_http_1_1() -> None:
    lines = UPGRADE.decode("latin-1").replace("HTTP/1.1", "HTTP/1.0")
    request, _ = parse(lines.encode("latin-1"))
    assert request is not None
    with pytest.raises(HttpError) as info:
        check_upgrade(request)
    assert info.value.status == 400


def test_upgrade_must_be_a_get() -> None:
    lines = UPGRADE.decode("latin-1").replace("GET ", "POST ", 1)
    request, _ = parse(lines.encode("latin-1"))
    assert request is not None
    with pytest.raises(HttpError) as info:
        check_upgrade(request)
    assert info.value.status == 405 and ("Allow", "GET") in info.value.headers


@pytest.mark.parametrize(
    ("drop", "replace", "status"),
    [
        (("connection",), {"Connection": "keep-alive"}, 400),
        (("sec-websocket-version",), {}, 426),
        (("sec-websocket-version",), {"Sec-WebSocket-Version": "8"}, 426),
        (("sec-websocket-version",), {"Sec-WebSocket-Version": "13, 8"}, 426),
        ((), {"Sec-WebSocket-Version": "13"}, 426),  # twice
        (("sec-websocket-key",), {}, 400),
        (("sec-websocket-key",), {"Sec-WebSocket-Key": "c2hvcnQ="}, 400),
        (("sec-websocket-key",), {"Sec-WebSocket-Key": "not base64 at all!!!"}, 400),
        ((), {"Sec-WebSocket-Key": RFC_KEY}, 400),  # twice
    ],
)
def test_bad_upgrades(drop: tuple[str, ...], replace: dict[str, str], status: int) -> None:
    request = _upgrade_without(*drop, **replace)
    with pytest.raises(HttpError) as info:
        check_upgrade(request)
    assert info.value.status == status, info.value.message
    if status == 426:
        assert ("Sec-WebSocket-Version", "13") in info.value.headers


def test_answers_are_complete() -> None:
    raw = error_response(431, "send fewer header fields", (("Retry-After", "3"),))
    status_line, rest = raw.split(b"\r\n", 1)
    assert status_line == b"HTTP/1.1 431 Request Header Fields Too Large"
    head_part, body = rest.split(b"\r\n\r\n", 1)
    fields = dict(line.split(": ", 1) for line in head_part.decode().split("\r\n"))
    assert fields["Content-Length"] == str(len(body))
    assert fields["Content-Type"] == "application/json"
    assert fields["Connection"] == "close" and fields["Retry-After"] == "3"
    assert json.loads(body) == {
        "error": "request header fields too large",
        "message": "send fewer header fields",
    }
    head_only = response(200, b"12345", "text/plain", head_only=True)
    assert head_only.endswith(b"Content-Length: 5\r\nConnection: close\r\n\r\n")


def test_a_long_request_line_is_414_even_when_the_head_ends() -> None:
    data = b"GET /ws?token=" + b"t" * 3000 + b" HTTP/1.1\r\nHost: h\r\n\r\n"
    assert refused(data).status == 414
