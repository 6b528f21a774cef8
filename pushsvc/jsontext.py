"""JSON as RFC 8259 defines it, with bounded nesting: what pushsvc accepts from outside.

Python's ``json.loads`` takes more than RFC 8259 allows (``NaN``, ``Infinity``,
numbers that overflow to infinity, UTF-16 and UTF-32 byte strings) and raises
``RecursionError`` on deeply nested input. ``loads`` here accepts exactly JSON
text: UTF-8 without a byte order mark, finite numbers, at most ``max_depth``
nested arrays and objects; anything else raises ``JsonError`` (a ``ValueError``)
with a message a client can act on. Push and publish payloads, client frames and
token claims all go through it.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from typing import Any, cast

MAX_DEPTH = 64

# A JSON string (RFC 8259 7), unrolled so that it never backtracks.
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)
_BRACKET = re.compile(r"[\[\]{}]")


class JsonError(ValueError):
    """Not JSON text as RFC 8259 defines it, or nested too deep."""


def _constant(name: str) -> Any:
    raise JsonError(f"{name} is not a JSON value (RFC 8259 allows only finite numbers)")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise JsonError(f"the number {text[:40]} is out of range")
    return value


_decoder = json.JSONDecoder(parse_constant=_constant, parse_float=_finite)
# What ``_decoder.decode`` does, without its two Python frames per document: the
# (C) scanner between optional whitespace, nothing after it.
_scan: Callable[[str, int], tuple[Any, int]] = _decoder.scan_once  # type: ignore[attr-defined]
_space = cast(  # always matches (perhaps nothing): never None
    "Callable[..., re.Match[str]]", re.compile(r"[ \t\n\r]*").match
)


def depth_within(text: str, max_depth: int) -> bool:
    """Whether arrays and objects nest at most ``max_depth`` deep (brackets inside
    strings do not count)."""
    if text.count("[") + text.count("{") <= max_depth:
        return True
    depth = 0
    for match in _BRACKET.finditer(_STRING.sub("", text)):
        if match[0] in "[{":
            depth += 1
            if depth > max_depth:
                return False
        else:
            depth -= 1
    return True


def decode_utf8(data: bytes | bytearray | memoryview) -> str:
    """JSON bytes as text: UTF-8 only (RFC 8259 8.1), no byte order mark."""
    raw = data if isinstance(data, bytes) else bytes(data)
    if raw.startswith(b"\xef\xbb\xbf"):
        raise JsonError("JSON text must not start with a byte order mark")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise JsonError(f"JSON text must be UTF-8 (invalid byte at {exc.start})") from None


def loads(data: str | bytes | bytearray | memoryview, max_depth: int = MAX_DEPTH) -> Any:
    """Parse JSON text strictly; ``JsonError`` says what is wrong."""
    if type(data) is bytes and data[-1:] in _CLOSERS:
        # The common case -- UTF-8 bytes of one object or array with no space
        # around it and few brackets -- in as few steps as it takes. Any doubt
        # (including every error) goes the careful way below, which names it.
        try:
            text = data.decode()
            if text.count("[") + text.count("{") <= max_depth:
                value, end = _scan(text, 0)
                if end == len(text):
                    return value
        except (ValueError, StopIteration, RecursionError):
            pass
    return _loads(data, max_depth)


_CLOSERS = (b"}", b"]")


def _loads(data: str | bytes | bytearray | memoryview, max_depth: int) -> Any:
    text = data if isinstance(data, str) else decode_utf8(data)
    if not depth_within(text, max_depth):
        raise JsonError(f"JSON nested more than {max_depth} levels deep")
    try:
        try:
            value, end = _scan(text, _space(text).end())
        except StopIteration as stop:
            raise json.JSONDecodeError("Expecting value", text, stop.value) from None
        end = _space(text, end).end()
        if end != len(text):
            raise json.JSONDecodeError("Extra data", text, end)
        return value
    except JsonError:
        raise
    except ValueError as exc:  # json.JSONDecodeError, and ints over 4300 digits
        raise JsonError(f"not valid JSON: {exc}") from None
    except RecursionError:  # cannot happen within max_depth; never let it out
        raise JsonError(f"JSON nested more than {max_depth} levels deep") from None
