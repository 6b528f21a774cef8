"""``systemctl reload``: SIGHUP to a node, answered once the node has reloaded.

On SIGHUP a node reads its TLS certificate and key again and tells systemd
(``RELOADING=1``, then ``READY=1``). systemd 252 (Debian 12) has no
``Type=notify-reload``; with ``Type=notify`` and ``ExecReload=`` it waits for that
``READY=1`` only when ``RELOADING=1`` arrived while the ``ExecReload=`` process
still ran. ``kill -HUP $MAINPID`` exits at once, so ``systemctl reload`` would
return before the reload whenever the node's event loop is busy for a moment, and
would never say that the node refused the new files.

So the unit's ``ExecReload=`` is ``pushsvc reload --pid $MAINPID``
(``signal_and_wait``): it sends SIGHUP and waits for the node's answer, which the
node writes to ``<data dir>/reload-status`` after every SIGHUP, once it has sent
``RELOADING=1`` and ``READY=1`` (``record_reload``). systemd has heard both by the time
the control process exits, so the reload job ends with the reload, and fails
(exit status 1) when the node kept its current certificate.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from pathlib import Path

log = logging.getLogger("pushsvc.reload")

STATUS_FILE = "reload-status"
POLL_INTERVAL = 0.05


class ReloadFailed(Exception):
    """The node did not reload: it kept its certificate, exited, or did not answer."""


def record_reload(data_dir: str | Path, count: int, ok: bool) -> None:
    """Write the outcome of this process's reload number ``count`` (one JSON line,
    replaced in one step, mode 0600). A directory that cannot be written is logged
    at debug level: only the waiting ``pushsvc reload`` misses the answer."""
    directory = Path(data_dir)
    line = json.dumps({"pid": os.getpid(), "reload": count, "ok": ok}) + "\n"
    partial = directory / f".{STATUS_FILE}.partial"
    try:
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(line)
        os.replace(partial, directory / STATUS_FILE)
    except OSError as exc:
        log.debug("reload status not written", extra={"path": str(directory), "error": str(exc)})


def _answer(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return b""


def signal_and_wait(pid: int, data_dir: str | Path, timeout: float = 60.0) -> None:
    """SIGHUP to the node ``pid``, whose data directory is ``data_dir``; return once
    it has reloaded. ``ReloadFailed`` when it kept its certificate, exited, or did not
    answer within ``timeout`` seconds; ``OSError`` when it cannot be signalled (no such
    process, another user's) or its answer cannot be read."""
    path = Path(data_dir) / STATUS_FILE
    before = _answer(path)
    os.kill(pid, signal.SIGHUP)
    deadline = time.monotonic() + timeout
    while True:
        current = _answer(path)
        if current != before:
            try:
                status = json.loads(current)
            except ValueError:
                status = {}
            if isinstance(status, dict) and status.get("pid") == pid:
                if status.get("ok") is True:
                    return
                raise ReloadFailed(
                    f"node {pid} kept its current TLS certificate: the new files failed a "
                    "check (its log line 'TLS certificate not reloaded' says why)"
                )
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            raise ReloadFailed(f"node {pid} exited before it had reloaded") from None
        if time.monotonic() > deadline:
            raise ReloadFailed(
                f"node {pid} did not answer the reload within {timeout:g} s "
                f"(no new {path}): is its data directory {data_dir}?"
            )
        time.sleep(POLL_INTERVAL)  # polling the node's answer, with a deadline
