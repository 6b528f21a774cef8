"""Logging: one line per event on stderr, ``text`` for a terminal, ``json`` for collectors.

    log = logging.getLogger("pushsvc.edge")
    log_event(log, "info", "connection opened", conn="ab12", user="alice")

text: ``2026-11-22T03:46:10Z INFO pushsvc.edge connection opened conn=ab12 user=alice``
json: ``{"ts":"2026-11-22T03:46:10.123Z","level":"INFO","logger":"pushsvc.edge",
"msg":"connection opened","conn":"ab12","user":"alice"}``

Tokens and payloads never belong in a log line. As a safety net, a filter on the
handler replaces the value of any field whose name says it is a secret (token,
payload, authorization, api_key, secret, jwt, password...) with ``[redacted]``.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

from pushsvc.errors import ConfigError

__all__ = ["REDACTED", "RedactFilter", "configure_logging", "is_sensitive", "log_event"]

REDACTED = "[redacted]"

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}

# Attributes every LogRecord has; anything else on a record came from ``extra``.
_STANDARD_ATTRS = frozenset(
    logging.LogRecord("x", logging.INFO, "x", 0, "x", None, None).__dict__
) | {"message", "asctime", "taskName"}

_SENSITIVE_WORDS = frozenset(
    {"token", "tokens", "payload", "payloads", "authorization", "secret", "secrets", "jwt"}
    | {"password", "passwd", "credentials", "cookie"}
)
_SENSITIVE_NAMES = frozenset({"api_key", "api_keys", "apikey", "cluster_key", "private_key"})


def is_sensitive(name: str) -> bool:
    """True for a field name that may hold a secret or a message body."""
    lowered = name.lower().replace("-", "_")
    if lowered in _SENSITIVE_NAMES or any(lowered.endswith("_" + n) for n in _SENSITIVE_NAMES):
        return True
    return any(part in _SENSITIVE_WORDS for part in lowered.split("_"))


def _extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD_ATTRS}


class RedactFilter(logging.Filter):
    """Replaces the value of sensitive ``extra`` fields with ``[redacted]``."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key in _extra_fields(record):
            if is_sensitive(key):
                setattr(record, key, REDACTED)
        return True


def _timestamp(created: float, millis: bool) -> str:
    moment = datetime.fromtimestamp(created, UTC)
    if millis:
        return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _text_value(value: Any) -> str:
    if isinstance(value, str):
        text = value
    else:
        text = json.dumps(value, default=_json_default, ensure_ascii=False, separators=(",", ":"))
    if text == "" or any(c.isspace() or c in '="' for c in text):
        return json.dumps(text, ensure_ascii=False)
    return text


def _json_default(value: Any) -> Any:
    if isinstance(value, bool | int | float | str | list | dict) or value is None:
        return value
    if isinstance(value, tuple | set | frozenset):
        return list(value)
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"  # never the content
    return str(value)


class TextFormatter(logging.Formatter):
    """``<ts> <LEVEL> <logger> <message> key=value ...``"""

    def format(self, record: logging.LogRecord) -> str:
        parts = [
            _timestamp(record.created, millis=False),
            record.levelname,
            record.name,
            record.getMessage(),
        ]
        parts += [f"{k}={_text_value(v)}" for k, v in _extra_fields(record).items()]
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        elif record.stack_info:
            line += "\n" + self.formatStack(record.stack_info)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, the extra fields, exc."""

    def format(self, record: logging.LogRecord) -> str:
        obj: dict[str, Any] = {
            "ts": _timestamp(record.created, millis=True),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in _extra_fields(record).items():
            obj[key if key not in obj else f"extra_{key}"] = value
        if record.exc_info:
            obj["exc"] = self.formatException(record.exc_info)
        elif record.stack_info:
            obj["stack"] = self.formatStack(record.stack_info)
        return json.dumps(obj, default=_json_default, ensure_ascii=False, separators=(",", ":"))


class _StderrHandler(logging.StreamHandler[TextIO]):
    """Writes to whatever ``sys.stderr`` is at the time of the event."""

    _pushsvc = True

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        pass


def configure_logging(level: str = "info", fmt: str = "text") -> None:
    """Send every log record at ``level`` or above to stderr in format ``fmt``.

    Calling it again replaces the previous configuration.
    """
    try:
        numeric = _LEVELS[level.strip().lower()]
    except KeyError:
        raise ConfigError(
            f"log level {level!r} is not one of debug, info, warning, error"
        ) from None
    fmt = fmt.strip().lower()
    formatter: logging.Formatter
    if fmt == "text":
        formatter = TextFormatter()
    elif fmt == "json":
        formatter = JsonFormatter()
    else:
        raise ConfigError(f"log format {fmt!r} is not one of text, json")
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_pushsvc", False):
            root.removeHandler(old)
    handler = _StderrHandler()
    handler.setFormatter(formatter)
    handler.addFilter(RedactFilter())
    root.addHandler(handler)
    root.setLevel(numeric)
    logging.captureWarnings(True)


def log_event(logger: logging.Logger, level: str | int, msg: str, **fields: Any) -> None:
    """``logger.<level>(msg)`` with ``fields`` as extra fields.

    Field names that clash with LogRecord attributes (``name``, ``msg``...) get a
    trailing underscore instead of raising.
    """
    numeric = level if isinstance(level, int) else _LEVELS.get(level.lower(), logging.INFO)
    if not logger.isEnabledFor(numeric):
        return
    extra = {(f"{k}_" if k in _STANDARD_ATTRS else k): v for k, v in fields.items()}
    logger.log(numeric, msg, extra=extra, stacklevel=2)
