"""Log lines: text and json formats, extra fields, redaction of secrets."""

from __future__ import annotations

import json
import logging
import re
import sys
import traceback
from collections.abc import Callable, Iterator

import pytest

from pushsvc.errors import ConfigError
from pushsvc.logsetup import (
    REDACTED,
    capture_stray_output,
    configure_logging,
    is_sensitive,
    log_event,
    release_stray_output,
)


@pytest.fixture(autouse=True)
def restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)


def test_json_one_object_per_line(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info", "json")
    log = logging.getLogger("pushsvc.edge")
    log_event(log, "info", "connection opened", conn="ab12", user="alice")
    log.warning("slow consumer", extra={"conn": "cd34", "queued": 1024})
    log.debug("not shown")
    try:
        raise RuntimeError("boom\nsecond line")
    except RuntimeError:
        log.exception("handler failed", extra={"conn": "ef56"})
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 3, err
    objs = [json.loads(line) for line in lines]
    first = objs[0]
    assert first["level"] == "INFO"
    assert first["logger"] == "pushsvc.edge"
    assert first["msg"] == "connection opened"
    assert (first["conn"], first["user"]) == ("ab12", "alice")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", first["ts"])
    assert objs[1]["queued"] == 1024
    assert objs[1]["level"] == "WARNING"
    assert "RuntimeError: boom" in objs[2]["exc"]


def test_text_format(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("debug", "text")
    log = logging.getLogger("pushsvc.edge")
    log_event(log, "info", "connection opened", conn="ab12", user="alice")
    log_event(log, "debug", "closed", reason="going away", code=1001, name="clash")
    lines = capsys.readouterr().err.splitlines()
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ INFO pushsvc.edge connection opened conn=ab12 user=alice",
        lines[0],
    )
    assert lines[1].endswith('DEBUG pushsvc.edge closed reason="going away" code=1001 name_=clash')


def test_redaction(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info", "json")
    log = logging.getLogger("pushsvc.grpc")
    log_event(
        log,
        "info",
        "call",
        user="alice",
        token="eyJhbGciOi.secret.sig",
        payload=b'{"card":"4111"}',
        authorization="Bearer k1",
        api_key="k1",
        secret="s3cr3t",
        jwt="eyJ...",
        jwt_secret="s",
        cluster_key="ck",
        access_token="at",
    )
    log.info("extra dance", extra={"Token": "x", "payload": "y"})
    err = capsys.readouterr().err
    for leaked in ("eyJhbGciOi", "4111", "Bearer k1", '"k1"', "s3cr3t", '"ck"', '"at"'):
        assert leaked not in err
    first, second = (json.loads(line) for line in err.splitlines())
    assert first["user"] == "alice"
    for key in ("token", "payload", "authorization", "api_key", "secret", "jwt"):
        assert first[key] == REDACTED
    assert first["jwt_secret"] == first["cluster_key"] == first["access_token"] == REDACTED
    assert second["Token"] == second["payload"] == REDACTED

    configure_logging("info", "text")
    log_event(log, "info", "call", user="bob", token="eyJabc")
    line = capsys.readouterr().err.strip()
    assert line.endswith(f"call user=bob token={REDACTED}")


def test_sensitive_names() -> None:
    for name in ("token", "payload", "Authorization", "api_key", "api-key", "jwt_secret"):
        assert is_sensitive(name), name
    for name in ("user", "conn", "topic", "message_id", "idempotency_key", "seq", "node"):
        assert not is_sensitive(name), name


def test_reconfigure_replaces_handler(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info", "text")
    configure_logging("info", "json")
    logging.getLogger("pushsvc").info("once")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1
    assert json.loads(lines[0])["msg"] == "once"


def test_bad_level_or_format() -> None:
    with pytest.raises(ConfigError):
        configure_logging("loud", "text")
    with pytest.raises(ConfigError):
        configure_logging("info", "xml")


def test_stray_output_becomes_one_event(capsys: pytest.CaptureFixture[str]) -> None:
    """What a library writes to sys.stderr itself (gevent printing a failure, a
    traceback.print_exc()) comes out as one formatted event per burst."""
    configure_logging("info", "json")
    pending: list[Callable[[], None]] = []
    capture_stray_output(pending.append)
    try:
        try:
            raise ValueError("boom with token=abc.def.ghi")
        except ValueError:
            traceback.print_exc()
        sys.stderr.write("ERROR: <StreamServer> failed with EBADF\n")
        assert capsys.readouterr().err == ""  # nothing until the loop runs the callback
        for callback in pending:
            callback()
        logging.getLogger("pushsvc.edge").info("after")
    finally:
        release_stray_output()
    lines = capsys.readouterr().err.splitlines()
    events = [json.loads(line) for line in lines]
    assert [e["msg"] for e in events] == ["unformatted output", "after"], lines
    text = events[0]["text"]
    assert text.startswith("Traceback") and "ValueError" in text and "EBADF" in text
    assert "abc.def.ghi" not in lines[0]  # scrubbed like any other field
    assert not hasattr(sys.stderr, "real")
