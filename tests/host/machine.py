"""A Debian bookworm host that boots systemd as PID 1, for the package's tests.

``deploy/deb/rootfs.sh`` supplies the root, cached as a tarball under
``.tools/debian/``; a test session unpacks a fresh copy, boots it with
``systemd-nspawn`` (through ``deploy/deb/nspawn.sh``, which gives the container a
cgroup of its own) and runs commands in it with ``nsenter``. systemd 252 is PID 1
in there: it starts, watches, restarts and stops the units as on a real host.

The container shares the host's network namespace: a node inside listening on
127.0.0.1:P is reached by the tests at 127.0.0.1:P, and a FerretDB the tests run
on the host is reached from inside. Their ports come from ``service_ports()``:
free, and below the kernel's ephemeral range, so that no outgoing connection of
another process takes one between the check and the node's bind.
"""

from __future__ import annotations

import ctypes
import json
import os
import random
import shlex
import shutil
import signal
import socket
import subprocess
import time
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

REPO = Path(__file__).resolve().parents[2]
ROOTFS_SH = REPO / "deploy" / "deb" / "rootfs.sh"
NSPAWN_SH = REPO / "deploy" / "deb" / "nspawn.sh"
BOOT_TIMEOUT = 120.0
SHUTDOWN_TIMEOUT = 60.0
# The environment of every command run inside: nothing leaks in from the test run.
INNER_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "LANG": "C.UTF-8",
    "TERM": "dumb",
    "SYSTEMD_PAGER": "",
    "SYSTEMD_COLORS": "0",
    "DEBIAN_FRONTEND": "noninteractive",
}
PR_SET_PDEATHSIG = 1
# journald's PRIORITY (a syslog level) of each of the node's log levels.
PRIORITIES = {"DEBUG": 7, "INFO": 6, "WARNING": 4, "ERROR": 3, "CRITICAL": 2}
HOST_TOOLS = ("debootstrap", "systemd-nspawn", "nsenter", "zstd", "dpkg-deb")


T = TypeVar("T")


def poll(
    cond: Callable[[], T | Literal[False] | None],
    timeout: float,
    what: str,
    interval: float = 0.25,
) -> T:
    """``tests.waiting.wait_for`` at a pace suited to conditions that cost a process
    in the host (``systemctl show``, ``journalctl``): poll until ``cond()`` is truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout:.0f}s waiting for {what} (last: {value!r})"
            )
        time.sleep(interval)  # polling a condition with a deadline


def service_ports(count: int = 1) -> int:
    """The first of ``count`` consecutive free ports in 20000-32767, under the ephemeral
    range (32768-60999) from which connections pick their local ports."""
    rng = random.SystemRandom()
    for _ in range(200):
        first = rng.randrange(20000, 32768 - count)
        held: list[socket.socket] = []
        try:
            for port in range(first, first + count):
                sock = socket.socket()
                held.append(sock)
                sock.bind(("0.0.0.0", port))
            return first
        except OSError:
            continue
        finally:
            for sock in held:
                sock.close()
    raise AssertionError(f"no {count} consecutive free ports in 20000-32767")


class HostError(AssertionError):
    """A command in the host failed, or the host did not boot."""


def missing_tools() -> list[str]:
    path = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    return [tool for tool in HOST_TOOLS if shutil.which(tool, path=path) is None]


def package_version() -> str:
    with open(REPO / "pyproject.toml", "rb") as fh:
        return str(tomllib.load(fh)["project"]["version"])


def built_package() -> Path:
    """``dist/pushsvc_<version>_amd64.deb``, checked to be newer than its sources."""
    deb = REPO / "dist" / f"pushsvc_{package_version()}_amd64.deb"
    # `make -q` answers 0 only when the target exists and is up to date.
    proc = subprocess.run(
        ["make", "--no-print-directory", "-q", str(deb.relative_to(REPO))],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if not deb.is_file():
        raise HostError(f"{deb} is missing: run `make deb` (`make test` does)")
    if proc.returncode != 0:
        raise HostError(f"{deb} is older than its sources: run `make deb` (`make test` does)")
    return deb


def root_tarball() -> Path:
    """The cached bookworm root; built (about two minutes) when it is not cached."""
    proc = subprocess.run(
        ["bash", str(ROOTFS_SH)], capture_output=True, text=True, timeout=1200, cwd=REPO
    )
    if proc.returncode != 0:
        raise HostError(f"deploy/deb/rootfs.sh failed:\n{proc.stderr}")
    return Path(proc.stdout.strip().splitlines()[-1])


@dataclass
class Completed:
    command: str
    returncode: int
    stdout: str
    stderr: str


def _terminate_with_parent() -> None:
    """In the child before exec: SIGTERM when the test run dies without its teardown
    (killed), so that nspawn.sh still powers the container off."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


class Host:
    """One booted container; ``run()`` executes commands in it as root."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.root = workdir / "root"
        self.console_log = workdir / "console.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.pid1: int | None = None

    # -- life cycle ---------------------------------------------------------------

    def unpack(self, tarball: Path) -> None:
        self.root.mkdir(parents=True)
        proc = subprocess.run(
            f"zstd -dc {shlex.quote(str(tarball))} | tar --numeric-owner -x -C "
            f"{shlex.quote(str(self.root))}",
            shell=True,
            capture_output=True,
            text=True,
            timeout=300,
        )
        if proc.returncode != 0:
            raise HostError(f"unpacking {tarball} failed:\n{proc.stderr}")

    def boot(self, timeout: float = BOOT_TIMEOUT) -> None:
        with open(self.console_log, "wb") as log:
            self.proc = subprocess.Popen(
                ["bash", str(NSPAWN_SH), "-D", str(self.root), "-b", "--console=read-only"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_terminate_with_parent,
            )
        self.pid1 = poll(self._find_pid1, timeout, "the container's systemd (PID 1)")
        # Once systemd answers on its socket, --wait returns when start-up has finished.
        poll(
            lambda: self.run(["systemctl", "is-system-running"], check=False).stdout.strip(),
            timeout,
            "systemd in the container to answer",
        )
        state = self.run(["systemctl", "is-system-running", "--wait"], check=False, timeout=timeout)
        if state.stdout.strip() != "running":
            failed = self.run(["systemctl", "--failed", "--no-legend"], check=False).stdout
            raise HostError(
                f"the host booted to {state.stdout.strip()!r}; failed units:\n{failed}\n"
                f"console:\n{self.console_tail()}"
            )

    def _find_pid1(self) -> int | None:
        """The wrapper runs nspawn, whose child is the container's PID 1."""
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise HostError(f"systemd-nspawn exited at boot:\n{self.console_tail()}")
        for nspawn in _children(self.proc.pid):
            for child in _children(nspawn):
                if _comm(child) == "systemd":
                    return child
        return None

    def shutdown(self, timeout: float = SHUTDOWN_TIMEOUT) -> None:
        """Power the container off (SIGKILL if it hangs) and delete its root."""
        try:
            if self.proc is not None and self.proc.poll() is None:
                # nspawn.sh passes SIGTERM to nspawn, which asks systemd to power off.
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    if self.pid1 is not None:
                        # Killing PID 1 of a PID namespace kills everything in it.
                        try:
                            os.kill(self.pid1, signal.SIGKILL)
                        except ProcessLookupError:
                            pass
                    try:
                        self.proc.wait(30)
                    except subprocess.TimeoutExpired:
                        os.killpg(self.proc.pid, signal.SIGKILL)
                        self.proc.wait(10)
        finally:
            if self.root.exists():
                subprocess.run(
                    ["rm", "-rf", "--one-file-system", str(self.root)], check=False, timeout=300
                )

    def console_tail(self, lines: int = 40) -> str:
        try:
            text = self.console_log.read_text(errors="replace")
        except OSError:
            return "(no console log)"
        return "\n".join(text.splitlines()[-lines:])

    # -- commands -----------------------------------------------------------------

    def run(
        self,
        command: str | Sequence[str],
        *,
        check: bool = True,
        timeout: float = 120.0,
        input: str | None = None,
        env: dict[str, str] | None = None,
        cwd: str = "/root",
    ) -> Completed:
        """Run ``command`` as root in the host: a string goes to ``bash -euo pipefail -c``."""
        assert self.pid1 is not None, "the host is not booted"
        argv = (
            ["bash", "-euo", "pipefail", "-c", command]
            if isinstance(command, str)
            else list(command)
        )
        shown = command if isinstance(command, str) else shlex.join(command)
        environ = {**INNER_ENV, **(env or {})}
        full = [
            "nsenter",
            "-t",
            str(self.pid1),
            "-a",
            "env",
            "-i",
            f"--chdir={cwd}",
            *[f"{k}={v}" for k, v in environ.items()],
            *argv,
        ]
        try:
            proc = subprocess.run(
                full, capture_output=True, text=True, timeout=timeout, input=input
            )
        except subprocess.TimeoutExpired as exc:
            raise HostError(f"`{shown}` did not finish within {timeout:.0f}s") from exc
        done = Completed(shown, proc.returncode, proc.stdout, proc.stderr)
        if check and proc.returncode != 0:
            raise HostError(
                f"`{shown}` exited with {proc.returncode}\n"
                f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
            )
        return done

    def write(self, path: str, text: str, mode: int = 0o644) -> None:
        self.run(
            f"install -D -m {mode:o} /dev/stdin {shlex.quote(path)}",
            input=text,
        )

    def read(self, path: str) -> str:
        return self.run(["cat", path]).stdout

    def copy_in(self, source: Path, directory: str) -> str:
        """Copy a file from the test machine into ``directory`` (not a tmpfs like /tmp)."""
        target = self.root / directory.lstrip("/")
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target / source.name)
        return f"{directory.rstrip('/')}/{source.name}"

    # -- systemd --------------------------------------------------------------------

    def systemctl(self, *args: str, check: bool = True, timeout: float = 180.0) -> Completed:
        try:
            return self.run(["systemctl", *args], check=check, timeout=timeout)
        except HostError as exc:
            journal = self.run(["journalctl", "-n", "60", "--no-pager"], check=False).stdout
            raise HostError(f"{exc}\n--- the journal's last lines\n{journal}") from None

    def show(self, unit: str, *props: str) -> dict[str, str]:
        args = ["show", unit]
        for prop in props:
            args += ["-p", prop]
        out = self.systemctl(*args).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def prop(self, unit: str, name: str) -> str:
        return self.show(unit, name).get(name, "")

    def main_pid(self, unit: str) -> int:
        return int(self.prop(unit, "MainPID") or 0)

    def wait_state(
        self, unit: str, want: str, timeout: float = 120.0, prop: str = "ActiveState"
    ) -> dict[str, str]:
        """Poll until ``prop`` of ``unit`` is ``want``; returns the unit's state then."""
        keys = ("ActiveState", "SubState", "Result", "MainPID", "NRestarts", "StatusText", prop)
        last: dict[str, str] = {}

        def check() -> dict[str, str] | None:
            nonlocal last
            last = self.show(unit, *keys)
            return last if last.get(prop) == want else None

        try:
            return poll(check, timeout, f"{unit} {prop}={want}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; last: {last}\n{self.journal_text(unit)}") from None

    def cursor(self) -> str:
        """A journal position: ``journal(after=...)`` returns what came after it."""
        out = self.run(["journalctl", "-n", "1", "-o", "json", "--no-pager"]).stdout
        return str(json.loads(out.strip().splitlines()[-1])["__CURSOR"])

    def journal(self, unit: str | None = None, after: str | None = None) -> list[dict[str, Any]]:
        """Journal entries (``journalctl -o json``), of ``unit`` if given (its own
        output and systemd's messages about it)."""
        args = ["journalctl", "-o", "json", "--no-pager"]
        if unit is not None:
            args += ["-u", unit]
        if after is not None:
            args.append(f"--after-cursor={after}")
        out = self.run(args).stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def journal_text(self, unit: str, lines: int = 40) -> str:
        out = self.run(
            ["journalctl", "-u", unit, "-n", str(lines), "--no-pager", "-o", "short-monotonic"],
            check=False,
        )
        return out.stdout
