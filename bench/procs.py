"""Processes of a benchmark run: started pinned to a core, ready by polling, always ended.

Every process is started in its own session (process group) and registered;
``stop_all()`` (called on exit, on SIGTERM and on Ctrl-C) ends each group
that is still running: SIGTERM, then SIGKILL after a grace period. Nothing else
on the machine is touched.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

from bench.ferretdb import FerretDB

REPO = Path(__file__).resolve().parent.parent
BENCH_TOOLS = REPO / ".tools" / "bench"

_RUNNING: list[Proc] = []


def free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pinned(cmd: Sequence[str], core: int | None) -> list[str]:
    """The command under ``taskset -c core`` (unpinned when taskset is missing)."""
    if core is None or shutil.which("taskset") is None:
        return list(cmd)
    return ["taskset", "-c", str(core), *cmd]


def wait_until(cond: Callable[[], object], timeout: float, what: str, poll: float = 0.05) -> object:
    """Poll ``cond()`` until it is truthy; fail with ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(poll)  # polling a condition with a deadline


class Proc:
    """One child process (group) with its output in a log file."""

    def __init__(
        self,
        name: str,
        cmd: Sequence[str],
        log_dir: Path,
        *,
        core: int | None = 0,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        stdin: int | None = subprocess.DEVNULL,
        stdout_pipe: bool = False,
    ) -> None:
        self.name = name
        self.cmd = pinned(cmd, core)
        self.log_path = log_dir / f"{name}.log"
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self._log_start = self._log.tell()  # a log reused by a later round: only what follows
        self.proc = subprocess.Popen(
            self.cmd,
            stdin=stdin,
            stdout=subprocess.PIPE if stdout_pipe else self._log,
            stderr=self._log,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )
        _RUNNING.append(self)

    @property
    def pid(self) -> int:
        """The server's own pid: taskset execs the command, so it is the same process."""
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def ready_port(self, timeout: float = 30.0) -> int:
        """Wait for the ``READY <port>`` line the bench servers print."""

        def check() -> int | None:
            if not self.alive():
                raise RuntimeError(
                    f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}"
                )
            with open(self.log_path, "rb") as fh:
                fh.seek(self._log_start)
                text = fh.read().decode(errors="replace")
            for line in text.splitlines():
                if line.startswith("READY "):
                    return int(line.split()[1])
            return None

        return int(str(wait_until(check, timeout, f"{self.name} to print READY")))

    def stop(self, grace: float = 10.0) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        # Anything the process left in its group goes too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self._log.close()
        if self in _RUNNING:
            _RUNNING.remove(self)


def stop_all() -> None:
    for proc in list(reversed(_RUNNING)):
        with contextlib.suppress(Exception):
            proc.stop(grace=5.0)


def install_cleanup() -> None:
    """End every started process at exit, on SIGTERM/SIGHUP (as Ctrl-C) and on Ctrl-C."""
    atexit.register(stop_all)

    def interrupt(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGHUP, interrupt)


def http_status(url: str, timeout: float = 2.0) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as err:
        return int(err.code)
    except (OSError, urllib.error.URLError):
        return 0


# -- FerretDB on a chosen core -------------------------------------------------------------


class PinnedFerretDB(FerretDB):
    """bench/ferretdb.py's FerretDB under ``taskset``, ended with the run's processes."""

    def __init__(self, core: int | None) -> None:
        super().__init__()
        self.core = core

    def command(self) -> list[str]:
        return pinned(super().command(), self.core)
