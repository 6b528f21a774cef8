"""Several nodes per host: two processes share one WebSocket port (SO_REUSEPORT).

Each has its own gRPC and admin ports and node id; the kernel spreads new
connections across both, and each connection is welcomed by the node that took it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from tests.nodeproc import NodeProcess, free_port
from tests.rawws import RawWS
from tests.wsclient import token

CONNECTIONS = 50


def test_two_nodes_share_the_websocket_port(node_factory: Callable[..., NodeProcess]) -> None:
    shared = free_port()
    ws_addr = f"127.0.0.1:{shared}"
    a = node_factory(env={"PUSHSVC_WS_ADDR": ws_addr, "PUSHSVC_NODE_ID": "host-1"})
    b = node_factory(env={"PUSHSVC_WS_ADDR": ws_addr, "PUSHSVC_NODE_ID": "host-2"})
    assert a.grpc_port != b.grpc_port and a.admin_port != b.admin_port
    seen: Counter[str] = Counter()
    sockets = []
    try:
        for i in range(CONNECTIONS):
            ws = RawWS.connect("127.0.0.1", shared, f"/ws?token={token(f'u{i}')}")
            sockets.append(ws)
            welcome = ws.recv_json()
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
        assert ws.recv_json()["node"] == "host-2"
    assert b.stop() == 0
