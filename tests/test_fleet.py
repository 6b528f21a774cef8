"""The fleet: three real nodes sharing a real MongoDB-wire server (FerretDB).

Heartbeats run every 0.5 s here, so a crashed node's registration (three times
the interval) lapses in 1.5 s instead of 15 s.
"""

from __future__ import annotations

import json
import signal
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import grpc
import pymongo
import pytest
from pymongo.database import Database
from websockets.exceptions import ConnectionClosed

from pushsvc_client.v1 import push_pb2
from tests.ferretdb import FerretDB, ferretdb  # noqa: F401
from tests.nodeproc import CLUSTER_KEY, NodeProcess, auth
from tests.waiting import wait_for
from tests.wsclient import Client, open_ws

HEARTBEAT = 0.5
FORWARD_TIMEOUT = 8.0  # long against any pause of a busy machine
Fleet = Callable[..., list[NodeProcess]]


@pytest.fixture
def fleet(ferretdb: FerretDB, node_factory: Callable[..., NodeProcess]) -> Fleet:  # noqa: F811
    """``fleet(3)`` starts three nodes on one fresh database."""
    db = f"fleet_{uuid.uuid4().hex[:10]}"

    def make(n: int, uri: str | None = None, **extra: str) -> list[NodeProcess]:
        nodes = []
        for i in range(n):
            env = {
                "PUSHSVC_MONGO_URI": uri or ferretdb.uri,
                "PUSHSVC_MONGO_DB": db,
                "PUSHSVC_CLUSTER_KEY": CLUSTER_KEY,
                "PUSHSVC_NODE_ID": f"node-{'abc'[i] if i < 3 else i}-{db[-4:]}",
                "PUSHSVC_HEARTBEAT_INTERVAL": str(HEARTBEAT),
                "PUSHSVC_SWEEP_INTERVAL": "1",
                **extra,
            }
            nodes.append(node_factory(env=env))
        return nodes

    return make


def push(
    node: NodeProcess, users: list[str], data: Any, ttl: int | None = None
) -> push_pb2.PushResponse:
    with node.stub() as stub:
        req = push_pb2.PushRequest(user_ids=users, payload=json.dumps(data).encode())
        if ttl is not None:
            req.ttl_seconds = ttl
        response: push_pb2.PushResponse = stub.Push(req, metadata=auth(), timeout=15)
        return response


def presence(node: NodeProcess, user: str) -> push_pb2.UserPresence:
    with node.stub() as stub:
        resp = stub.GetPresence(
            push_pb2.GetPresenceRequest(user_ids=[user]), metadata=auth(), timeout=10
        )
        result: push_pb2.UserPresence = resp.presence[0]
        return result


def test_push_reaches_users_on_other_nodes_once(fleet: Fleet, clients: list[Client]) -> None:
    a, b, c = fleet(3)
    carol = open_ws(c, "carol")
    dave_b = open_ws(b, "dave")
    dave_c = open_ws(c, "dave")
    clients += [carol, dave_b, dave_c]
    assert carol.welcome["node"] == c.node_id and dave_b.welcome["node"] == b.node_id

    p = presence(a, "dave")
    assert p.online and p.connections == 2
    assert sorted(p.node_ids) == sorted([b.node_id, c.node_id])

    first = push(a, ["carol", "dave"], {"n": 1})
    second = push(a, ["carol", "dave"], {"n": 2})
    for client in (carol, dave_b, dave_c):
        got = client.messages(2)
        assert [m["data"]["n"] for m in got] == [1, 2]
        assert [m["id"] for m in got] == [first.message_id, second.message_id]
        assert [m["seq"] for m in got] == [1, 2]
        assert client.barrier() == []  # nothing delivered twice

    with a.stub() as stub:
        listed = stub.ListNodes(push_pb2.ListNodesRequest(), metadata=auth(), timeout=5)
    assert {n.node_id for n in listed.nodes} == {a.node_id, b.node_id, c.node_id}


def test_crashed_node_users_go_offline_and_lose_nothing(
    fleet: Fleet, clients: list[Client]
) -> None:
    a, b, c = fleet(3)
    users = ["u1", "u2"]
    on_c = [open_ws(c, u) for u in users]
    clients += on_c
    push(a, users, {"n": 1})
    last_seen = {}
    for u, client in zip(users, on_c, strict=True):
        (m,) = client.messages(1)
        last_seen[u] = m["seq"]

    c.kill()
    started = time.monotonic()
    wait_for(lambda: not presence(a, "u1").online, 15, "crashed node's users offline")
    took = time.monotonic() - started
    assert took < 15
    assert not presence(b, "u2").online

    sent = [push(a, users, {"n": n}) for n in range(2, 7)]
    assert all(len(r.seqs) == 2 for r in sent)

    for u in users:
        client = open_ws(b, u, since=last_seen[u])
        clients.append(client)
        got = client.messages(5)
        assert [m["data"]["n"] for m in got] == [2, 3, 4, 5, 6]
        assert [m["seq"] for m in got] == list(range(last_seen[u] + 1, last_seen[u] + 6))
        assert client.barrier() == []


def test_ingress_killed_right_after_ok_message_still_delivered(
    fleet: Fleet, clients: list[Client]
) -> None:
    a, b = fleet(2)
    erin = open_ws(b, "erin")
    clients.append(erin)
    wait_for(lambda: presence(a, "erin").online, 30, "erin visible from a")
    for n in range(5):
        resp = push(a, ["erin"], {"n": n})
        assert resp.seqs == [n + 1]
    a.kill()
    got = erin.messages(5)
    assert [m["data"]["n"] for m in got] == [0, 1, 2, 3, 4]


def test_database_outage_refuses_stored_pushes_and_recovers(
    fleet: Fleet, clients: list[Client], tmp_path: Any
) -> None:
    db = FerretDB()
    db.start()
    try:
        (a,) = fleet(1, uri=db.uri)
        frank = open_ws(a, "frank")
        clients.append(frank)
        push(a, ["frank"], {"n": "before"})
        (m,) = frank.messages(1)
        assert m["seq"] == 1

        db.stop()
        with pytest.raises(grpc.RpcError) as err:
            push(a, ["frank"], {"n": "during"})
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "store" in (err.value.details() or "")
        # online-only pushes to local connections still work
        push(a, ["frank"], {"n": "online"}, ttl=0)
        (live,) = frank.messages(1)
        assert live["data"] == {"n": "online"} and "seq" not in live
        wait_for(lambda: a.admin_get("/readyz")[0] == 503, 15, "readiness reports not ready")

        db.start()
        wait_for(lambda: a.admin_get("/readyz")[0] == 200, 30, "node ready again")
        after = push(a, ["frank"], {"n": "after"})
        assert after.seqs == [2]  # the refused push stored nothing
        (m2,) = frank.messages(1)
        assert m2["data"] == {"n": "after"} and m2["seq"] == 2

        replay = open_ws(a, "frank", since=0)
        clients.append(replay)
        assert [x["data"]["n"] for x in replay.messages(2)] == ["before", "after"]
        assert replay.barrier() == []
    finally:
        db.cleanup()


def test_stopped_peer_times_out_without_delaying_others(
    fleet: Fleet, clients: list[Client]
) -> None:
    # c's registration must outlive its stop for the whole test: a long heartbeat.
    a, b, c = fleet(
        3, PUSHSVC_FORWARD_TIMEOUT=str(FORWARD_TIMEOUT), PUSHSVC_HEARTBEAT_INTERVAL="20"
    )
    gina = open_ws(b, "gina")
    hank = open_ws(c, "hank")
    clients += [gina, hank]
    wait_for(lambda: presence(a, "hank").online, 30, "hank visible from a")
    assert c.proc is not None
    c.proc.send_signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        result: dict[str, Any] = {}

        def do_push() -> None:
            result["resp"] = push(a, ["gina", "hank"], {"n": 1})
            result["took"] = time.monotonic() - started

        pusher = threading.Thread(target=do_push)
        pusher.start()
        (m,) = gina.messages(1, timeout=FORWARD_TIMEOUT)
        gina_latency = time.monotonic() - started
        pusher.join(FORWARD_TIMEOUT + 30)
        assert m["data"] == {"n": 1}
        # Not held up by the stopped peer, whose forward waits for its whole deadline...
        assert gina_latency < FORWARD_TIMEOUT, gina_latency
        # ...and the push answered once that deadline passed, not before.
        assert result["took"] >= FORWARD_TIMEOUT, result
        resp = result["resp"]
        with a.stub() as stub:
            status = stub.GetMessageStatus(
                push_pb2.GetMessageStatusRequest(message_id=resp.message_id),
                metadata=auth(),
                timeout=5,
            )
        assert {r.user_id for r in status.recipients} == {"gina", "hank"}  # still stored

        def timed_out() -> bool:
            _, text = a.admin_get("/metrics")
            return 'pushsvc_forward_total{result="timeout"}' in text

        wait_for(timed_out, 30, "a forward counted as timed out")
    finally:
        c.proc.send_signal(signal.SIGCONT)
    again = open_ws(c, "hank", since=0)
    clients.append(again)
    assert [x["data"]["n"] for x in again.messages(1)] == [1]


def test_publish_and_disconnect_reach_every_node(fleet: Fleet, clients: list[Client]) -> None:
    a, b, c = fleet(3)
    readers = [open_ws(n, f"reader-{i}", topics=["news.*"]) for i, n in enumerate((a, b, c))]
    clients += readers
    for r in readers:
        r.send({"type": "subscribe", "topic": "news.eu"})
        assert r.recv()["type"] == "subscribed"
    wait_for(lambda: len(nodes_seen(a)) == 3, 30, "a sees the fleet")
    with a.stub() as stub:
        resp = stub.Publish(
            push_pb2.PublishRequest(topic="news.eu", payload=b'{"headline":1}'),
            metadata=auth(),
            timeout=10,
        )
    assert resp.local_subscribers == 1
    for r in readers:
        (m,) = r.messages(1)
        assert m["topic"] == "news.eu" and m["data"] == {"headline": 1}
        assert m["id"] == resp.message_id

    ivan_b = open_ws(b, "ivan")
    ivan_c = open_ws(c, "ivan")
    clients += [ivan_b, ivan_c]
    with a.stub() as stub:
        closed = stub.Disconnect(
            push_pb2.DisconnectRequest(user_id="ivan", reason="account closed"),
            metadata=auth(),
            timeout=10,
        )
    assert closed.connections_closed == 2
    for client in (ivan_b, ivan_c):
        with pytest.raises(ConnectionClosed) as err:
            while True:
                client.recv()
        assert err.value.rcvd is not None
        assert (err.value.rcvd.code, err.value.rcvd.reason) == (4000, "account closed")


def nodes_seen(node: NodeProcess) -> set[str]:
    with node.stub() as stub:
        listed = stub.ListNodes(push_pb2.ListNodesRequest(), metadata=auth(), timeout=5)
    return {n.node_id for n in listed.nodes}


@pytest.mark.parametrize("counter", ["kept", "lost"])
def test_a_lost_forward_reaches_the_live_connection_by_the_position_check(
    fleet: Fleet,
    clients: list[Client],
    ferretdb: FerretDB,  # noqa: F811
    counter: str,
) -> None:
    """A forward that failed (its node was stopped) is not the end: the node's
    periodic position check finds the connection behind and replays to it --
    also when the user's counter lost its update (FerretDB's ``$max`` reads, then
    writes, so two nodes raising one counter at once can leave it low)."""
    a, b = fleet(2, PUSHSVC_FORWARD_TIMEOUT="1", PUSHSVC_POSITION_CHECK="1")
    ivy = open_ws(b, "ivy")
    clients.append(ivy)
    wait_for(lambda: presence(a, "ivy").online, 30, "ivy visible from a")
    assert b.proc is not None
    b.proc.send_signal(signal.SIGSTOP)
    try:
        sent = push(a, ["ivy"], {"n": "lost forward"})  # stored; its forward times out
        if counter == "lost":
            db: pymongo.MongoClient[dict[str, Any]]
            with pymongo.MongoClient(ferretdb.uri) as db:
                db[a.env["PUSHSVC_MONGO_DB"]].counters.update_one(
                    {"_id": "ivy"}, {"$set": {"seq": 0}}
                )
    finally:
        b.proc.send_signal(signal.SIGCONT)
    (m,) = ivy.messages(1, timeout=60)  # no new push, no reconnect: the check finds it
    assert m["id"] == sent.message_id and m["seq"] == 1
    assert ivy.barrier() == []


def test_a_forwarded_push_is_marked_delivered_for_as_long_as_it_lives(
    ferretdb: FerretDB,  # noqa: F811
    fleet: Fleet,
    clients: list[Client],
) -> None:
    """The node holding the user learns the message's expiry with the forward, and
    its delivery receipt is kept that long: the status reads delivered through the
    node that took the push."""
    a, b = fleet(2)
    erin = open_ws(b, "erin")
    clients.append(erin)
    wait_for(lambda: presence(a, "erin").online, 30, "erin visible from a")
    sent = push(a, ["erin"], {"n": 1}, ttl=600)
    (m,) = erin.messages(1)
    assert m["id"] == sent.message_id

    def delivered() -> bool:
        with a.stub() as stub:
            status = stub.GetMessageStatus(
                push_pb2.GetMessageStatusRequest(message_id=sent.message_id),
                metadata=auth(),
                timeout=5,
            )
        return [(r.user_id, r.delivered) for r in status.recipients] == [("erin", True)]

    wait_for(delivered, 30, "erin's receipt stored")
    db: pymongo.MongoClient[dict[str, Any]]
    with pymongo.MongoClient(ferretdb.uri) as db:
        store: Database[dict[str, Any]] = db[a.env["PUSHSVC_MONGO_DB"]]
        body = store.messages.find_one({"_id": sent.message_id})
        mark = store.delivered.find_one({"_id": f"{sent.message_id}/erin"})
    assert body is not None and mark is not None
    assert mark["exp"] == body["exp"]  # the message's own expiry, from node a via b
