"""Graceful drain on SIGTERM (DESIGN §5), on a fleet of two real nodes (FerretDB).

200 clients hold connections to node A. A gets SIGTERM: /readyz answers 503 at
once, new handshakes are refused, every client is closed with 1012 (in batches,
spread in time), messages pushed through node B during the drain are all delivered
once the clients reconnect to B with ``since``, and A exits 0 within drain_timeout.
"""

from __future__ import annotations

import json
import queue
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from pushsvc.server import DRAIN_BATCH, DRAIN_PAUSE
from pushsvc_client.v1 import push_pb2
from tests.ferretdb import FerretDB, ferretdb  # noqa: F401
from tests.nodeproc import CLUSTER_KEY, NodeProcess, auth
from tests.rawws import OP_CLOSE, OP_TEXT, Closed, HandshakeRefused, RawWS
from tests.wsclient import token

CLIENTS = 200
USERS = 40  # five connections per user, like a user with several devices
DRAIN_TIMEOUT = 10.0
PUSHES_DURING_DRAIN = 3


def fleet_env(uri: str, db: str, node_id: str) -> dict[str, str]:
    return {
        "PUSHSVC_MONGO_URI": uri,
        "PUSHSVC_MONGO_DB": db,
        "PUSHSVC_CLUSTER_KEY": CLUSTER_KEY,
        "PUSHSVC_NODE_ID": node_id,
        "PUSHSVC_HEARTBEAT_INTERVAL": "0.5",
        "PUSHSVC_FORWARD_TIMEOUT": "1",
        "PUSHSVC_DRAIN_TIMEOUT": str(DRAIN_TIMEOUT),
        "PUSHSVC_LOG_LEVEL": "info",
        # The raw clients never answer pings: however long a busy machine takes to
        # open all 200, none may be closed for silence before the drain.
        "PUSHSVC_FIRST_FRAME_TIMEOUT": "600",
    }


class DrainedClient:
    """One connection to the draining node, read on its own thread until the close."""

    def __init__(self, user: str, ws: RawWS, welcome_seq: int) -> None:
        self.user = user
        self.ws = ws
        self.seqs: list[int] = []
        self.last_seq = welcome_seq
        self.close_code: int | None = None
        self.closed_at = 0.0

    def read_until_close(self, reply: threading.Event, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        try:
            while True:
                frame = self.ws.recv_frame(max(0.01, deadline - time.monotonic()))
                if frame.opcode == OP_TEXT:
                    msg = frame.json()
                    if msg["type"] == "message":
                        self.seqs.append(msg["seq"])
                        self.last_seq = msg["seq"]
                elif frame.opcode == OP_CLOSE:
                    self.close_code = frame.close_code
                    self.closed_at = time.monotonic()
                    break
            # Answer the close once the test says so, like a client that is busy.
            reply.wait(timeout)
            try:
                self.ws.send_close(1000)
            except OSError:
                pass  # the node cut the connection first (CLOSE_GRACE)
        except (Closed, TimeoutError):
            pass
        finally:
            self.ws.close()


def push_all(node: NodeProcess, users: list[str], text: str) -> dict[str, int]:
    with node.stub() as stub:
        resp = stub.Push(
            push_pb2.PushRequest(user_ids=users, payload=json.dumps({"m": text}).encode()),
            metadata=auth(),
            timeout=20,
        )
    return dict(zip(users, resp.seqs, strict=True))


class OpenStream:
    """A PushStream call kept open: an in-flight RPC the draining node must finish."""

    def __init__(self, node: NodeProcess) -> None:
        self._requests: queue.Queue[push_pb2.PushRequest | None] = queue.Queue()
        self._channel = node.stub()
        stub = self._channel.__enter__()
        self._responses = stub.PushStream(self._iter(), metadata=auth(), timeout=60)

    def _iter(self) -> Iterator[push_pb2.PushRequest]:
        while (req := self._requests.get()) is not None:
            yield req

    def push(self, users: list[str], text: str) -> dict[str, int]:
        payload = json.dumps({"m": text}).encode()
        self._requests.put(push_pb2.PushRequest(user_ids=users, payload=payload))
        resp = next(self._responses)
        assert not resp.HasField("error"), resp.error
        return dict(zip(users, resp.seqs, strict=True))

    def finish(self) -> None:
        self._requests.put(None)
        assert list(self._responses) == []
        self._channel.__exit__(None, None, None)


def test_sigterm_drains_to_the_other_node(
    ferretdb: FerretDB,  # noqa: F811
    node_factory: Callable[..., NodeProcess],
) -> None:
    db = f"drain_{uuid.uuid4().hex[:10]}"
    a = node_factory(env=fleet_env(ferretdb.uri, db, "node-a"))
    b = node_factory(env=fleet_env(ferretdb.uri, db, "node-b"))
    users = [f"user{i}" for i in range(USERS)]

    clients: list[DrainedClient] = []
    try:
        for i in range(CLIENTS):
            user = users[i % USERS]
            ws = RawWS.connect("127.0.0.1", a.ws_port, f"/ws?token={token(user)}")
            welcome = ws.recv_json()
            assert welcome["node"] == "node-a"
            clients.append(DrainedClient(user, ws, welcome["seq"]))
        # Every user is routed to A before the signal: B forwards a push there.
        before = push_all(b, users, "before")
        for c in clients:
            msg = c.ws.recv_json()
            assert msg["seq"] == before[c.user]
            c.last_seq = msg["seq"]

        stream = OpenStream(a)  # in flight when the signal comes
        opened = stream.push(users[:1], "stream open")
        for c in clients[::USERS]:
            assert c.ws.recv_json()["seq"] == opened[c.user]
            c.last_seq = opened[c.user]
        reply = threading.Event()
        with ThreadPoolExecutor(max_workers=CLIENTS) as pool:
            readers = [pool.submit(c.read_until_close, reply, 30) for c in clients]
            assert a.proc is not None
            signalled = time.monotonic()
            a.proc.send_signal(signal.SIGTERM)
            # Readiness flips as soon as the signal is handled: well under a second.
            deadline = time.monotonic() + 1.0
            status, body = a.admin_get("/readyz")
            while status != 503 and time.monotonic() < deadline:
                status, body = a.admin_get("/readyz")
            assert status == 503, body
            assert json.loads(body) == {"ready": False, "reason": "draining"}
            # Messages stored while A drains, through B.
            during: list[dict[str, int]] = []
            for i in range(PUSHES_DURING_DRAIN):
                during.append(push_all(b, users, f"during-{i}"))
            # A waits for its in-flight call, which still works, then exits.
            assert a.proc.poll() is None, "the pushes were meant to land during the drain"
            during.append(stream.push(users, "in flight on A"))
            # No new connection on the draining node (refused or not accepted at all).
            with pytest.raises((HandshakeRefused, Closed, OSError)):
                RawWS.connect("127.0.0.1", a.ws_port, f"/ws?token={token('late')}", timeout=2)
            reply.set()
            for r in readers:
                r.result(timeout=30)
            stream.finish()
            code = a.proc.wait(timeout=DRAIN_TIMEOUT + 5)
            took = time.monotonic() - signalled
        assert code == 0, a.log()[-3000:]
        assert took < DRAIN_TIMEOUT + 2, took  # drain_timeout plus interpreter exit

        codes = {c.close_code for c in clients}
        assert codes == {1012}, codes
        # In batches: the last close went out at least one pause after the first.
        spread = max(c.closed_at for c in clients) - min(c.closed_at for c in clients)
        assert CLIENTS > DRAIN_BATCH and spread >= DRAIN_PAUSE * 0.8, spread

        # Everyone reconnects to B with since = the last seq it saw: nothing is missed.
        def reconnect(c: DrainedClient) -> tuple[DrainedClient, list[int]]:
            expected = {p[c.user] for p in during} - set(c.seqs)
            got: list[int] = []
            path = f"/ws?token={token(c.user)}&since={c.last_seq}"
            with RawWS.connect("127.0.0.1", b.ws_port, path, timeout=10) as ws:
                welcome = ws.recv_json(timeout=10)
                assert welcome["node"] == "node-b"
                while len(got) < len(expected):
                    try:
                        msg: dict[str, Any] = ws.recv_json(timeout=10)
                    except TimeoutError:
                        raise AssertionError(
                            f"{c.user}: since={c.last_seq} old={c.seqs} got={got} "
                            f"expected={sorted(expected)} welcome={welcome}"
                        ) from None
                    if msg["type"] == "message":
                        got.append(msg["seq"])
            return c, got

        with ThreadPoolExecutor(max_workers=20) as pool:
            results = list(pool.map(reconnect, clients))
        for c, got in results:
            everything = c.seqs + got
            wanted = sorted(p[c.user] for p in during)
            assert sorted(everything) == wanted, (c.user, c.seqs, got, wanted)
            assert got == sorted(got), (c.user, got)
    finally:
        for c in clients:
            c.ws.close()
    assert "Traceback" not in a.log(), a.log()[-3000:]
