"""The fleet's registry (``MongoRegistry``) against a real FerretDB: registrations,
presence, and their expiry. Every test passes explicit ``now`` values."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator

import pytest

from pushsvc.store.mongo import MongoInbox
from pushsvc.store.mongo_database import MongoDatabase
from pushsvc.store.mongo_registry import MongoRegistry
from pushsvc.store.registry import NodeInfo
from tests.ferretdb import FerretDB

T0 = 1_700_000_000.0


@pytest.fixture
def database(ferretdb: FerretDB) -> Iterator[MongoDatabase]:
    db = MongoDatabase(ferretdb.uri, f"test_{uuid.uuid4().hex}")
    try:
        yield db
    finally:
        db.close()


@pytest.fixture
def registry(database: MongoDatabase) -> Iterator[MongoRegistry]:
    r = MongoRegistry(database)
    try:
        yield r
    finally:
        r.close()


def node(node_id: str, expires_at: float, connections: int = 0) -> NodeInfo:
    return NodeInfo(
        node_id=node_id,
        grpc_addr=f"{node_id}.example:7000",
        ws_addr=f"{node_id}.example:8000",
        started_at=T0,
        expires_at=expires_at,
        connections=connections,
    )


# -- nodes and presence -------------------------------------------------------------


def test_node_registration_refresh_and_deregistration(registry: MongoRegistry) -> None:
    assert registry.live_nodes(T0) == []
    registry.register_node(node("n2", T0 + 15, connections=3))
    registry.register_node(node("n1", T0 + 15))
    assert registry.live_nodes(T0) == [node("n1", T0 + 15), node("n2", T0 + 15, connections=3)]

    registry.refresh_node("n1", T0 + 30, 7)
    assert registry.live_nodes(T0 + 20) == [node("n1", T0 + 30, connections=7)]
    assert registry.live_nodes(T0 + 30) == []  # expiry is exclusive

    # re-registering replaces the registration
    moved = NodeInfo("n1", "new:7000", "new:8000", T0 + 5, T0 + 50, 0)
    registry.register_node(moved)
    assert registry.live_nodes(T0 + 40) == [moved]

    registry.deregister_node("n1")
    assert [n.node_id for n in registry.live_nodes(T0)] == ["n2"]
    registry.deregister_node("never-registered")


def test_refresh_recreates_a_swept_registration(registry: MongoRegistry) -> None:
    registry.register_node(node("n1", T0 + 15))
    assert registry.sweep(T0 + 20) >= 1
    assert registry.live_nodes(T0 + 20) == []
    registry.refresh_node("n1", T0 + 35, 2)
    assert registry.live_nodes(T0 + 20) == [node("n1", T0 + 35, connections=2)]


def test_presence_counts_are_stored_per_node_and_only_live_nodes_count(
    registry: MongoRegistry,
) -> None:
    registry.register_node(node("n1", T0 + 15))
    registry.register_node(node("n2", T0 + 30))
    registry.set_presence("n1", {"alice": 2, "bob": 1})
    registry.set_presence("n2", {"alice": 1})
    registry.set_presence("ghost", {"alice": 4, "carol": 1})  # node never registered

    users = ["alice", "bob", "carol", "dave"]
    assert registry.presence(users, T0) == {"alice": {"n1": 2, "n2": 1}, "bob": {"n1": 1}}
    assert registry.presence(["bob"], T0) == {"bob": {"n1": 1}}
    assert registry.presence(["dave"], T0) == {}
    assert registry.presence([], T0) == {}
    registry.set_presence("n1", {})  # nothing to do

    # n1 expired: its presence is ignored before any sweep
    assert registry.presence(users, T0 + 20) == {"alice": {"n2": 1}}
    registry.refresh_node("n1", T0 + 60, 3)
    assert registry.presence(users, T0 + 20) == {"alice": {"n1": 2, "n2": 1}, "bob": {"n1": 1}}

    registry.deregister_node("n2")
    assert registry.presence(users, T0 + 20) == {"alice": {"n1": 2}, "bob": {"n1": 1}}
    registry.register_node(node("n2", T0 + 60))
    assert registry.presence(users, T0 + 20) == {"alice": {"n1": 2}, "bob": {"n1": 1}}


def test_set_presence_overwrites_removes_at_zero_and_leaves_others(registry: MongoRegistry) -> None:
    registry.register_node(node("n1", T0 + 30))
    registry.register_node(node("n2", T0 + 30))
    registry.set_presence("n1", {"alice": 1, "bob": 2, "carol": 1})
    registry.set_presence("n2", {"alice": 5, "bob": 1})
    users = ["alice", "bob", "carol"]

    # a later call overwrites the count (it does not add to it)
    registry.set_presence("n1", {"alice": 3})
    assert registry.presence(users, T0) == {
        "alice": {"n1": 3, "n2": 5},
        "bob": {"n1": 2, "n2": 1},
        "carol": {"n1": 1},
    }
    registry.set_presence("n1", {"alice": 1})  # counts go down as well as up
    assert registry.presence(["alice"], T0) == {"alice": {"n1": 1, "n2": 5}}

    # 0 removes the (user, node) record, on that node only; others are untouched
    registry.set_presence("n1", {"bob": 0, "carol": 0, "alice": 4})
    assert registry.presence(users, T0) == {"alice": {"n1": 4, "n2": 5}, "bob": {"n2": 1}}
    registry.set_presence("n2", {"bob": 0})
    assert registry.presence(users, T0) == {"alice": {"n1": 4, "n2": 5}}
    registry.set_presence("n1", {"dave": 0})  # removing what is not there is a no-op
    assert registry.presence([*users, "dave"], T0) == {"alice": {"n1": 4, "n2": 5}}

    # a removed user can come back
    registry.set_presence("n2", {"carol": 2})
    assert registry.presence(["carol"], T0) == {"carol": {"n2": 2}}


def test_register_node_purges_presence_of_an_earlier_run(registry: MongoRegistry) -> None:
    registry.register_node(node("n1", T0 + 15))
    registry.register_node(node("n2", T0 + 15))
    registry.set_presence("n1", {"alice": 2, "bob": 1})
    registry.set_presence("n2", {"alice": 1})
    assert registry.presence(["alice", "bob"], T0) == {
        "alice": {"n1": 2, "n2": 1},
        "bob": {"n1": 1},
    }
    registry.register_node(node("n1", T0 + 30))  # the node restarted
    assert registry.presence(["alice", "bob"], T0) == {"alice": {"n2": 1}}
    registry.set_presence("n1", {"bob": 3})
    assert registry.presence(["alice", "bob"], T0) == {"alice": {"n2": 1}, "bob": {"n1": 3}}


def test_sweep_removes_expired_registrations_and_their_presence(registry: MongoRegistry) -> None:
    registry.register_node(node("n1", T0 + 15))
    registry.register_node(node("n2", T0 + 60))
    registry.set_presence("n1", {"alice": 2})
    registry.set_presence("n2", {"bob": 1})
    assert registry.sweep(T0 + 20) >= 2  # n1 and alice's presence on it
    assert [n.node_id for n in registry.live_nodes(T0)] == ["n2"]
    # a re-created n1 does not bring back presence from before the sweep
    registry.refresh_node("n1", T0 + 90, 0)
    assert registry.presence(["alice", "bob"], T0 + 20) == {"bob": {"n2": 1}}


def test_ttl_fallback_is_detected_and_indexes_exist(registry: MongoRegistry) -> None:
    assert registry.ttl_indexes is False  # FerretDB: the sweeper removes expired nodes
    db = registry.database.db
    node_keys = [list(ix["key"]) for ix in db["nodes"].index_information().values()]
    assert [("expires_at", 1)] in node_keys
    presence_keys = [list(ix["key"]) for ix in db["presence"].index_information().values()]
    assert [("user_id", 1)] in presence_keys and [("node_id", 1)] in presence_keys


def test_inbox_and_registry_share_one_connection(database: MongoDatabase) -> None:
    inbox = MongoInbox(database)
    registry = MongoRegistry(database)
    registry.register_node(node("n1", T0 + 15))
    inbox.probe()
    registry.close()
    inbox.probe()  # the inbox still holds the connection
    assert database.round_trips >= inbox.round_trips + registry.round_trips
    assert inbox.round_trips > 0 and registry.round_trips > 0
    inbox.close()


def test_arrivals_insert_new_presence_and_update_what_was_there(registry: MongoRegistry) -> None:
    registry.register_node(node("n1", T0 + 30))
    registry.set_presence("n1", {"alice": 1})
    registry.arrive("n1", {"alice": 2, "bob": 1, "carol": 3})  # alice had one already
    users = ["alice", "bob", "carol"]
    assert registry.presence(users, T0) == {
        "alice": {"n1": 2},
        "bob": {"n1": 1},
        "carol": {"n1": 3},
    }
    registry.arrive("n1", {"bob": 1})  # arriving again changes nothing
    assert registry.presence(["bob"], T0) == {"bob": {"n1": 1}}


def test_a_fleet_updating_presence_at_once_does_not_wedge_ferretdb() -> None:
    """FerretDB 1.24 holds a backend connection for every statement of an update
    command until the command ends: nodes sending many-statement updates at once
    (a reconnect storm re-counting thousands of users) used to take its whole pool
    and it answered no one again. A private server: a wedged one stays wedged."""
    users = [f"user-{i}" for i in range(300)]
    with FerretDB() as server:
        name = f"test_{uuid.uuid4().hex}"
        nodes = [MongoRegistry(MongoDatabase(server.uri, name)) for _ in range(6)]
        try:
            for i, r in enumerate(nodes):
                r.register_node(node(f"n{i}", T0 + 60))
                r.arrive(f"n{i}", dict.fromkeys(users, 1))
            # Six nodes' connections at once (threads: each its own pymongo pool).
            failed: list[BaseException] = []

            def update(i: int) -> None:
                try:
                    nodes[i].set_presence(f"n{i}", dict.fromkeys(users, 2))
                except BaseException as exc:
                    failed.append(exc)

            threads = [threading.Thread(target=update, args=(i,)) for i in range(len(nodes))]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=240)
            assert not any(t.is_alive() for t in threads), "FerretDB stopped answering"
            assert not failed, failed
            held = nodes[0].presence(users, T0)
            assert held == {u: {f"n{i}": 2 for i in range(6)} for u in users}
        finally:
            for r in nodes:
                r.database.close()
