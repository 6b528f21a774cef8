"""The ``pushsvc`` command line, run as a real subprocess.

Configuration errors and ``token`` need no node; the client commands run against
real nodes (``pushsvc serve`` on ephemeral ports), and their effect is checked
with real WebSocket clients. The retry test takes a real FerretDB away.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest

from pushsvc_client import PushClient, UnavailableError
from pushsvc_client.v1 import push_pb2
from tests.ferretdb import FerretDB, ferretdb  # noqa: F401
from tests.nodeproc import API_KEY, JWT_SECRET, NodeProcess, closed_port
from tests.outage import metric, outage_node
from tests.waiting import wait_for
from tests.wsclient import Client, open_ws

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


def test_serve_unusable_data_dir(tmp_path: Path) -> None:
    # Tests run as root, where chmod blocks nothing: put the data dir under a file.
    (tmp_path / "afile").write_text("not a directory\n")
    data_dir = tmp_path / "afile" / "data"
    env = {
        "PUSHSVC_DATA_DIR": str(data_dir),
        "PUSHSVC_WS_ADDR": "127.0.0.1:0",
        "PUSHSVC_GRPC_ADDR": "127.0.0.1:0",
        "PUSHSVC_ADMIN_ADDR": "127.0.0.1:0",
    }
    line = assert_one_line_error(run_cli("serve", env=env, cwd=tmp_path), 2)
    assert line.startswith("pushsvc: error: ")
    assert str(data_dir) in line


def test_serve_wildcard_grpc_without_api_keys(tmp_path: Path) -> None:
    env = {
        "PUSHSVC_GRPC_ADDR": "0.0.0.0:0",
        "PUSHSVC_WS_ADDR": "127.0.0.1:0",
        "PUSHSVC_ADMIN_ADDR": "127.0.0.1:0",
    }
    line = assert_one_line_error(run_cli("serve", env=env, cwd=tmp_path), 2)
    assert line.startswith("pushsvc: error: ")
    assert "set PUSHSVC_API_KEYS" in line
    assert not (tmp_path / "pushsvc-data").exists()  # refused before touching anything


def test_serve_mongo_without_cluster_key(tmp_path: Path) -> None:
    env = {
        "PUSHSVC_MONGO_URI": f"mongodb://127.0.0.1:{closed_port()}",
        "PUSHSVC_JWT_SECRET": JWT_SECRET,
        "PUSHSVC_WS_ADDR": "127.0.0.1:0",
        "PUSHSVC_GRPC_ADDR": "127.0.0.1:0",
        "PUSHSVC_ADMIN_ADDR": "127.0.0.1:0",
    }
    line = assert_one_line_error(run_cli("serve", env=env, cwd=tmp_path), 2)
    assert line.startswith("pushsvc: error: ")
    assert "PUSHSVC_CLUSTER_KEY" in line


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


# -- client commands against a real node ------------------------------------------------------


def node_env(node: NodeProcess, key: str | None = API_KEY) -> dict[str, str]:
    """What a shell next to the node would export: its gRPC address and an API key."""
    env = {"PUSHSVC_GRPC_ADDR": node.grpc_addr}
    if key is not None:
        env["PUSHSVC_API_KEYS"] = key
    return env


def cli_ok(*args: str, **kwargs: Any) -> str:
    proc = run_cli(*args, **kwargs)
    assert proc.returncode == 0, (proc.returncode, proc.stdout, proc.stderr)
    assert proc.stderr == ""
    return proc.stdout


def test_push_human_output_and_delivery(
    node: NodeProcess, clients: list[Client], tmp_path: Path
) -> None:
    alice, bob = open_ws(node, "alice"), open_ws(node, "bob")
    clients += [alice, bob]
    # the first of PUSHSVC_API_KEYS is used; the second is not even a key of the node
    env = node_env(node, f"{API_KEY},not-a-key")
    out = cli_ok(
        "push", "--user", "alice", "--user", "bob", "--data", '{"hello":1}', env=env, cwd=tmp_path
    )
    match = re.fullmatch(r"pushed (\S+): alice seq 1, bob seq 1\n", out)
    assert match, out
    message_id = match[1]
    for client in (alice, bob):
        (msg,) = client.messages(1)
        assert (msg["id"], msg["seq"], msg["data"]) == (message_id, 1, {"hello": 1})
        assert msg["content_type"] == "application/json"

    out = cli_ok(
        "push", "--user", "alice", "--data", '{"n":2}', "--ttl", "0", env=env, cwd=tmp_path
    )
    match = re.fullmatch(r"online-only push (\S+): sent to live connections of alice\n", out)
    assert match, out
    (live,) = alice.messages(1)
    assert live["id"] == match[1] and live["data"] == {"n": 2} and "seq" not in live

    args = ("push", "--user", "bob", "--data", '"once"', "--idempotency-key", "order-7")
    first = re.fullmatch(r"pushed (\S+): bob seq 2\n", cli_ok(*args, env=env, cwd=tmp_path))
    assert first, "first push with the key"
    assert cli_ok(*args, env=env, cwd=tmp_path) == (
        f"duplicate of {first[1]}: idempotency key seen before, nothing sent again\n"
    )
    (msg,) = bob.messages(1)
    assert (msg["id"], msg["seq"], msg["data"]) == (first[1], 2, "once")
    assert bob.barrier() == []  # the duplicate delivered nothing
    assert alice.barrier() == []


def test_push_json_output_with_api_key_flag(
    node: NodeProcess, clients: list[Client], tmp_path: Path
) -> None:
    alice = open_ws(node, "alice")
    clients.append(alice)
    out = cli_ok(
        "push",
        "--user",
        "alice",
        "--data-file",
        "-",
        "--json",
        "--addr",
        node.grpc_addr,
        "--api-key",
        API_KEY,
        cwd=tmp_path,
        stdin='{"from":"stdin"}',
    )
    assert len(out.splitlines()) == 1
    resp = json.loads(out)
    assert resp["message_id"]
    assert [int(s) for s in resp["seqs"]] == [1]
    assert resp["duplicate"] is False
    (msg,) = alice.messages(1)
    assert (msg["id"], msg["seq"], msg["data"]) == (resp["message_id"], 1, {"from": "stdin"})


def test_publish_reaches_subscribers(
    node: NodeProcess, clients: list[Client], tmp_path: Path
) -> None:
    sub = open_ws(node, "reader", topics=["news*"])
    clients.append(sub)
    sub.send({"type": "subscribe", "topic": "news"})
    assert sub.recv() == {"type": "subscribed", "topic": "news"}
    out = cli_ok(
        "publish",
        "--topic",
        "news",
        "--data-file",
        "-",
        "--content-type",
        "text/plain",
        env=node_env(node),
        cwd=tmp_path,
        stdin="breaking",
    )
    match = re.fullmatch(
        r"published (\S+) to news: 1 subscriber connection on the node that took it\n", out
    )
    assert match, out
    (msg,) = sub.messages(1)
    assert (msg["id"], msg["topic"], msg["content_type"], msg["data"]) == (
        match[1],
        "news",
        "text/plain",
        "breaking",
    )

    out = cli_ok(
        "publish", "--topic", "sports", "--data", "{}", "--json", env=node_env(node), cwd=tmp_path
    )
    resp = json.loads(out)
    assert resp["message_id"] and resp["local_subscribers"] == 0
    assert sub.barrier() == []


def test_presence_nodes_and_disconnect(
    node_factory: Callable[..., NodeProcess], clients: list[Client], tmp_path: Path
) -> None:
    # ListNodes counts connections as of the last heartbeat: beat often
    node = node_factory(env={"PUSHSVC_HEARTBEAT_INTERVAL": "0.2"})
    env = node_env(node)
    a1, a2, carol = open_ws(node, "alice"), open_ws(node, "alice"), open_ws(node, "carol")
    clients += [a1, a2, carol]
    out = cli_ok("presence", "alice", "bob", env=env, cwd=tmp_path)
    assert out == f"alice: online, 2 connections on {node.node_id}\nbob: offline\n"
    resp = json.loads(cli_ok("presence", "alice", "--json", env=env, cwd=tmp_path))
    assert resp == {
        "presence": [
            {"user_id": "alice", "online": True, "connections": 2, "node_ids": [node.node_id]}
        ]
    }

    line = re.compile(
        rf"{re.escape(node.node_id)}: grpc {re.escape(node.grpc_addr)}, "
        rf"ws 127\.0\.0\.1:{node.ws_port}, 3 connections, up \d+s\n"
    )
    wait_for(
        lambda: line.fullmatch(cli_ok("nodes", env=env, cwd=tmp_path)),
        what="nodes shows the node with its 3 connections",
    )
    (listed,) = json.loads(cli_ok("nodes", "--json", env=env, cwd=tmp_path))["nodes"]
    assert listed["node_id"] == node.node_id
    assert time.time() - 120 < listed["started_at"] <= time.time()

    out = cli_ok("disconnect", "alice", "--reason", "banned", env=env, cwd=tmp_path)
    assert out == "disconnected alice: 2 connections closed\n"
    assert a1.close_code() == (4000, "banned")
    assert a2.close_code() == (4000, "banned")
    assert carol.barrier() == []  # other users keep their connection
    wait_for(
        lambda: cli_ok("presence", "alice", env=env, cwd=tmp_path) == "alice: offline\n",
        what="alice offline after the disconnect",
    )
    out = cli_ok("disconnect", "nobody", env=env, cwd=tmp_path)
    assert out == "disconnected nobody: 0 connections closed\n"


def test_status_shows_delivered_and_acked(
    node: NodeProcess, clients: list[Client], tmp_path: Path
) -> None:
    env = node_env(node)
    acker, reader = open_ws(node, "acker"), open_ws(node, "reader")
    clients += [acker, reader]
    out = cli_ok(
        "push",
        *("--user", "acker", "--user", "reader", "--user", "offline"),
        *("--data", '{"s":1}'),
        env=env,
        cwd=tmp_path,
    )
    match = re.fullmatch(r"pushed (\S+): acker seq 1, reader seq 1, offline seq 1\n", out)
    assert match, out
    message_id = match[1]
    (msg,) = acker.messages(1)
    acker.send({"type": "ack", "seq": msg["seq"]})
    reader.messages(1)  # received, never acked
    expected = [  # one line per recipient, in no promised order
        "acker seq 1: acked",
        "offline seq 1: stored, not delivered yet",
        "reader seq 1: delivered, not acked yet",
    ]
    # receipts and acks reach the store in batches: poll the command until it agrees
    wait_for(
        lambda: (
            (out := cli_ok("status", message_id, env=env, cwd=tmp_path)).endswith("\n")
            and sorted(out.splitlines()) == expected
        ),
        what="status shows delivered and acked",
    )
    resp = json.loads(cli_ok("status", message_id, "--json", env=env, cwd=tmp_path))
    assert sorted(resp["recipients"], key=lambda r: r["user_id"]) == [
        {"user_id": "acker", "seq": "1", "delivered": True, "acked": True},
        {"user_id": "offline", "seq": "1", "delivered": False, "acked": False},
        {"user_id": "reader", "seq": "1", "delivered": True, "acked": False},
    ]


def test_api_key_from_generated_file(
    node_factory: Callable[..., NodeProcess], tmp_path: Path
) -> None:
    node = node_factory(start=False)
    del node.env["PUSHSVC_API_KEYS"]  # the node generates <data_dir>/api-key
    node.start()
    key_file = node.data_dir / "api-key"
    assert key_file.read_text().strip()
    env = {"PUSHSVC_GRPC_ADDR": node.grpc_addr, "PUSHSVC_DATA_DIR": str(node.data_dir)}
    out = cli_ok("nodes", env=env, cwd=tmp_path)
    assert out.startswith(f"{node.node_id}: grpc {node.grpc_addr}, ")
    # ...also from the default data dir, ./pushsvc-data of the working directory
    (tmp_path / "pushsvc-data").mkdir()
    (tmp_path / "pushsvc-data" / "api-key").write_text(key_file.read_text())
    assert cli_ok("presence", "x", env={"PUSHSVC_GRPC_ADDR": node.grpc_addr}, cwd=tmp_path) == (
        "x: offline\n"
    )
    # a stale key file: the error says where the key came from
    stale = tmp_path / "stale"
    stale.mkdir()
    (stale / "api-key").write_text("an-old-key\n")
    proc = run_cli("nodes", env={**env, "PUSHSVC_DATA_DIR": str(stale)}, cwd=tmp_path)
    line = assert_one_line_error(proc, 1)
    assert line.startswith("pushsvc: UNAUTHENTICATED: ")
    assert f"(key from {stale / 'api-key'})" in line


def test_grpc_errors_are_one_line(node: NodeProcess, tmp_path: Path) -> None:
    env = node_env(node)
    proc = run_cli("push", "--user", "alice", "--data", "{not json", env=env, cwd=tmp_path)
    line = assert_one_line_error(proc, 1)
    assert line.startswith("pushsvc: INVALID_ARGUMENT: ")
    assert "JSON" in line
    proc = run_cli("status", "no-such-message", env=env, cwd=tmp_path)
    line = assert_one_line_error(proc, 1)
    assert line.startswith("pushsvc: NOT_FOUND: ")
    proc = run_cli("presence", "alice", "--api-key", "wrong", env=env, cwd=tmp_path)
    line = assert_one_line_error(proc, 1)
    assert line.startswith("pushsvc: UNAUTHENTICATED: ")
    assert line.endswith("(key from --api-key)")
    proc = run_cli("presence", "alice", env=node_env(node, key=None), cwd=tmp_path)
    line = assert_one_line_error(proc, 1)
    assert line.startswith("pushsvc: UNAUTHENTICATED: ")
    assert "no API key found" in line
    # PUSHSVC_API_KEY, which every client reads, comes before the node's list
    own = {"PUSHSVC_GRPC_ADDR": node.grpc_addr, "PUSHSVC_API_KEY": API_KEY}
    assert cli_ok("presence", "x", env=own, cwd=tmp_path) == "x: offline\n"
    proc = run_cli("presence", "x", env={**env, "PUSHSVC_API_KEY": "wrong"}, cwd=tmp_path)
    assert assert_one_line_error(proc, 1).endswith("(key from PUSHSVC_API_KEY)")
    # nothing was stored by the refused push: the next one gets seq 1
    out = cli_ok("push", "--user", "alice", "--data", "{}", env=env, cwd=tmp_path)
    assert re.fullmatch(r"pushed \S+: alice seq 1\n", out), out


@pytest.fixture
def mongo_node(
    node_factory: Callable[..., NodeProcess],
) -> Iterator[tuple[FerretDB, NodeProcess]]:
    """A fleet node on a FerretDB of its own, which the test may stop and start."""
    with outage_node(node_factory) as (db, node):
        yield db, node


def test_retry_on_unavailable_reuses_idempotency_key(
    mongo_node: tuple[FerretDB, NodeProcess], clients: list[Client]
) -> None:
    db, node = mongo_node
    assert metric(node, "pushsvc_store_errors_total") == 0
    db.stop()  # Push now answers UNAVAILABLE

    key = f"order-{uuid.uuid4().hex[:8]}"
    result: dict[str, Any] = {}

    def push_with_retries() -> None:
        with PushClient(
            node.grpc_addr, API_KEY, timeout=10, retries=60, backoff=0.1, max_backoff=0.5
        ) as client:
            try:
                result["response"] = client.push("frank", {"n": 1}, idempotency_key=key)
            except Exception as exc:  # reported by the main thread
                result["error"] = exc

    pusher = threading.Thread(target=push_with_retries, daemon=True)
    pusher.start()
    wait_for(
        lambda: metric(node, "pushsvc_store_errors_total") > 0,
        timeout=30,
        what="the node reports a store error",
    )
    assert pusher.is_alive(), result  # still retrying

    db.start()
    pusher.join(60)
    assert not pusher.is_alive(), "the push did not finish after the store came back"
    assert "error" not in result, result
    first: push_pb2.PushResponse = result["response"]
    assert not first.duplicate
    assert list(first.seqs) == [1]  # the refused attempts stored nothing

    with PushClient(node.grpc_addr, API_KEY, timeout=10) as client:
        again = client.push("frank", {"n": 1}, idempotency_key=key)
    assert again.duplicate
    assert again.message_id == first.message_id

    # Stored exactly once.
    replay = open_ws(node, "frank", since=0)
    clients.append(replay)
    (msg,) = replay.messages(1)
    assert (msg["id"], msg["seq"], msg["data"]) == (first.message_id, 1, {"n": 1})
    assert replay.barrier() == []


def test_store_outage_is_unavailable_not_unreachable(
    mongo_node: tuple[FerretDB, NodeProcess], tmp_path: Path
) -> None:
    """The node answers, its store does not: never "is the node running?"."""
    db, node = mongo_node
    db.stop()
    with (
        PushClient(node.grpc_addr, API_KEY, timeout=10, retries=0) as client,
        pytest.raises(UnavailableError) as err,
    ):
        client.push("frank", {"n": "once"})
    assert "store" in err.value.message
    assert not err.value.unreachable, err.value.message
    proc = run_cli(
        "push",
        *("--user", "frank", "--data", '{"n":"cli"}', "--timeout", "10"),
        env=node_env(node),
        cwd=tmp_path,
    )
    line = assert_one_line_error(proc, 1)
    assert line.startswith("pushsvc: UNAVAILABLE: "), line
    assert "is the node running" not in line


# -- store-format: the fleet database's format ----------------------------------------


def test_store_format_shows_and_sets_the_databases_format(
    ferretdb: FerretDB,  # noqa: F811
) -> None:
    env = {"PUSHSVC_MONGO_URI": ferretdb.uri, "PUSHSVC_MONGO_DB": f"f_{uuid.uuid4().hex}"}
    shown = run_cli("store-format", env=env)
    assert shown.returncode == 0 and "no format recorded yet" in shown.stdout, shown
    raised = run_cli("store-format", "--set", "2", env=env)
    assert raised.returncode == 0, raised
    assert "format unrecorded -> 2" in raised.stdout and "restart the nodes" in raised.stdout
    again = run_cli("store-format", "--set", "2", env=env)
    assert "already format 2" in again.stdout, again
    lowered = run_cli("store-format", "--set", "1", env=env)
    assert "format 2 -> 1" in lowered.stdout, lowered
    shown = run_cli("store-format", env=env)
    assert shown.stdout.strip().endswith(
        "format 1 (stored batches commit by updating each message; every release reads it)"
    ), shown


def test_store_format_bad_input_is_one_line(tmp_path: Path) -> None:
    assert "PUSHSVC_MONGO_URI is unset" in assert_one_line_error(run_cli("store-format"), 2)
    env = {"PUSHSVC_MONGO_URI": "mongodb://"}
    assert "PUSHSVC_MONGO_URI" in assert_one_line_error(run_cli("store-format", env=env), 2)
    env = {"PUSHSVC_MONGO_URI": "mongodb://127.0.0.1:1", "PUSHSVC_MONGO_DB": "a/b"}
    assert "PUSHSVC_MONGO_DB" in assert_one_line_error(run_cli("store-format", env=env), 2)
    env = {"PUSHSVC_MONGO_URI": "mongodb://127.0.0.1:1"}
    for bad in ("3", "two"):
        proc = run_cli("store-format", "--set", bad, env=env)
        # argparse's usage line, then the error: as for every command's arguments.
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc
        assert (
            proc.stderr.strip()
            .splitlines()[-1]
            .startswith("pushsvc store-format: error: argument --set: invalid")
        ), proc.stderr


def test_store_format_unreachable_database_is_one_line() -> None:
    env = {"PUSHSVC_MONGO_URI": f"mongodb://127.0.0.1:{closed_port()}"}
    line = assert_one_line_error(run_cli("store-format", env=env, timeout=60), 1)
    assert line.startswith("pushsvc: error: the MongoDB database pushsvc cannot be reached"), line
