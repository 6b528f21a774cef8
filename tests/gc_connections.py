"""Run by tests/test_gc_tuning.py in a process of its own: a real node in this
process, with the node's garbage-collector policy (pushsvc/collector.py), and
WebSocket clients (greenlets on raw sockets) that open connections, let a full
pass freeze them, then end them every way a connection ends. Prints, as JSON,
the types a connection holds objects of, how many objects were frozen while the
connections were open, the types of every cyclic garbage object the full passes
after they ended found, and those of the connections' types still alive in
numbers (``retained``).

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
from tests.waiting import wait_for  # noqa: E402  (time.sleep is gevent's here)

SECRET = "gc-test-jwt-secret-of-sufficient-length"
KINDS = ("close", "drop", "kick", "bad-frame", "refused")
DEADLINE = 120.0


def census() -> collections.Counter[str]:
    """Live objects by type, after one full pass over everything (frozen included;
    the policy freezes what survives the pass, so it is unfrozen again to be seen)."""
    gc.unfreeze()
    gc.collect()
    gc.unfreeze()
    return collections.Counter(
        f"{type(o).__module__}.{type(o).__qualname__}" for o in gc.get_objects()
    )


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
    edge_server = server.ws_server
    assert edge_server is not None
    before = census()
    gc.freeze()

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
    wait_for(lambda: node.connection_count == open_count, DEADLINE, "every connection open")
    # The types a connection holds objects of (at least one each while open).
    grew = census() - before
    held = {t for t, count in grew.items() if count >= open_count}
    gc.collect()  # a full pass: the policy freezes what survived it
    frozen = gc.get_freeze_count()
    ended = [
        gevent.spawn(end_one, kind, i, g.value) for (kind, i), g in zip(work, opened, strict=True)
    ]
    del opened
    gevent.joinall(ended, raise_error=True)
    del ended
    wait_for(
        lambda: node.connection_count == 0 and edge_server.sockets == 0,
        DEADLINE,
        "every connection closed and its socket released",
    )
    # From here every full pass keeps what it finds unreachable in gc.garbage: a
    # frozen object that became cyclic garbage (only a pass over everything frees
    # it) shows up there. Passes run until no type has more live objects than
    # before the connections (their handlers' greenlets end just after the sockets
    # are released).
    gc.set_debug(gc.DEBUG_SAVEALL)

    def retained() -> dict[str, int]:
        """The connections' types still alive in numbers: any object of a class of
        pushsvc's or a socket; of a generic type (dict, tuple, a gevent waiter...),
        more than half a connection's worth (the node's own loops hold a few)."""
        grown = (census() - before).items()
        return {
            t: c
            for t, c in grown
            if t in held and (t.startswith("pushsvc.") or "socket" in t or c >= open_count // 2)
        }

    left = retained()
    deadline = time.monotonic() + DEADLINE
    while left and time.monotonic() < deadline:
        gevent.sleep(0.05)
        left = retained()
    gc.set_debug(0)
    garbage = collections.Counter(
        f"{type(o).__module__}.{type(o).__qualname__}" for o in gc.garbage
    )
    gc.garbage.clear()
    print(
        json.dumps(
            {
                "connections": len(work),
                "held": sorted(held),
                "frozen": frozen,
                "garbage": dict(garbage),
                "retained": left,
            }
        ),
        flush=True,
    )
    server.request_stop()
    server.drain()
    return 0


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]) if len(sys.argv) > 1 else 20))
