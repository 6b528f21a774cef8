"""Run by tests/test_gc_tuning.py in a process of its own: a real node in this
process, with the node's garbage-collector policy (pushsvc/collector.py), and
WebSocket clients (greenlets on raw sockets) that open connections, let a full
pass freeze them, then end them every way a connection ends. Prints, as JSON,
how many objects were frozen before, while and after the connections were open,
and the types of every cyclic garbage object one full pass then finds.

    python -m tests.gc_connections N
"""

from __future__ import annotations

from pushsvc.nativethreads import cooperate

cooperate()  # as in a node

import collections  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import gevent  # noqa: E402

from pushsvc import collector  # noqa: E402
from pushsvc.auth import mint_token  # noqa: E402
from pushsvc.config import load_settings  # noqa: E402
from pushsvc.server import Server  # noqa: E402
from tests.rawws import HandshakeRefused, RawWS  # noqa: E402

SECRET = "gc-test-jwt-secret-of-sufficient-length"
KINDS = ("close", "drop", "kick", "bad-frame", "refused")
DEADLINE = 120.0


def wait_for(what: str, condition: object) -> None:
    """Run the event loop until ``condition()`` holds (generous deadline)."""
    deadline = time.monotonic() + DEADLINE
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        gevent.sleep(0.05)


def main(n: int) -> int:
    settings = load_settings(
        environ={
            "PUSHSVC_WS_ADDR": "127.0.0.1:0",
            "PUSHSVC_GRPC_ADDR": "127.0.0.1:0",
            "PUSHSVC_ADMIN_ADDR": "127.0.0.1:0",
            "PUSHSVC_DATA_DIR": tempfile.mkdtemp(prefix="pushsvc-gc-"),
            "PUSHSVC_JWT_SECRET": SECRET,
            "PUSHSVC_API_KEYS": "gc-test",
            "PUSHSVC_LOG_LEVEL": "error",
        }
    )
    server = Server(settings)
    server.start()
    collector.tune()
    node = server.node
    port = server.ws_port
    wait_for("the node to settle", lambda: node.connection_count == 0)
    collector.release()
    frozen_before = gc.get_freeze_count()

    def open_one(kind: str, i: int) -> RawWS | None:
        token = mint_token(SECRET, f"{kind}-{i}", 3600)
        if kind == "refused":
            token += "x"  # a bad signature: refused before the upgrade
        try:
            ws = RawWS.connect(
                "127.0.0.1", port, "/ws", {"Authorization": f"Bearer {token}"}, timeout=60
            )
        except HandshakeRefused:
            return None
        assert ws.recv_json(timeout=60)["type"] == "welcome"
        ws.send_ping(b"p")  # the reader, the writer and the pong path all used
        return ws

    def end_one(kind: str, i: int, ws: RawWS | None) -> None:
        if ws is None:
            return
        if kind == "close":
            ws.send_close(1000)
            ws.wait_eof(timeout=60)
        elif kind == "drop":
            pass  # the socket just goes away
        elif kind == "kick":
            node.disconnect_local(f"kick-{i}", "test")
            ws.wait_eof(timeout=60)
        elif kind == "bad-frame":
            ws.send_frame(0x1, b"{}", mask=False)  # unmasked: a protocol error
            ws.wait_eof(timeout=60)
        ws.close()

    work = [(kind, i) for kind in KINDS for i in range(n)]
    opened = [gevent.spawn(open_one, kind, i) for kind, i in work]
    gevent.joinall(opened, raise_error=True)
    open_count = sum(1 for kind, _ in work if kind != "refused")
    wait_for("every connection open", lambda: node.connection_count == open_count)
    gc.collect()  # a full pass: the policy freezes what survived it
    frozen_open = gc.get_freeze_count()
    ended = [
        gevent.spawn(end_one, kind, i, g.value) for (kind, i), g in zip(work, opened, strict=True)
    ]
    del opened
    gevent.joinall(ended, raise_error=True)
    del ended
    wait_for("every connection closed", lambda: node.connection_count == 0)
    # Reference counting frees a closed connection's frozen objects as its greenlet
    # ends: the count falls back most of the way (what stays is alive: per-user
    # state the node keeps for a while, which the full pass below does not free).
    grown = frozen_open - frozen_before
    wait_for(
        "the frozen objects to be freed",
        lambda: gc.get_freeze_count() < frozen_before + grown // 4,
    )
    frozen_after = gc.get_freeze_count()
    gc.set_debug(gc.DEBUG_SAVEALL)
    collector.release()
    gc.set_debug(0)
    garbage = collections.Counter(
        f"{type(o).__module__}.{type(o).__qualname__}" for o in gc.garbage
    )
    gc.garbage.clear()
    print(
        json.dumps(
            {
                "connections": len(work),
                "frozen_before": frozen_before,
                "frozen_open": frozen_open,
                "frozen_after": frozen_after,
                "garbage": dict(garbage),
            }
        ),
        flush=True,
    )
    server.request_stop()
    server.drain()
    return 0


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]) if len(sys.argv) > 1 else 20))
