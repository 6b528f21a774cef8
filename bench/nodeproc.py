"""Real `pushsvc serve` processes for the benchmarks and the tests, on ephemeral loopback ports."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc

from pushsvc_client.v1 import push_pb2_grpc

API_KEY = "test-api-key"
JWT_SECRET = "test-jwt-secret-of-sufficient-length"
CLUSTER_KEY = "test-cluster-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def closed_port() -> int:
    """A loopback port nobody listens on (bound for a moment, then released)."""
    return free_port()


class PortTaken(RuntimeError):
    """The node could not bind a port another process took meanwhile."""


class NodeProcess:
    """One node: start, wait until ready, stop or kill, restart with the same settings."""

    def __init__(self, data_dir: Path, env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.ws_port = free_port()
        self.grpc_port = free_port()
        self.admin_port = free_port()
        self.env = {
            "PUSHSVC_WS_ADDR": f"127.0.0.1:{self.ws_port}",
            "PUSHSVC_GRPC_ADDR": f"127.0.0.1:{self.grpc_port}",
            "PUSHSVC_ADMIN_ADDR": f"127.0.0.1:{self.admin_port}",
            "PUSHSVC_DATA_DIR": str(data_dir),
            "PUSHSVC_API_KEYS": API_KEY,
            "PUSHSVC_JWT_SECRET": JWT_SECRET,
            "PUSHSVC_LOG_LEVEL": "debug",
            **(env or {}),
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir.parent / f"{data_dir.name}.log"
        self._log: Any = None

    @property
    def tls(self) -> bool:
        """The node serves wss:// and gRPC over TLS (PUSHSVC_TLS_CERT is set)."""
        return bool(self.env.get("PUSHSVC_TLS_CERT"))

    @property
    def ws_url(self) -> str:
        return f"{'wss' if self.tls else 'ws'}://127.0.0.1:{self.ws_port}/ws"

    def ssl_context(self) -> ssl.SSLContext:
        """A client context trusting the CA the TLS node names in PUSHSVC_TLS_CA."""
        return ssl.create_default_context(cafile=self.env["PUSHSVC_TLS_CA"])

    def channel(self) -> grpc.Channel:
        """A gRPC channel to the node: over TLS (trusting PUSHSVC_TLS_CA) for a TLS node."""
        if not self.tls:
            return grpc.insecure_channel(self.grpc_addr)
        ca = Path(self.env["PUSHSVC_TLS_CA"]).read_bytes()
        return grpc.secure_channel(self.grpc_addr, grpc.ssl_channel_credentials(ca))

    @property
    def grpc_addr(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def node_id(self) -> str:
        return self.env.get("PUSHSVC_NODE_ID") or f"{socket.gethostname()}-{self.grpc_port}"

    def start(self, timeout: float = 20.0) -> NodeProcess:
        for attempt in range(3):
            try:
                return self._start(timeout)
            except PortTaken:
                if attempt == 2 or self.proc is None:
                    raise
                # free_port() only reserved the ports for a moment; take new ones.
                self.ws_port, self.grpc_port, self.admin_port = (
                    free_port(),
                    free_port(),
                    free_port(),
                )
                self.env.update(
                    PUSHSVC_WS_ADDR=f"127.0.0.1:{self.ws_port}",
                    PUSHSVC_GRPC_ADDR=f"127.0.0.1:{self.grpc_port}",
                    PUSHSVC_ADMIN_ADDR=f"127.0.0.1:{self.admin_port}",
                )
        raise AssertionError("unreachable")

    def _start(self, timeout: float) -> NodeProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PUSHSVC_")}
        env.update(self.env)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pushsvc", "serve"],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                self._close_log()
                log = self.log()
                lines = log.strip().splitlines()
                if lines and "cannot listen" in lines[-1]:
                    raise PortTaken(log)
                raise RuntimeError(f"node exited with {self.proc.returncode}:\n{log}")
            with contextlib.suppress(OSError, urllib.error.URLError):
                status, _ = self.admin_get("/readyz")
                if status == 200:
                    return
            time.sleep(0.05)  # polling a condition with a deadline
        raise TimeoutError(f"node not ready after {timeout}s:\n{self.log()}")

    def admin_get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.admin_port}{path}", timeout=5
            ) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode()

    def ready(self) -> dict[str, Any]:
        _, body = self.admin_get("/readyz")
        return dict(json.loads(body))

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        self._close_log()
        return code

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    @contextlib.contextmanager
    def stub(self, api_key: str | None = API_KEY) -> Iterator[push_pb2_grpc.PushServiceStub]:
        channel = self.channel()
        try:
            yield push_pb2_grpc.PushServiceStub(channel)
        finally:
            channel.close()


def auth(key: str = API_KEY) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {key}")]
