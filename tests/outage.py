"""A real store outage for the client suites (Go, Node): no fake servers.

``outage_node(node_factory)`` starts a FerretDB of its own and one fleet node
on it. ``run_through_outage`` then takes the store away, launches a client
suite's outage test, and brings the store back (same port, same data) once

1. the test has printed ``OUTAGE_MARK``: every push it keeps in flight has had
   an attempt refused with UNAVAILABLE (seen by the client's own interceptor),
   so the store returns while they are retrying, never before a first attempt;
2. the node's /metrics shows ``pushsvc_store_errors_total > 0``: the node
   itself saw its store fail.

The outage test then has to finish on its own: its pushes succeed on a retry.
It is told where the node is by the PUSHSVC_TEST_* variables of ``outage_env``,
with ``PUSHSVC_TEST_OUTAGE=1`` ("the store is down now and comes back after
the mark").
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from tests.ferretdb import FerretDB
from tests.langtest import live_env
from tests.nodeproc import API_KEY, CLUSTER_KEY, JWT_SECRET, NodeProcess

OUTAGE_MARK = "PUSHSVC_OUTAGE_SEEN"
STORE_ERRORS = "pushsvc_store_errors_total"


def metric(node: NodeProcess, name: str) -> float:
    status, body = node.admin_get("/metrics")
    assert status == 200, body
    for line in body.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"no metric {name} in /metrics")


@contextlib.contextmanager
def outage_node(
    node_factory: Callable[..., NodeProcess],
) -> Iterator[tuple[FerretDB, NodeProcess]]:
    """A fleet node on a FerretDB of its own, which ``run_through_outage`` stops and starts.

    A test may stop and start it itself (``db.stop()``, ``db.start()``).
    """
    db = FerretDB()
    try:
        db.start()
        node = node_factory(
            env={
                "PUSHSVC_MONGO_URI": db.uri,
                "PUSHSVC_MONGO_DB": f"outage_{uuid.uuid4().hex[:10]}",
                "PUSHSVC_CLUSTER_KEY": CLUSTER_KEY,
                "PUSHSVC_JWT_SECRET": JWT_SECRET,
                "PUSHSVC_API_KEYS": API_KEY,
            }
        )
        yield db, node
    finally:
        db.cleanup()


def outage_env(node: NodeProcess) -> dict[str, str]:
    """What a client suite's outage test reads: the node, its secrets, the outage flag."""
    return {**live_env(node), "PUSHSVC_TEST_OUTAGE": "1"}


class _Output:
    """The lines a child process prints, read by a thread (so its pipe never fills)."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self.marked = threading.Event()
        self._thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._thread.start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.lines.append(line)
            if OUTAGE_MARK in line:
                self.marked.set()

    def text(self) -> str:
        self._thread.join(5)
        return "".join(self.lines)


def _wait(what: str, good: Callable[[], bool], proc: subprocess.Popen[str], timeout: float) -> None:
    """Poll ``good()`` until it holds; fail if the time is up or the test exited first."""
    deadline = time.monotonic() + timeout
    while not good():
        if proc.poll() is not None:
            raise AssertionError(f"the outage test exited ({proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f} s")
        time.sleep(0.05)  # polling a condition with a deadline


def run_through_outage(
    cmd: list[str],
    *,
    cwd: Path,
    env: dict[str, str],
    db: FerretDB,
    node: NodeProcess,
    timeout: float = 300.0,
) -> str:
    """Run ``cmd`` (an outage test) with the store down until it has felt it; return its output.

    ``timeout`` covers everything, a cold compile of the test included. Fails
    with the test's output and the node's log when anything goes wrong.
    """
    assert db.running, "the store must be up before the outage"
    assert metric(node, STORE_ERRORS) == 0, "store errors before the outage"
    db.stop()  # Push now answers UNAVAILABLE (after the node's server-selection timeout)
    proc = subprocess.Popen(
        cmd,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: go test runs a child binary
    )
    out = _Output(proc)
    deadline = time.monotonic() + timeout
    try:
        try:
            _wait(
                f"the test printed {OUTAGE_MARK}",
                out.marked.is_set,
                proc,
                deadline - time.monotonic(),
            )
            _wait(
                f"the node reported {STORE_ERRORS} > 0",
                lambda: metric(node, STORE_ERRORS) > 0,
                proc,
                min(30.0, deadline - time.monotonic()),
            )
        finally:
            db.start()  # same port, same data
        try:
            proc.wait(max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the outage test did not finish within {timeout:.0f} s") from None
    except AssertionError as exc:
        _kill(proc)
        raise AssertionError(
            f"{exc}\n$ {' '.join(cmd)}\n{out.text()}\n--- node log (tail)\n{node.log()[-4000:]}"
        ) from None
    output = out.text()
    print(f"$ {' '.join(cmd)}\n{output}")
    assert proc.returncode == 0, (
        f"`{' '.join(cmd)}` exited {proc.returncode}:\n{output}\n"
        f"--- node log (tail)\n{node.log()[-4000:]}"
    )
    return output


def _kill(proc: subprocess.Popen[str]) -> None:
    """End the test we started, and its children (its own process group)."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
