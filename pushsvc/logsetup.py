"""Logging: one line per event on stderr, ``text`` for a terminal, ``json`` for collectors.

    log = logging.getLogger("pushsvc.edge")
    log_event(log, "info", "connection opened", conn="ab12", user="alice")

text: ``2026-11-22T03:46:10Z INFO pushsvc.edge connection opened conn=ab12 user=alice``
json: ``{"ts":"2026-11-22T03:46:10.123Z","level":"INFO","logger":"pushsvc.edge",
"msg":"connection opened","conn":"ab12","user":"alice"}``

Every event is exactly one line in both formats: a message or traceback that spans
lines is escaped (text) or encoded in a JSON string (json).

Tokens and payloads never belong in a log line. As a safety net, a filter on the
handler replaces the value of any field whose name says it is a secret (token,
payload, authorization, api_key, secret, jwt, password...) with ``[redacted]``, and
every line is scrubbed of ``token=...`` query parameters, ``Bearer ...`` credentials
and anything shaped like a JWT (a request line quoted in a library's error message,
an exception text). Libraries that log message bodies at debug level (pymongo's
command log) are held at info. Errors gevent would print with their context (a WSGI
environ, query string included) go through logging instead.

Under systemd, stderr is a stream to journald, which stores every line at
priority 6 (info) unless the line starts with a syslog priority: there, each line
is prefixed with ``<N>`` (``<3>`` error, ``<4>`` warning, ``<6>`` info, ``<7>``
debug), which journald strips and stores as the entry's ``PRIORITY``
(``SyslogLevelPrefix=yes``, the default), so ``journalctl -p warning`` finds the
warnings and a JSON line is still one JSON object in the journal.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, TextIO

from pushsvc.errors import ConfigError

__all__ = [
    "REDACTED",
    "RedactFilter",
    "StrayOutput",
    "capture_stray_output",
    "configure_logging",
    "is_sensitive",
    "journal_prefix",
    "log_event",
    "release_stray_output",
    "route_gevent_errors",
    "scrub",
    "stderr_is_journal",
]

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


# Loggers of libraries that put message bodies or credentials in debug records.
_QUIET_LOGGERS = ("pymongo", "urllib3", "hpack")

# Secrets that may hide inside free text: a query parameter, an Authorization
# value, or a JWT (three base64url parts, the first starting with '{"' encoded).
_SCRUB = (
    (
        re.compile(
            r"(?i)\b((?:access_)?token|jwt|api_?key|cluster_key|authorization|secret|password)"
            r"(=|%3D)[^&\s\"'\\]+"
        ),
        r"\1\2" + REDACTED,
    ),
    (re.compile(r"(?i)\b(bearer)\s+[^\s\"'\\,;]+"), r"\1 " + REDACTED),
    (re.compile(r"\beyJ[\w-]{4,}\.[\w-]*\.?[\w-]*"), REDACTED),
)


def scrub(text: str) -> str:
    """``text`` with credentials that look like credentials replaced by ``[redacted]``."""
    for pattern, replacement in _SCRUB:
        text = pattern.sub(replacement, text)
    return text


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


def _one_line(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\r", "\\r").replace("\n", "\\n")


def _scrubbed(value: Any) -> Any:
    return scrub(value) if isinstance(value, str) else value


class TextFormatter(logging.Formatter):
    """``<ts> <LEVEL> <logger> <message> key=value ... [exc="<traceback>"]``, one line."""

    def format(self, record: logging.LogRecord) -> str:
        parts = [
            _timestamp(record.created, millis=False),
            record.levelname,
            record.name,
            _one_line(scrub(record.getMessage())),
        ]
        parts += [f"{k}={_text_value(_scrubbed(v))}" for k, v in _extra_fields(record).items()]
        if record.exc_info:
            parts.append("exc=" + json.dumps(scrub(self.formatException(record.exc_info))))
        elif record.stack_info:
            parts.append("stack=" + json.dumps(scrub(self.formatStack(record.stack_info))))
        return " ".join(parts)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, the extra fields, exc."""

    def format(self, record: logging.LogRecord) -> str:
        obj: dict[str, Any] = {
            "ts": _timestamp(record.created, millis=True),
            "level": record.levelname,
            "logger": record.name,
            "msg": scrub(record.getMessage()),
        }
        for key, value in _extra_fields(record).items():
            obj[key if key not in obj else f"extra_{key}"] = _scrubbed(value)
        if record.exc_info:
            obj["exc"] = scrub(self.formatException(record.exc_info))
        elif record.stack_info:
            obj["stack"] = scrub(self.formatStack(record.stack_info))
        return json.dumps(obj, default=_json_default, ensure_ascii=False, separators=(",", ":"))


class _StderrHandler(logging.StreamHandler[TextIO]):
    """Writes to whatever ``sys.stderr`` is at the time of the event."""

    _pushsvc = True

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> TextIO:
        current = sys.stderr
        return current.real if isinstance(current, StrayOutput) else current

    @stream.setter
    def stream(self, value: TextIO) -> None:
        pass


def stderr_is_journal() -> bool:
    """Whether ``sys.stderr`` is the stream systemd connected to journald: systemd
    names that stream's device and inode in ``$JOURNAL_STREAM`` (a process that
    inherited the variable but writes elsewhere, e.g. ``2>file``, is not)."""
    device, sep, inode = os.environ.get("JOURNAL_STREAM", "").partition(":")
    if not sep:
        return False
    try:
        stat = os.fstat(sys.stderr.fileno())
        return (stat.st_dev, stat.st_ino) == (int(device), int(inode))
    except (AttributeError, OSError, ValueError):  # no descriptor (captured), or garbage
        return False


def _syslog_priority(levelno: int) -> int:
    if levelno >= logging.CRITICAL:
        return 2
    if levelno >= logging.ERROR:
        return 3
    if levelno >= logging.WARNING:
        return 4
    if levelno >= logging.INFO:
        return 6
    return 7


def journal_prefix(levelno: int = logging.ERROR) -> str:
    """``<N>``, the syslog priority of ``levelno`` (an error by default), for a line
    written to stderr past logging when stderr is journald's stream; else ``""``."""
    return f"<{_syslog_priority(levelno)}>" if stderr_is_journal() else ""


class _JournalPriority(logging.Formatter):
    """Another formatter's line, prefixed with its syslog priority for journald."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        return f"<{_syslog_priority(record.levelno)}>{self.inner.format(record)}"


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
    if stderr_is_journal():
        formatter = _JournalPriority(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_pushsvc", False):
            root.removeHandler(old)
    handler = _StderrHandler()
    handler.setFormatter(formatter)
    handler.addFilter(RedactFilter())
    root.addHandler(handler)
    root.setLevel(numeric)
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(max(numeric, logging.INFO))
    logging.captureWarnings(True)
    sys.excepthook = _log_uncaught


def _log_uncaught(
    type_: type[BaseException], value: BaseException, tb: TracebackType | None
) -> None:
    if issubclass(type_, KeyboardInterrupt):
        sys.__excepthook__(type_, value, tb)
        return
    logging.getLogger("pushsvc").critical("uncaught exception", exc_info=(type_, value, tb))


def _context_name(context: Any) -> str:
    """Where an error happened, without the context's repr (a WSGI environ holds the
    query string and headers, a greenlet's repr its arguments)."""
    if context is None:
        return "event loop"
    if isinstance(context, dict):
        return f"request {context.get('REQUEST_METHOD', '')} {context.get('PATH_INFO', '')}"
    return type(context).__name__


def route_gevent_errors(hub: Any) -> None:
    """Log the errors gevent's hub reports (a greenlet or a request handler that
    raised) as one event, instead of printing the traceback and its context."""
    logger = logging.getLogger("pushsvc.errors")

    def print_exception(
        context: Any, type_: type[BaseException], value: BaseException, tb: TracebackType | None
    ) -> None:
        logger.error(
            "unhandled error", extra={"where": _context_name(context)}, exc_info=(type_, value, tb)
        )

    hook: Callable[..., None] = print_exception
    hub.print_exception = hook


class StrayOutput(io.TextIOBase):
    """``sys.stderr`` while a node runs: text a library writes there directly (gevent's
    server printing a failure, a ``traceback.print_exc()``) becomes one log event per
    burst of writes, so every line on the real stderr is a formatted event."""

    def __init__(self, real: TextIO, schedule: Callable[[Callable[[], None]], Any]) -> None:
        super().__init__()
        self.real = real
        self._schedule = schedule
        self._pending: list[str] = []
        self._logger = logging.getLogger("pushsvc.stderr")

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if not self._pending:
            self._schedule(self.flush)  # once the writer is done: one event for it all
        self._pending.append(text)
        return len(text)

    def flush(self) -> None:
        text, self._pending = "".join(self._pending).strip(), []
        if text:
            self._logger.error("unformatted output", extra={"text": text[:20000]})

    def fileno(self) -> int:
        return self.real.fileno()


def capture_stray_output(schedule: Callable[[Callable[[], None]], Any]) -> None:
    """Route direct writes to ``sys.stderr`` through logging (see ``StrayOutput``);
    ``schedule`` runs a callback soon after (the event loop's ``run_callback``)."""
    if not isinstance(sys.stderr, StrayOutput):
        sys.stderr = StrayOutput(sys.stderr, schedule)


def release_stray_output() -> None:
    """Put the real ``sys.stderr`` back, after logging what was still pending."""
    current = sys.stderr
    if isinstance(current, StrayOutput):
        current.flush()
        sys.stderr = current.real


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
