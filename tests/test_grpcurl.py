"""grpcurl against a live node: server reflection and health work without .proto files."""

from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.nodeproc import API_KEY, NodeProcess
from tests.wsclient import open_ws

GRPCURL = Path(__file__).resolve().parent.parent / ".tools" / "bin" / "grpcurl"


def grpcurl(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    if not GRPCURL.exists():
        pytest.fail(f"{GRPCURL} is missing: run make tools")
    proc = subprocess.run(
        [str(GRPCURL), "-plaintext", "-max-time", "20", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if check:
        assert proc.returncode == 0, (
            f"grpcurl {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}{proc.stderr}"
        )
    return proc


def push_body(users: list[str], data: Any, **fields: Any) -> str:
    payload = base64.b64encode(json.dumps(data).encode()).decode()
    return json.dumps({"user_ids": users, "payload": payload, **fields})


def test_list_through_reflection(node: NodeProcess) -> None:
    services = grpcurl(node.grpc_addr, "list").stdout.split()
    assert "pushsvc.v1.PushService" in services
    assert "grpc.health.v1.Health" in services

    methods = grpcurl(node.grpc_addr, "list", "pushsvc.v1.PushService").stdout.split()
    for rpc in ("Push", "PushStream", "Publish", "GetPresence", "Disconnect", "GetMessageStatus"):
        assert f"pushsvc.v1.PushService.{rpc}" in methods

    described = grpcurl(node.grpc_addr, "describe", "pushsvc.v1.PushRequest").stdout
    assert "repeated string user_ids = 1;" in described
    assert "optional uint32 ttl_seconds = 4;" in described


def test_health_check(node: NodeProcess) -> None:
    out = grpcurl(node.grpc_addr, "grpc.health.v1.Health/Check").stdout
    assert json.loads(out) == {"status": "SERVING"}


def test_push_through_grpcurl_arrives_on_websocket(node: NodeProcess) -> None:
    with open_ws(node, "curly") as ws:
        out = grpcurl(
            "-H",
            f"authorization: Bearer {API_KEY}",
            "-d",
            push_body(["curly"], {"via": "grpcurl"}),
            node.grpc_addr,
            "pushsvc.v1.PushService/Push",
        ).stdout
        resp = json.loads(out)  # grpcurl prints the proto field names
        assert resp["message_id"]
        # uint64 is a JSON string in the proto3 JSON mapping.
        assert resp["seqs"] == ["1"]
        (frame,) = ws.messages(1)
        assert frame["id"] == resp["message_id"]
        assert frame["seq"] == 1
        assert frame["data"] == {"via": "grpcurl"}

        # Online-only (ttl_seconds 0): delivered live, no seq.
        out = grpcurl(
            "-H",
            f"authorization: Bearer {API_KEY}",
            "-d",
            push_body(["curly"], {"live": True}, ttl_seconds=0),
            node.grpc_addr,
            "pushsvc.v1.PushService/Push",
        ).stdout
        (frame,) = ws.messages(1)
        assert frame["id"] == json.loads(out)["message_id"]
        assert "seq" not in frame


def test_grpcurl_errors(node: NodeProcess) -> None:
    wrong = grpcurl(
        "-H",
        "authorization: Bearer wrong-key",
        "-d",
        push_body(["curly"], {"n": 1}),
        node.grpc_addr,
        "pushsvc.v1.PushService/Push",
        check=False,
    )
    assert wrong.returncode != 0
    assert "Code: Unauthenticated" in wrong.stderr, wrong.stderr

    empty = grpcurl(
        "-H",
        f"authorization: Bearer {API_KEY}",
        "-d",
        push_body([], {"n": 1}),
        node.grpc_addr,
        "pushsvc.v1.PushService/Push",
        check=False,
    )
    assert empty.returncode != 0
    assert "Code: InvalidArgument" in empty.stderr, empty.stderr
