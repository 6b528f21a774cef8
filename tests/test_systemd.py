"""The systemd units and the sd_notify protocol.

- ``systemd-analyze verify`` accepts the units (on a copy whose ExecStart is this
  venv's ``pushsvc``: verify checks that the executable exists);
- ``systemd-analyze security --offline=true`` rates the service at exposure <= 2.0;
- the unit carries the settings the operations guide relies on, and the example
  environment files are valid settings;
- a real node talks to a notification socket the test owns: READY=1 once it accepts
  connections, WATCHDOG=1 every WATCHDOG_USEC/2, STATUS= with the connection count,
  STOPPING=1 on SIGTERM, RELOADING=1 and READY=1 on SIGHUP, before ``pushsvc reload``
  (the unit's ExecReload=) returns;
- the node runs with writable+executable memory refused by the kernel (what
  ``MemoryDenyWriteExecute=yes`` enforces).
"""

from __future__ import annotations

import ctypes
import itertools
import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pushsvc.config import Settings, check_secure, load_settings
from pushsvc.systemd import Notifier, watchdog_interval
from pushsvc_client.v1 import push_pb2
from tests.nodeproc import NodeProcess, auth
from tests.pki import Pki
from tests.rawws import RawWS
from tests.test_tls import replace_files, served_fingerprint
from tests.wsclient import token

REPO = Path(__file__).resolve().parent.parent
UNITS = REPO / "systemd"
SERVICE = UNITS / "pushsvc@.service"
TARGET = UNITS / "pushsvc.target"
ENV_DIR = REPO / "deploy" / "env"
MAX_EXPOSURE = 2.0


def systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        pytest.fail("systemd-analyze is not installed: run `make tools`", pytrace=False)
    return path


def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """Sections → key → every value (systemd keys may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def seconds(value: str) -> float:
    units = {"ms": 0.001, "s": 1, "sec": 1, "min": 60, "m": 60, "h": 3600}
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value):
        total += float(number) * units[unit or "s"]
    return total


def read_env_file(path: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            env[key.strip()] = value.strip().strip('"')
    return env


def spawn(node: NodeProcess, **popen: Any) -> subprocess.Popen[bytes]:
    """``pushsvc serve`` with the node's settings, without waiting for anything."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PUSHSVC_")}
    env.update(node.env)
    with open(node.log_path, "wb") as log:
        node.proc = subprocess.Popen(
            [sys.executable, "-m", "pushsvc", "serve"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            **popen,
        )
    return node.proc


def venv_pushsvc() -> Path:
    exe = Path(sys.executable).parent / "pushsvc"
    assert exe.is_file() and os.access(exe, os.X_OK), exe
    return exe


# -- the unit files ------------------------------------------------------------------


def test_units_verify(tmp_path: Path) -> None:
    unit = SERVICE.read_text()
    assert re.search(r"^ExecStart=/opt/pushsvc/venv/bin/pushsvc serve$", unit, re.M)
    rendered = unit.replace("/opt/pushsvc/venv/bin/pushsvc", str(venv_pushsvc()))
    (tmp_path / SERVICE.name).write_text(rendered)
    shutil.copy(TARGET, tmp_path / TARGET.name)
    # An instance and the target; User=pushsvc need not exist for verify.
    proc = subprocess.run(
        [
            systemd_analyze(),
            "verify",
            "--man=false",
            str(tmp_path / "pushsvc@1.service"),
            str(tmp_path / "pushsvc.target"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    # Warnings (unknown keys, bad values) do not change the exit code: none is allowed.
    ours = [line for line in output.splitlines() if "pushsvc" in line or str(tmp_path) in line]
    assert not ours, output


def test_verify_catches_mistakes(tmp_path: Path) -> None:
    """The check above would see a broken unit: a missing executable fails verify."""
    (tmp_path / SERVICE.name).write_text(
        SERVICE.read_text().replace("/opt/pushsvc/venv/bin/pushsvc", "/nonexistent/pushsvc")
    )
    shutil.copy(TARGET, tmp_path / TARGET.name)
    proc = subprocess.run(
        [systemd_analyze(), "verify", "--man=false", str(tmp_path / "pushsvc@1.service")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert proc.returncode != 0
    assert "/nonexistent/pushsvc" in proc.stdout + proc.stderr


def exposure(unit: Path) -> float:
    proc = subprocess.run(
        [systemd_analyze(), "security", "--offline=true", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=unit.parent,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", proc.stdout)
    assert match, proc.stdout + proc.stderr
    return float(match.group(1))


def test_security_exposure(tmp_path: Path) -> None:
    level = exposure(SERVICE)
    assert level <= MAX_EXPOSURE, f"exposure {level} > {MAX_EXPOSURE}"
    # The parser is not fooled: the same unit without its sandbox rates far worse.
    bare = "\n".join(
        line
        for line in SERVICE.read_text().splitlines()
        if line.startswith(("[", "Description", "Type", "ExecStart", "User"))
    )
    (tmp_path / "bare@.service").write_text(bare + "\n")
    assert exposure(tmp_path / "bare@.service") > 5.0


def test_unit_settings() -> None:
    unit = parse_unit(SERVICE)
    svc = unit["Service"]

    def one(key: str) -> str:
        assert key in svc, f"{key}= missing"
        return svc[key][-1]

    assert one("Type") == "notify"
    assert one("NotifyAccess") == "main"
    assert one("Restart") == "on-failure"
    assert one("KillSignal") == "SIGTERM"
    assert one("User") == "pushsvc"
    assert one("StateDirectory") == "pushsvc/%i"
    assert int(one("LimitNOFILE")) >= 65536
    assert svc["EnvironmentFile"] == ["/etc/pushsvc/pushsvc.env", "/etc/pushsvc/%i.env"]
    assert 1 <= seconds(one("WatchdogSec")) <= 120
    for key in (
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "PrivateDevices=yes",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
        "SystemCallFilter=@system-service",
        "MemoryDenyWriteExecute=yes",
    ):
        name, _, value = key.partition("=")
        assert value in svc.get(name, []), f"{key} missing"
    # systemd must not SIGKILL a node that is still draining.
    stop = seconds(one("TimeoutStopSec"))
    assert stop > Settings().drain_timeout + 5
    drain = read_env_file(ENV_DIR / "pushsvc.env.example").get("PUSHSVC_DRAIN_TIMEOUT")
    if drain is not None:
        assert stop > float(drain) + 5
    # `systemctl reload`: SIGHUP through `pushsvc reload`, which waits for the node's
    # answer (tests/host/ runs it under systemd 252); the target passes it on.
    assert one("ExecReload") == "/opt/pushsvc/venv/bin/pushsvc reload --pid $MAINPID"
    assert unit["Unit"]["ReloadPropagatedFrom"] == ["pushsvc.target"]
    assert unit["Install"]["WantedBy"] == ["pushsvc.target"]
    assert "pushsvc.target" in unit["Unit"]["PartOf"]
    assert parse_unit(TARGET)["Install"]["WantedBy"] == ["multi-user.target"]


def commented_settings(path: Path) -> dict[str, str]:
    """The ``#PUSHSVC_NAME=value`` lines an operator uncomments."""
    env: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line.startswith("#PUSHSVC_") and "=" in line:
            key, _, value = line[1:].partition("=")
            env[key.strip()] = value.strip()
    return env


def test_env_examples_are_valid_settings() -> None:
    """The files the package ships as /etc/pushsvc/pushsvc.env and 1.env run one node
    on the embedded store as they are, and a fleet member with the fleet lines set."""
    common = read_env_file(ENV_DIR / "pushsvc.env.example")
    instance = read_env_file(ENV_DIR / "1.env.example")
    for key in ("PUSHSVC_GRPC_ADDR", "PUSHSVC_ADMIN_ADDR", "PUSHSVC_DATA_DIR"):
        assert key in instance, key
    assert instance["PUSHSVC_DATA_DIR"] == "/var/lib/pushsvc/1"  # the unit's StateDirectory=
    settings = load_settings(environ={**common, **instance})
    check_secure(settings)
    assert settings.embedded
    assert settings.log_format == "json"

    fleet = {
        k: v or "x" * 32 for k, v in commented_settings(ENV_DIR / "pushsvc.env.example").items()
    }
    fleet_instance = commented_settings(ENV_DIR / "1.env.example")
    settings = load_settings(environ={**common, **fleet, **instance, **fleet_instance})
    check_secure(settings)
    assert not settings.embedded
    assert settings.cluster_key and settings.api_keys and settings.jwt_secret
    assert not settings.grpc_addr.is_loopback and settings.advertise_addr


# -- sd_notify ------------------------------------------------------------------------


class NotifySocket:
    """The receiving end of $NOTIFY_SOCKET, as systemd holds it."""

    def __init__(self, path: Path | None = None) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if path is None:
            name = f"pushsvc-test-{uuid.uuid4().hex}"
            self.sock.bind("\0" + name)
            self.address = "@" + name
        else:
            self.sock.bind(str(path))
            self.address = str(path)
        self.received: list[tuple[float, dict[str, str]]] = []

    def recv(self, timeout: float) -> dict[str, str]:
        self.sock.settimeout(timeout)
        data = self.sock.recv(65536)
        fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
        self.received.append((time.monotonic(), fields))
        return fields

    def wait_for(self, key: str, value: str | None = None, timeout: float = 20.0) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {key}={value or '*'} within {timeout}s: {self.received}")
            fields = self.recv(remaining)
            if key in fields and (value is None or value in fields[key]):
                return fields

    def pending(self) -> list[dict[str, str]]:
        """What was sent and not received yet, without waiting (a datagram is in the
        socket's queue once its sender's sendto() has returned)."""
        out: list[dict[str, str]] = []
        self.sock.setblocking(False)
        try:
            while True:
                try:
                    data = self.sock.recv(65536)
                except BlockingIOError:
                    return out
                out.append(
                    dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
                )
                self.received.append((time.monotonic(), out[-1]))
        finally:
            self.sock.setblocking(True)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify_socket() -> Iterator[NotifySocket]:
    sock = NotifySocket()
    yield sock
    sock.close()


def test_notifier_without_socket() -> None:
    n = Notifier({})
    assert not n.enabled
    assert not n.ready("x") and not n.watchdog() and not n.stopping()
    assert watchdog_interval({"WATCHDOG_USEC": "3000000"}) == 1.5
    assert watchdog_interval({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "x"}) is None


def test_notifier_path_socket(tmp_path: Path) -> None:
    receiver = NotifySocket(tmp_path / "notify")
    try:
        n = Notifier({"NOTIFY_SOCKET": receiver.address})
        assert n.ready("up\nand running")
        assert receiver.recv(5) == {"READY": "1", "STATUS": "up and running"}
        n.close()
    finally:
        receiver.close()


def test_node_notifies_systemd(tmp_path: Path, notify_socket: NotifySocket) -> None:
    watchdog_usec = 200_000  # WATCHDOG=1 expected every 0.1 s
    node = NodeProcess(
        tmp_path / "node",
        {"PUSHSVC_HEARTBEAT_INTERVAL": "0.2", "PUSHSVC_LOG_LEVEL": "info"},
    )
    node.env.update(NOTIFY_SOCKET=notify_socket.address, WATCHDOG_USEC=str(watchdog_usec))
    spawn(node)
    try:
        ready = notify_socket.wait_for("READY", "1", timeout=20)
        assert "0 connections" in ready["STATUS"], ready
        ready_at = notify_socket.received[-1][0]
        # READY=1 means the WebSocket listener takes connections: connect right away.
        with RawWS.connect(
            "127.0.0.1", node.ws_port, f"/ws?token={token('alice')}", timeout=5
        ) as ws:
            welcome = ws.recv_json()
            assert welcome["type"] == "welcome" and welcome["node"] == node.node_id
            # STATUS= follows the heartbeat with the connection count.
            status = notify_socket.wait_for("STATUS", "1 connections", timeout=10)
            assert "ready" in status["STATUS"], status
            # WATCHDOG=1 at WATCHDOG_USEC/2: count them over a stretch of time.
            start = time.monotonic()
            while time.monotonic() - start < 1.0:
                notify_socket.recv(2)
            beats = [
                t for t, f in notify_socket.received if f.get("WATCHDOG") == "1" and t >= start
            ]
            assert len(beats) >= 6, beats  # 10 expected in 1 s
            gaps = [b - a for a, b in itertools.pairwise(beats)]
            mean = sum(gaps) / len(gaps)
            assert 0.06 <= mean <= 0.15, gaps
            assert max(gaps) < watchdog_usec / 1e6, gaps  # systemd's limit never reached
            assert any(t <= ready_at for t, f in notify_socket.received if "WATCHDOG" in f)
            # SIGTERM: STOPPING=1, the client is told 1012, the process exits 0.
            assert node.proc is not None
            node.proc.send_signal(signal.SIGTERM)
            stopping = notify_socket.wait_for("STOPPING", "1", timeout=5)
            assert "draining" in stopping["STATUS"]
            close = ws.recv_close(timeout=5)
            assert close is not None and close.close_code == 1012
        assert node.stop(timeout=15) == 0
        stopped = notify_socket.wait_for("STATUS", "stopped", timeout=5)
        assert "1 connections handed over" in stopped["STATUS"]
    finally:
        if node.proc is not None and node.proc.poll() is None:
            node.kill()


def test_ready_waits_for_registration(tmp_path: Path, notify_socket: NotifySocket) -> None:
    """With the store unreachable at start, the node listens but says READY=1 only
    once it has registered, and the registration is complete (its gRPC address)."""
    from tests.ferretdb import FerretDB

    db = FerretDB()
    node = NodeProcess(
        tmp_path / "node",
        {
            "PUSHSVC_MONGO_URI": db.uri,
            "PUSHSVC_MONGO_DB": f"notify_{uuid.uuid4().hex[:8]}",
            "PUSHSVC_CLUSTER_KEY": "k",
            "PUSHSVC_HEARTBEAT_INTERVAL": "0.2",
            "PUSHSVC_LOG_LEVEL": "info",
        },
    )
    node.env.update(NOTIFY_SOCKET=notify_socket.address)
    try:
        spawn(node)
        status = notify_socket.wait_for("STATUS", "starting", timeout=20)
        assert "READY" not in status
        assert not any("READY" in f for _, f in notify_socket.received)
        db.start()
        notify_socket.wait_for("READY", "1", timeout=20)
        with node.stub() as stub:
            nodes = stub.ListNodes(push_pb2.ListNodesRequest(), metadata=auth(), timeout=10)
        assert [n.grpc_addr for n in nodes.nodes] == [node.grpc_addr]
        assert node.stop(timeout=15) == 0
    finally:
        if node.proc is not None and node.proc.poll() is None:
            node.kill()
        db.cleanup()


def reload_notifications(sent: list[dict[str, str]]) -> list[str]:
    """RELOADING=1 and READY=1 among notifications, in order (heartbeats left out)."""
    out = []
    for fields in sent:
        if fields.get("RELOADING") == "1":
            assert int(fields["MONOTONIC_USEC"]) > 0, fields  # what systemd >= 253 requires
            out.append("RELOADING=1")
        elif fields.get("READY") == "1":
            out.append("READY=1")
    return out


def test_pushsvc_reload_returns_once_the_node_has_reloaded(
    tmp_path: Path, notify_socket: NotifySocket, pki: Pki
) -> None:
    """``pushsvc reload --pid`` (the unit's ExecReload=) sends SIGHUP and returns once
    the node has reloaded: by then the node has told systemd RELOADING=1 and READY=1
    (so systemd 252 ends the reload job with the reload) and new handshakes get the
    new certificate. Files that fail a check: exit status 1, the old certificate stays."""
    first, second, third = (pki.issue(f"reload-{n}") for n in (1, 2, 3))
    cert, key = tmp_path / "live.pem", tmp_path / "live.key"
    replace_files(first, cert, key)
    node = NodeProcess(
        tmp_path / "node",
        {
            "PUSHSVC_TLS_CERT": str(cert),
            "PUSHSVC_TLS_KEY": str(key),
            "PUSHSVC_TLS_CA": str(pki.ca),
            "PUSHSVC_LOG_LEVEL": "info",
        },
    )
    node.env.update(NOTIFY_SOCKET=notify_socket.address)
    proc = spawn(node)

    def reload(pid: int = proc.pid) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [venv_pushsvc(), "reload", "--pid", str(pid), "--data-dir", str(node.data_dir)],
            capture_output=True,
            text=True,
            timeout=120,
        )

    try:
        notify_socket.wait_for("READY", "1", timeout=20)
        assert served_fingerprint(node.ws_port, pki.ca) == first.fingerprint
        notify_socket.pending()

        replace_files(second, cert, key)
        done = reload()
        assert (done.returncode, done.stdout, done.stderr) == (0, "", ""), done
        # All of it happened before `pushsvc reload` returned: nothing is waited for.
        assert reload_notifications(notify_socket.pending()) == ["RELOADING=1", "READY=1"]
        reloaded = [line for line in node.log().splitlines() if "TLS certificate reloaded" in line]
        assert len(reloaded) == 1 and f"sha256={second.fingerprint}" in reloaded[0], reloaded
        for port in (node.ws_port, node.grpc_port):
            assert served_fingerprint(port, pki.ca) == second.fingerprint

        replace_files(third, cert, key, key_of=first)  # a key of another certificate
        done = reload()
        assert done.returncode == 1, done
        assert done.stderr.startswith(f"pushsvc: error: node {proc.pid} kept its current TLS")
        assert reload_notifications(notify_socket.pending()) == ["RELOADING=1", "READY=1"]
        assert "TLS certificate not reloaded, the current one stays" in node.log()
        assert served_fingerprint(node.ws_port, pki.ca) == second.fingerprint
        # The answer is the node's own file, like the rest of its data directory.
        status = node.data_dir / "reload-status"
        assert stat.S_IMODE(status.stat().st_mode) == 0o600
        assert json.loads(status.read_text()) == {"pid": proc.pid, "reload": 2, "ok": False}

        assert node.stop(timeout=15) == 0
        gone = reload()
        assert gone.returncode == 1 and f"cannot reload {proc.pid}" in gone.stderr, gone
    finally:
        if proc.poll() is None:
            node.kill()

    # A process that never answers (not a node): status 1 at the deadline, not a hang.
    silent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import signal, sys; signal.signal(signal.SIGHUP, signal.SIG_IGN); "
            "print('ignoring', flush=True); sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert silent.stdout is not None and silent.stdout.readline() == "ignoring\n"
        done = subprocess.run(
            [venv_pushsvc(), "reload", "--pid", str(silent.pid), "--timeout", "0.5"],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=tmp_path,
        )
        assert done.returncode == 1 and "did not answer the reload within 0.5 s" in done.stderr
        assert silent.poll() is None
    finally:
        silent.kill()
        silent.communicate(timeout=10)


# -- MemoryDenyWriteExecute -----------------------------------------------------------

PR_SET_MDWE = 65
PR_MDWE_REFUSE_EXEC_GAIN = 1


def _deny_write_execute() -> None:
    """Run in the child before exec: the kernel's MDWE, inherited across execve."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_MDWE)")


def _mdwe_supported() -> bool:
    probe = subprocess.run(
        [sys.executable, "-c", "pass"], preexec_fn=_deny_write_execute, capture_output=True
    )
    return probe.returncode == 0


def test_runs_without_writable_executable_memory(tmp_path: Path) -> None:
    """gevent, grpc and the rest need no W+X memory: a whole session works with the
    kernel refusing it (prctl PR_SET_MDWE, Linux >= 6.3; systemd's seccomp version
    of MemoryDenyWriteExecute= refuses the same mmap/mprotect calls)."""
    assert _mdwe_supported(), (
        "this kernel has no prctl(PR_SET_MDWE) (Linux >= 6.3): the check that the node "
        "runs under MemoryDenyWriteExecute= cannot be made here"
    )
    # The control: under MDWE, a W+X mapping is refused.
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import mmap; mmap.mmap(-1, 4096, prot=mmap.PROT_READ|mmap.PROT_WRITE|mmap.PROT_EXEC)",
        ],
        preexec_fn=_deny_write_execute,
        capture_output=True,
        text=True,
    )
    assert probe.returncode != 0 and "PermissionError" in probe.stderr, probe.stderr

    node = NodeProcess(tmp_path / "node", {"PUSHSVC_LOG_LEVEL": "info"})
    proc = spawn(node, preexec_fn=_deny_write_execute)
    try:
        node.wait_ready(20)
        with RawWS.connect("127.0.0.1", node.ws_port, f"/ws?token={token('bob')}") as ws:
            assert ws.recv_json()["type"] == "welcome"
            with node.stub() as stub:
                resp = stub.Push(
                    push_pb2.PushRequest(user_ids=["bob"], payload=b'{"under":"mdwe"}'),
                    metadata=auth(),
                    timeout=10,
                )
            msg = ws.recv_json()
            assert msg["type"] == "message" and msg["seq"] == resp.seqs[0]
            assert json.dumps(msg["data"]) == '{"under": "mdwe"}'
        assert node.stop(timeout=15) == 0
    finally:
        if proc.poll() is None:
            node.kill()
    assert "Traceback" not in node.log(), node.log()
