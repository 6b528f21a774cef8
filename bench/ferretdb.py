"""A real MongoDB-wire server for the benchmarks and the tests: FerretDB 1.24.

``FerretDB`` runs the ``ferretdb`` binary on a free loopback port with its data
in a private temporary directory; ``command()`` can be overridden (to pin it to
a core, or to open its debug listener). Its backend is SQLite (the default) or
PostgreSQL: ``FerretDB(backend="postgresql")`` starts a private PostgreSQL
cluster (Debian's packages) beside it, which keeps running while FerretDB itself
is paused, killed or restarted — a database server behind a stateless proxy.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence

import pymongo
from pymongo.errors import PyMongoError

REPO = pathlib.Path(__file__).resolve().parent.parent
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0


class FerretDBMissing(RuntimeError):
    """No ferretdb binary was found."""


def find_binary() -> str:
    """The ferretdb executable: on PATH, in the repo's .tools/bin, or in ~/go/bin."""
    candidates = [
        shutil.which("ferretdb"),
        str(REPO / ".tools" / "bin" / "ferretdb"),
        str(pathlib.Path.home() / "go" / "bin" / "ferretdb"),
    ]
    for path in candidates:
        if path and os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    raise FerretDBMissing(
        "ferretdb is not installed (looked on PATH, in .tools/bin and ~/go/bin): "
        "run `make tools` to install FerretDB for the integration tests"
    )


def free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def find_postgres_bin() -> pathlib.Path:
    """The directory of PostgreSQL's server programs (initdb, pg_ctl)."""
    found = shutil.which("initdb") or shutil.which("pg_ctl")
    if found:
        return pathlib.Path(found).resolve().parent
    for candidate in sorted(pathlib.Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (candidate / "initdb").is_file():
            return candidate
    raise FerretDBMissing(
        "PostgreSQL is not installed (no initdb on PATH or under /usr/lib/postgresql): "
        "`apt-get install postgresql` for FerretDB's PostgreSQL backend"
    )


class Postgres:
    """A private PostgreSQL cluster on a free loopback port (trust auth, one
    database ``ferretdb``). As root, it runs as the ``postgres`` user, as
    PostgreSQL refuses to run as root."""

    def __init__(self, root: pathlib.Path, pool: int = 50) -> None:
        self.bin = find_postgres_bin()
        #: FerretDB's connections to it, at most (pgx's ``pool_max_conns``).
        self.pool = pool
        self.port = free_port()
        self.dir = root / "pg"
        self.log_path = root / "postgres.log"
        self._as: list[str] = []
        if os.geteuid() == 0:
            self._as = ["runuser", "-u", "postgres", "--"]

    @property
    def url(self) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/ferretdb?pool_max_conns={self.pool}"

    def _run(self, *argv: str) -> None:
        subprocess.run(
            [*self._as, *argv],
            check=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=120,
        )

    def start(self) -> None:
        if not self.dir.exists():
            self.dir.mkdir(mode=0o700)
            self.log_path.touch()
            if self._as:
                shutil.chown(self.dir.parent, "postgres")
                shutil.chown(self.dir, "postgres")
                shutil.chown(self.log_path, "postgres")
            self._run(
                str(self.bin / "initdb"), "-D", str(self.dir), "-U", "postgres", "-A", "trust",
                "--no-sync", "-E", "UTF8",
            )  # fmt: skip
        opts = (
            f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 "
            f"-c max_connections={self.pool + 20} -c shared_buffers=128MB"
        )
        self._run(
            str(self.bin / "pg_ctl"), "-D", str(self.dir), "-l", str(self.log_path),
            "-o", opts, "-w", "-t", "60", "start",
        )  # fmt: skip
        created = subprocess.run(
            [*self._as, "psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
             "-tAc", "SELECT 1 FROM pg_database WHERE datname = 'ferretdb'"],
            check=True, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        if created.stdout.strip() != "1":
            self._run(
                "psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
                "-c", "CREATE DATABASE ferretdb",
            )  # fmt: skip

    def stop(self) -> None:
        if (self.dir / "postmaster.pid").exists():
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                self._run(str(self.bin / "pg_ctl"), "-D", str(self.dir), "-m", "fast", "stop")


class FerretDB:
    """One ferretdb process; ``start()`` again reuses its port and data."""

    def __init__(
        self,
        binary: str | None = None,
        port: int | None = None,
        backend: str = "sqlite",
        pool: int = 50,
        args: Sequence[str] = (),
    ) -> None:
        if backend not in ("sqlite", "postgresql"):
            raise ValueError(f"backend must be sqlite or postgresql, not {backend!r}")
        self.binary = binary or find_binary()
        self.port = port or free_port()
        self.backend = backend
        self._tmp = tempfile.TemporaryDirectory(prefix="pushsvc-ferretdb-")
        self.dir = pathlib.Path(self._tmp.name)
        (self.dir / "data").mkdir()
        self.log_path = self.dir / "ferretdb.log"
        self.proc: subprocess.Popen[bytes] | None = None
        # ``pool``: FerretDB's connections to PostgreSQL (see docs/operations.md).
        self.postgres = Postgres(self.dir, pool) if backend == "postgresql" else None
        #: More command-line flags for ferretdb.
        self.args = list(args)

    @property
    def uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def command(self) -> list[str]:
        if self.postgres is not None:
            storage = ["--handler=postgresql", f"--postgresql-url={self.postgres.url}"]
        else:
            storage = ["--handler=sqlite", f"--sqlite-url=file:{self.dir / 'data'}/"]
        return [
            self.binary,
            *storage,
            f"--state-dir={self.dir}",
            f"--listen-addr=127.0.0.1:{self.port}",
            "--debug-addr=-",  # no HTTP debug listener
            "--telemetry=disable",
            "--log-level=warn",
            *self.args,
        ]

    def start(self, timeout: float = START_TIMEOUT) -> FerretDB:
        """Start the server and wait until it answers ``ping``."""
        if self.running:
            return self
        if self.postgres is not None and not (self.postgres.dir / "postmaster.pid").exists():
            self.postgres.start()
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.dir,
                start_new_session=True,
            )
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.kill()
            raise
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(
                    f"ferretdb exited with status {self.proc and self.proc.returncode} "
                    f"during start-up:\n{self.log_tail()}"
                )
            client: pymongo.MongoClient[dict[str, object]] = pymongo.MongoClient(
                self.uri, serverSelectionTimeoutMS=250, connectTimeoutMS=250
            )
            try:
                client.admin.command("ping")
                return
            except PyMongoError as exc:
                last = exc
            finally:
                client.close()
            time.sleep(0.05)
        raise RuntimeError(
            f"ferretdb did not answer ping on {self.uri} within {timeout:.0f}s ({last}):\n"
            f"{self.log_tail()}"
        )

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM, then wait (SIGKILL if it does not exit in time)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        """SIGKILL: the server dies without a chance to clean up."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def pause(self) -> None:
        """SIGSTOP: the server keeps its sockets open and answers nothing (a slow
        or hung database, not a refused connection)."""
        assert self.proc is not None and self.proc.poll() is None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def restart(self) -> FerretDB:
        self.stop()
        return self.start()

    def cleanup(self) -> None:
        """Stop the server (and its PostgreSQL) and delete its data."""
        self.stop()
        if self.postgres is not None:
            self.postgres.stop()
        self._tmp.cleanup()

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> FerretDB:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()
