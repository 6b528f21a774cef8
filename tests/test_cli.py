"""The ``pushsvc`` command line, run as a real subprocess. No node needed.

Client commands are checked against a closed port and against a fake PushService
served in this process (to see the request, the metadata and the output lines).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest

from pushsvc.v1 import push_pb2, push_pb2_grpc

SECRET = "test-secret-0123456789-0123456789-abcdef"


def run_cli(
    *args: str,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    stdin: str | None = None,
    timeout: float = 30,
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m pushsvc`` with no PUSHSVC_* variables but those in ``env``."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("PUSHSVC_")}
    full.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "pushsvc", *args],
        env=full,
        cwd=cwd,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_one_line_error(proc: subprocess.CompletedProcess[str], code: int) -> str:
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


# -- configuration errors of `serve` --------------------------------------------------


def test_serve_unknown_setting_in_toml(tmp_path: Path) -> None:
    cfg = tmp_path / "pushsvc.toml"
    cfg.write_text('ws_addr = "127.0.0.1:0"\nbogus_setting = 1\n')
    line = assert_one_line_error(run_cli("serve", "--config", str(cfg), cwd=tmp_path), 2)
    assert line.startswith("pushsvc: error: ")
    assert "bogus_setting" in line


def test_serve_invalid_toml(tmp_path: Path) -> None:
    cfg = tmp_path / "pushsvc.toml"
    cfg.write_text("ws_addr = \n")
    line = assert_one_line_error(run_cli("serve", "--config", str(cfg), cwd=tmp_path), 2)
    assert "not valid TOML" in line


def test_serve_unknown_env_var(tmp_path: Path) -> None:
    proc = run_cli("serve", env={"PUSHSVC_NO_SUCH_THING": "1"}, cwd=tmp_path)
    line = assert_one_line_error(proc, 2)
    assert line.startswith("pushsvc: error: ")
    assert "PUSHSVC_NO_SUCH_THING" in line


def test_serve_malformed_address(tmp_path: Path) -> None:
    proc = run_cli("serve", env={"PUSHSVC_WS_ADDR": "nope"}, cwd=tmp_path)
    line = assert_one_line_error(proc, 2)
    assert "PUSHSVC_WS_ADDR" in line
    assert "host:port" in line


def test_serve_bad_number(tmp_path: Path) -> None:
    proc = run_cli("serve", env={"PUSHSVC_PING_INTERVAL": "often"}, cwd=tmp_path)
    line = assert_one_line_error(proc, 2)
    assert "PUSHSVC_PING_INTERVAL" in line
    assert "not a number" in line


@pytest.mark.parametrize("which", ["missing", "directory"])
def test_serve_unreadable_config_file(tmp_path: Path, which: str) -> None:
    path = tmp_path / "absent.toml" if which == "missing" else tmp_path
    line = assert_one_line_error(run_cli("serve", "--config", str(path), cwd=tmp_path), 2)
    assert "cannot read config file" in line
    assert str(path) in line


def test_serve_help_settings(tmp_path: Path) -> None:
    proc = run_cli("serve", "--help-settings", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "PUSHSVC_GRPC_ADDR" in proc.stdout
    assert "127.0.0.1:50051" in proc.stdout


def test_bad_arguments_give_usage_and_exit_2(tmp_path: Path) -> None:
    for args in (
        ("frobnicate",),
        (),
        ("push", "--user", "alice"),  # no --data
        ("token",),  # no --user
        ("token", "--user", "alice", "--ttl", "soon"),
        ("push", "--user", "alice", "--data", "{}", "--ttl", "-1"),
    ):
        proc = run_cli(*args, cwd=tmp_path)
        assert proc.returncode == 2, (args, proc.stderr)
        assert "usage: pushsvc" in proc.stderr
        assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    "command",
    ["serve", "token", "push", "publish", "presence", "nodes", "status", "disconnect"],
)
def test_help_of_each_subcommand(tmp_path: Path, command: str) -> None:
    proc = run_cli(command, "--help", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"usage: pushsvc {command}")


def test_top_level_help_and_version(tmp_path: Path) -> None:
    proc = run_cli("--help", cwd=tmp_path)
    assert proc.returncode == 0
    for command in ("serve", "token", "push", "publish", "presence", "nodes", "status"):
        assert command in proc.stdout
    proc = run_cli("--version", cwd=tmp_path)
    assert proc.returncode == 0
    assert proc.stdout.startswith("pushsvc ")


# -- token ------------------------------------------------------------------------------


def decode(token: str, secret: str = SECRET) -> dict[str, Any]:
    claims: dict[str, Any] = jwt.decode(
        token, secret, algorithms=["HS256"], options={"require": ["sub", "exp"]}
    )
    return claims


def test_token_from_env_secret(tmp_path: Path) -> None:
    before = int(time.time())
    proc = run_cli(
        "token",
        "--user",
        "alice",
        "--ttl",
        "600",
        "--topic",
        "news*",
        "--topic",
        "chat.*",
        env={"PUSHSVC_JWT_SECRET": SECRET},
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    claims = decode(proc.stdout.strip())
    assert claims["sub"] == "alice"
    assert claims["topics"] == ["news*", "chat.*"]
    assert before + 600 <= claims["exp"] <= int(time.time()) + 600


def test_token_ignores_unrelated_env(tmp_path: Path) -> None:
    env = {"PUSHSVC_JWT_SECRET": SECRET, "PUSHSVC_WS_ADDR": "nope", "PUSHSVC_WHATEVER": "x"}
    proc = run_cli("token", "--user", "bob", env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    claims = decode(proc.stdout.strip())
    assert claims["sub"] == "bob"
    assert "topics" not in claims
    assert 3500 < claims["exp"] - time.time() <= 3600


def test_token_from_generated_secret_file(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "jwt-secret").write_text(SECRET + "\n")
    proc = run_cli("token", "--user", "carol", env={"PUSHSVC_DATA_DIR": str(data_dir)})
    assert proc.returncode == 0, proc.stderr
    assert decode(proc.stdout.strip())["sub"] == "carol"
    # ...and the default data dir, ./pushsvc-data, relative to the working directory
    (tmp_path / "pushsvc-data").mkdir()
    (tmp_path / "pushsvc-data" / "jwt-secret").write_text(SECRET)
    proc = run_cli("token", "--user", "dave", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["sub"] == "dave"
    assert decode(out["token"])["sub"] == "dave"


def test_token_from_config_file(tmp_path: Path) -> None:
    cfg = tmp_path / "node.toml"
    cfg.write_text(f'jwt_secret = "{SECRET}"\n')
    proc = run_cli("token", "--user", "erin", "--config", str(cfg), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert decode(proc.stdout.strip())["sub"] == "erin"


def test_token_without_secret_fails(tmp_path: Path) -> None:
    line = assert_one_line_error(run_cli("token", "--user", "alice", cwd=tmp_path), 2)
    assert line == (
        "pushsvc: error: no JWT secret: start the node once (it generates one in DATA_DIR) "
        "or set PUSHSVC_JWT_SECRET"
    )
    # the token command never creates the secret itself
    assert not (tmp_path / "pushsvc-data").exists()


def test_token_with_mongo_needs_explicit_secret(tmp_path: Path) -> None:
    (tmp_path / "pushsvc-data").mkdir()
    (tmp_path / "pushsvc-data" / "jwt-secret").write_text(SECRET)
    env = {"PUSHSVC_MONGO_URI": "mongodb://db.example:27017"}
    line = assert_one_line_error(run_cli("token", "--user", "alice", env=env, cwd=tmp_path), 2)
    assert "PUSHSVC_JWT_SECRET" in line


# -- client commands without a node ------------------------------------------------------


def test_unreachable_node(tmp_path: Path) -> None:
    port = closed_port()
    addr = f"127.0.0.1:{port}"
    for args in (
        ("push", "--user", "alice", "--data", '{"hello":1}', "--addr", addr),
        ("nodes", "--addr", addr),
    ):
        proc = run_cli(*args, cwd=tmp_path)
        line = assert_one_line_error(proc, 1)
        assert addr in line
        assert "is the node running" in line
        assert "PUSHSVC_GRPC_ADDR" in line


def test_unreachable_node_from_env_ignores_unrelated_settings(tmp_path: Path) -> None:
    addr = f"127.0.0.1:{closed_port()}"
    env = {
        "PUSHSVC_GRPC_ADDR": addr,
        "PUSHSVC_WS_ADDR": "nope",
        "PUSHSVC_NOT_A_SETTING": "1",
        "PUSHSVC_PING_INTERVAL": "often",
    }
    line = assert_one_line_error(run_cli("presence", "alice", env=env, cwd=tmp_path), 1)
    assert addr in line
    assert "is the node running" in line


def test_client_bad_address_is_a_config_error(tmp_path: Path) -> None:
    proc = run_cli("nodes", env={"PUSHSVC_GRPC_ADDR": "nope"}, cwd=tmp_path)
    line = assert_one_line_error(proc, 2)
    assert line.startswith("pushsvc: error: PUSHSVC_GRPC_ADDR")


def test_unreadable_data_file(tmp_path: Path) -> None:
    proc = run_cli(
        "push",
        "--user",
        "a",
        "--data-file",
        str(tmp_path / "absent.json"),
        "--addr",
        f"127.0.0.1:{closed_port()}",
        cwd=tmp_path,
    )
    line = assert_one_line_error(proc, 2)
    assert "absent.json" in line


# -- client commands against a fake PushService -------------------------------------------


class FakePushService(push_pb2_grpc.PushServiceServicer):
    """Records requests and metadata; fails the first ``unavailable`` calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any, dict[str, str]]] = []
        self.unavailable = 0

    def _record(self, name: str, request: Any, context: grpc.ServicerContext) -> None:
        metadata = {k: str(v) for k, v in context.invocation_metadata()}
        self.calls.append((name, request, metadata))
        if self.unavailable > 0:
            self.unavailable -= 1
            context.abort(grpc.StatusCode.UNAVAILABLE, "store unreachable")
        if metadata.get("authorization") != "Bearer k1":
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "API key is not valid")

    def Push(self, request: Any, context: grpc.ServicerContext) -> push_pb2.PushResponse:
        self._record("Push", request, context)
        if not request.user_ids:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "user_ids is empty")
        if request.HasField("ttl_seconds") and request.ttl_seconds == 0:
            return push_pb2.PushResponse(message_id="m-online")
        seqs = [3 + i * 4 for i in range(len(request.user_ids))]
        return push_pb2.PushResponse(message_id="m-1", seqs=seqs)

    def Publish(self, request: Any, context: grpc.ServicerContext) -> push_pb2.PublishResponse:
        self._record("Publish", request, context)
        return push_pb2.PublishResponse(message_id="t-1", local_subscribers=2)

    def GetPresence(
        self, request: Any, context: grpc.ServicerContext
    ) -> push_pb2.GetPresenceResponse:
        self._record("GetPresence", request, context)
        return push_pb2.GetPresenceResponse(
            presence=[
                push_pb2.UserPresence(user_id="alice", online=True, connections=2, node_ids=["n1"]),
                push_pb2.UserPresence(user_id="bob"),
            ]
        )

    def ListNodes(self, request: Any, context: grpc.ServicerContext) -> push_pb2.ListNodesResponse:
        self._record("ListNodes", request, context)
        node = push_pb2.NodeStatus(
            node_id="n1",
            grpc_addr="10.0.0.1:50051",
            ws_addr="0.0.0.0:8080",
            connections=12,
            started_at=time.time() - 3700,
        )
        return push_pb2.ListNodesResponse(nodes=[node])

    def GetMessageStatus(
        self, request: Any, context: grpc.ServicerContext
    ) -> push_pb2.GetMessageStatusResponse:
        self._record("GetMessageStatus", request, context)
        if request.message_id != "m-1":
            context.abort(grpc.StatusCode.NOT_FOUND, f"no message {request.message_id}")
        return push_pb2.GetMessageStatusResponse(
            recipients=[
                push_pb2.RecipientStatus(user_id="alice", seq=3, delivered=True, acked=True),
                push_pb2.RecipientStatus(user_id="bob", seq=7),
            ]
        )

    def Disconnect(
        self, request: Any, context: grpc.ServicerContext
    ) -> push_pb2.DisconnectResponse:
        self._record("Disconnect", request, context)
        return push_pb2.DisconnectResponse(connections_closed=2)


@pytest.fixture
def fake() -> Iterator[tuple[FakePushService, str]]:
    service = FakePushService()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    push_pb2_grpc.add_PushServiceServicer_to_server(service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield service, f"127.0.0.1:{port}"
    finally:
        server.stop(None)


def test_push_output_and_metadata(fake: tuple[FakePushService, str], tmp_path: Path) -> None:
    service, addr = fake
    env = {"PUSHSVC_GRPC_ADDR": addr, "PUSHSVC_API_KEYS": "k1,k2"}
    proc = run_cli(
        "push", "--user", "alice", "--user", "bob", "--data", '{"hello":1}', env=env, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "pushed m-1: alice seq 3, bob seq 7\n"
    name, request, metadata = service.calls[-1]
    assert name == "Push"
    assert list(request.user_ids) == ["alice", "bob"]
    assert request.payload == b'{"hello":1}'
    assert request.content_type == "application/json"
    assert not request.HasField("ttl_seconds")
    assert request.idempotency_key  # generated
    assert metadata["authorization"] == "Bearer k1"

    proc = run_cli("push", "--user", "alice", "--data", "{}", "--ttl", "0", env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("online-only push m-online")
    assert service.calls[-1][1].ttl_seconds == 0


def test_push_json_output(fake: tuple[FakePushService, str], tmp_path: Path) -> None:
    _, addr = fake
    proc = run_cli(
        "push",
        "--user",
        "alice",
        "--data",
        "{}",
        "--json",
        "--addr",
        addr,
        "--api-key",
        "k1",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.splitlines()) == 1
    out = json.loads(proc.stdout)
    assert out["message_id"] == "m-1"
    assert [int(s) for s in out["seqs"]] == [3]
    assert out["duplicate"] is False


def test_api_key_from_generated_file(fake: tuple[FakePushService, str], tmp_path: Path) -> None:
    service, addr = fake
    (tmp_path / "pushsvc-data").mkdir()
    (tmp_path / "pushsvc-data" / "api-key").write_text("k1\n")
    proc = run_cli("nodes", env={"PUSHSVC_GRPC_ADDR": addr}, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("n1: grpc 10.0.0.1:50051, ws 0.0.0.0:8080, 12 connections, up 1h")
    assert service.calls[-1][2]["authorization"] == "Bearer k1"


def test_grpc_errors_are_one_line(fake: tuple[FakePushService, str], tmp_path: Path) -> None:
    _, addr = fake
    proc = run_cli("status", "nope", "--addr", addr, "--api-key", "k1", cwd=tmp_path)
    assert assert_one_line_error(proc, 1) == "pushsvc: NOT_FOUND: no message nope"
    proc = run_cli("presence", "alice", "--addr", addr, "--api-key", "wrong", cwd=tmp_path)
    line = assert_one_line_error(proc, 1)
    assert line.startswith("pushsvc: UNAUTHENTICATED: API key is not valid")
    proc = run_cli("presence", "alice", "--addr", addr, cwd=tmp_path)
    line = assert_one_line_error(proc, 1)
    assert "no API key found" in line


def test_retry_on_unavailable_reuses_idempotency_key(
    fake: tuple[FakePushService, str], tmp_path: Path
) -> None:
    service, addr = fake
    service.unavailable = 2
    proc = run_cli(
        "push",
        "--user",
        "alice",
        "--data",
        '"hi"',
        "--addr",
        addr,
        "--api-key",
        "k1",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    keys = [c[1].idempotency_key for c in service.calls if c[0] == "Push"]
    assert len(keys) == 3
    assert len(set(keys)) == 1 and keys[0]

    service.calls.clear()
    service.unavailable = 100
    proc = run_cli(
        "push",
        "--user",
        "alice",
        "--data",
        "{}",
        "--idempotency-key",
        "order-42",
        "--addr",
        addr,
        "--api-key",
        "k1",
        cwd=tmp_path,
    )
    assert assert_one_line_error(proc, 1) == "pushsvc: UNAVAILABLE: store unreachable"
    assert [c[1].idempotency_key for c in service.calls] == ["order-42"] * 4  # 1 + 3 retries


def test_other_client_commands(fake: tuple[FakePushService, str], tmp_path: Path) -> None:
    service, addr = fake
    env = {"PUSHSVC_GRPC_ADDR": addr, "PUSHSVC_API_KEYS": "k1"}
    proc = run_cli("presence", "alice", "bob", env=env, cwd=tmp_path)
    assert proc.stdout == "alice: online, 2 connections on n1\nbob: offline\n"
    proc = run_cli("status", "m-1", env=env, cwd=tmp_path)
    assert proc.stdout == "alice seq 3: acked\nbob seq 7: stored, not delivered yet\n"
    proc = run_cli("disconnect", "alice", "--reason", "banned", env=env, cwd=tmp_path)
    assert proc.stdout == "disconnected alice: 2 connections closed\n"
    assert service.calls[-1][1].reason == "banned"
    proc = run_cli(
        "publish",
        "--topic",
        "news",
        "--data-file",
        "-",
        "--content-type",
        "text/plain",
        env=env,
        cwd=tmp_path,
        stdin="breaking",
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("published t-1 to news: 2 subscriber connections")
    request = service.calls[-1][1]
    assert (request.topic, request.payload, request.content_type) == (
        "news",
        b"breaking",
        "text/plain",
    )
