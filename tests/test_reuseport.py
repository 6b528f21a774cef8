"""Several nodes per host: processes share one WebSocket port only when told to.

``PUSHSVC_WS_REUSE_PORT=true`` (a fleet on MongoDB) lets two processes bind the
same port with SO_REUSEPORT; each has its own gRPC and admin ports and node id;
the kernel spreads new connections across both, and each connection is welcomed
by the node that took it. Without the setting a second node on a taken port stops
with one line and exit code 2, and the embedded store refuses the setting: two
embedded nodes on one port would split a user's connections between stores that
do not know each other.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from tests.ferretdb import FerretDB, ferretdb  # noqa: F401
from tests.nodeproc import API_KEY, CLUSTER_KEY, JWT_SECRET, NodeProcess, free_port
from tests.rawws import RawWS
from tests.wsclient import token

CONNECTIONS = 50


def test_two_fleet_nodes_share_the_websocket_port(
    ferretdb: FerretDB,  # noqa: F811
    node_factory: Callable[..., NodeProcess],
) -> None:
    shared = free_port()
    db = f"reuse_{uuid.uuid4().hex[:10]}"
    env = {
        "PUSHSVC_WS_ADDR": f"127.0.0.1:{shared}",
        "PUSHSVC_WS_REUSE_PORT": "true",
        "PUSHSVC_MONGO_URI": ferretdb.uri,
        "PUSHSVC_MONGO_DB": db,
        "PUSHSVC_CLUSTER_KEY": CLUSTER_KEY,
    }
    a = node_factory(env={**env, "PUSHSVC_NODE_ID": "host-1"})
    b = node_factory(env={**env, "PUSHSVC_NODE_ID": "host-2"})
    assert a.grpc_port != b.grpc_port and a.admin_port != b.admin_port
    seen: Counter[str] = Counter()
    sockets = []
    try:
        for i in range(CONNECTIONS):
            ws = RawWS.connect("127.0.0.1", shared, f"/ws?token={token(f'u{i}')}")
            sockets.append(ws)
            welcome = ws.recv_json(timeout=30)
            assert welcome["type"] == "welcome"
            seen[welcome["node"]] += 1
    finally:
        for ws in sockets:
            ws.close()
    assert set(seen) == {"host-1", "host-2"}, seen
    assert sum(seen.values()) == CONNECTIONS
    # Both stop cleanly: one leaving the port group does not disturb the other.
    assert a.stop() == 0
    with RawWS.connect("127.0.0.1", shared, f"/ws?token={token('late')}") as ws:
        assert ws.recv_json(timeout=30)["node"] == "host-2"
    assert b.stop() == 0


def _serve(tmp_path: Path, extra: dict[str, str]) -> subprocess.CompletedProcess[str]:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PUSHSVC_")},
        "PUSHSVC_GRPC_ADDR": f"127.0.0.1:{free_port()}",
        "PUSHSVC_ADMIN_ADDR": f"127.0.0.1:{free_port()}",
        "PUSHSVC_DATA_DIR": str(tmp_path / "data"),
        "PUSHSVC_API_KEYS": API_KEY,
        "PUSHSVC_JWT_SECRET": JWT_SECRET,
        **extra,
    }
    return subprocess.run(
        [sys.executable, "-m", "pushsvc", "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_embedded_store_refuses_a_shared_port(tmp_path: Path) -> None:
    proc = _serve(
        tmp_path,
        {"PUSHSVC_WS_ADDR": f"127.0.0.1:{free_port()}", "PUSHSVC_WS_REUSE_PORT": "true"},
    )
    assert proc.returncode == 2, proc
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith("pushsvc: error: ") and "PUSHSVC_WS_REUSE_PORT" in line, line
    assert "PUSHSVC_MONGO_URI" in line, line


def test_a_taken_port_is_not_shared_by_default(
    node_factory: Callable[..., NodeProcess], tmp_path: Path
) -> None:
    first = node_factory()
    proc = _serve(tmp_path, {"PUSHSVC_WS_ADDR": f"127.0.0.1:{first.ws_port}"})
    assert proc.returncode == 2, proc
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith("pushsvc: error: cannot listen on PUSHSVC_WS_ADDR"), line
    # The first node is untouched.
    with RawWS.connect("127.0.0.1", first.ws_port, f"/ws?token={token('still')}") as ws:
        assert ws.recv_json()["type"] == "welcome"
