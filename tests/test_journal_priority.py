"""Log lines carry their level to journald as a syslog priority prefix.

Under systemd, stderr is a stream to journald, which stores a line at priority 6
(info) unless it starts with ``<N>``: then journald strips the prefix and stores N.
The node prefixes each line when ``$JOURNAL_STREAM`` names its stderr (device and
inode, as systemd sets it), and only then. Here the "journal" is a file whose device
and inode the test puts in ``$JOURNAL_STREAM``; tests/host/ checks journald itself.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from websockets.sync.client import connect

from pushsvc.auth import mint_token
from pushsvc.logsetup import configure_logging, journal_prefix, stderr_is_journal
from tests.nodeproc import NodeProcess
from tests.wsclient import Client

PREFIXED = re.compile(r"<([0-7])>(.*)")
PRIORITY = {"DEBUG": 7, "INFO": 6, "WARNING": 4, "ERROR": 3, "CRITICAL": 2}


@pytest.fixture(autouse=True)
def restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level, hook = list(root.handlers), root.level, sys.excepthook
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)
    sys.excepthook = hook


def stream_id(path: Path) -> str:
    """``$JOURNAL_STREAM`` for a stream that is the file ``path``."""
    st = path.stat()
    return f"{st.st_dev}:{st.st_ino}"


def log_every_level(path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str) -> list[str]:
    with open(path, "w") as stream:
        monkeypatch.setattr(sys, "stderr", stream)
        configure_logging("debug", fmt)
        log = logging.getLogger("pushsvc.test")
        log.debug("a debug event")
        log.info("an info event", extra={"conn": "ab12"})
        log.warning("a warning\nover two lines")
        log.error("an error")
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            log.critical("a critical event", exc_info=True)
    return path.read_text().splitlines()


def test_json_lines_get_their_priority_when_stderr_is_the_journal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "journal"
    path.touch()
    monkeypatch.setenv("JOURNAL_STREAM", stream_id(path))
    lines = log_every_level(path, monkeypatch, "json")
    assert len(lines) == 5, lines  # one line per event, tracebacks included
    events = []
    for line in lines:
        match = PREFIXED.fullmatch(line)
        assert match, line
        event = json.loads(match.group(2))  # what journald stores: one JSON object
        assert int(match.group(1)) == PRIORITY[event["level"]], line
        events.append(event["msg"])
    assert events[1:3] == ["an info event", "a warning\nover two lines"]


def test_text_lines_get_their_priority_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "journal"
    path.touch()
    monkeypatch.setenv("JOURNAL_STREAM", stream_id(path))
    lines = log_every_level(path, monkeypatch, "text")
    assert [line[:3] for line in lines] == ["<7>", "<6>", "<4>", "<3>", "<2>"], lines
    assert " WARNING pushsvc.test a warning\\nover two lines" in lines[2]


@pytest.mark.parametrize("journal_stream", [None, "other", "0:0", "garbage"])
def test_no_prefix_unless_stderr_is_the_journal(
    journal_stream: str | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Unset, or naming another stream (a process that inherited the variable and
    writes elsewhere, e.g. ``pushsvc serve 2>file`` in a unit's shell)."""
    other = tmp_path / "other"
    other.touch()
    value = {"other": stream_id(other), "0:0": "0:0", "garbage": "x:y:z"}.get(journal_stream or "")
    if value is None:
        monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    else:
        monkeypatch.setenv("JOURNAL_STREAM", value)
    lines = log_every_level(tmp_path / "stderr", monkeypatch, "json")
    assert len(lines) == 5
    for line in lines:
        json.loads(line)
    assert not stderr_is_journal() and journal_prefix() == ""


def serve(env: dict[str, str], stderr: Path, tmp_path: Path) -> int:
    """``pushsvc serve`` with stdout and stderr on the file ``stderr``."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("PUSHSVC_")}
    full.update(
        PUSHSVC_WS_ADDR="127.0.0.1:0",
        PUSHSVC_GRPC_ADDR="127.0.0.1:0",
        PUSHSVC_ADMIN_ADDR="127.0.0.1:0",
        PUSHSVC_DATA_DIR=str(tmp_path / "data"),
        **env,
    )
    with open(stderr, "ab") as out:
        return subprocess.run(
            [sys.executable, "-m", "pushsvc", "serve"],
            env=full,
            stdout=out,
            stderr=out,
            timeout=60,
            cwd=tmp_path,
        ).returncode


def test_a_node_under_journald_prefixes_every_line(
    node_factory: Callable[..., NodeProcess],
) -> None:
    """A whole run of a node at debug level: every line has its priority and is one
    JSON object after it; the warning a node without secrets logs is priority 4."""
    node = node_factory(
        env={
            "PUSHSVC_LOG_FORMAT": "json",
            "PUSHSVC_JWT_SECRET": "",
            "PUSHSVC_API_KEYS": "",
            "PUSHSVC_HANDSHAKE_TIMEOUT": "1",
        },
        start=False,
    )
    node.log_path.touch()
    node.env["JOURNAL_STREAM"] = stream_id(node.log_path)
    node.start()
    # A client of the node's own (generated) secret: connection events at info.
    secret = (node.data_dir / "jwt-secret").read_text().strip()
    url = f"{node.ws_url}?token={mint_token(secret, 'alice', 3600, None)}"
    with Client(connect(url, open_timeout=10, legacy=True)) as alice:
        assert alice.welcome["user"] == "alice"
    # A socket that sends nothing is answered 408 at its deadline: logged at debug.
    with socket.create_connection(("127.0.0.1", node.ws_port), timeout=60) as silent:
        assert silent.recv(4096).startswith(b"HTTP/1.1 408 ")
    assert node.stop() == 0
    priorities: dict[str, set[int]] = {}
    for line in node.log().splitlines():
        match = PREFIXED.fullmatch(line)
        assert match, line
        event = json.loads(match.group(2))
        assert int(match.group(1)) == PRIORITY[event["level"]], line
        priorities.setdefault(event["msg"].split(" in ")[0], set()).add(int(match.group(1)))
    assert priorities["generated a JWT secret"] == {4}
    assert priorities["node ready"] == priorities["connection opened"] == {6}
    assert 7 in set().union(*priorities.values())  # PUSHSVC_LOG_LEVEL=debug


@pytest.mark.parametrize(
    ("env", "words"),
    [
        # Refused by load_settings, in the command's main.
        ({"PUSHSVC_LOG_LEVEL": "loud"}, "PUSHSVC_LOG_LEVEL: 'loud'"),
        # Refused at the node's start.
        (
            {"PUSHSVC_TLS_CERT": "/nonexistent.pem", "PUSHSVC_TLS_KEY": "/nonexistent.key"},
            "cannot read",
        ),
    ],
    ids=["setting", "tls-files"],
)
def test_the_line_that_stops_serve_is_an_error_in_the_journal(
    env: dict[str, str], words: str, tmp_path: Path
) -> None:
    journal = tmp_path / "journal"
    journal.touch()
    assert serve({**env, "JOURNAL_STREAM": stream_id(journal)}, journal, tmp_path) == 2
    (line,) = journal.read_text().splitlines()
    assert line.startswith("<3>pushsvc: error: ") and words in line, line
    # The same with stderr elsewhere: the line as a terminal shows it.
    plain = tmp_path / "plain"
    assert serve({**env, "JOURNAL_STREAM": stream_id(journal)}, plain, tmp_path) == 2
    assert plain.read_text().startswith("pushsvc: error: ")
