"""MongoInbox specifics, against a real FerretDB: TTL fallback, outages, cleanup.

The behavioural contract itself is in ``test_store_behaviour.py``. Tests here
that stop the database use a private FerretDB, not the session one.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from pymongo.errors import AutoReconnect

from pushsvc.errors import NotFound, StoreUnavailable
from pushsvc.messages import Message
from pushsvc.store.mongo import MongoInbox
from pushsvc.store.mongo_database import MongoDatabase
from tests.ferretdb import FerretDB

T0 = 1_700_000_000.0
TIMEOUT = 1.0  # server_selection_timeout of the stores under test
MARGIN = 2.0

_n = 0


def msg(expires_at: float = T0 + 3600) -> Message:
    global _n
    _n += 1
    return Message(
        f"mongo-{_n:05d}-{uuid.uuid4().hex[:6]}", b'{"n":1}', "application/json", T0, expires_at
    )


def count(store: MongoInbox, collection: str, query: dict[str, Any] | None = None) -> int:
    return store._db[collection].count_documents(query or {})


@pytest.fixture(scope="module")
def server() -> Iterator[FerretDB]:
    """A FerretDB of this module's own, which its tests may stop and restart."""
    with FerretDB() as db:
        yield db


@pytest.fixture
def live(server: FerretDB) -> FerretDB:
    server.start()  # a no-op unless an earlier test left it stopped
    return server


@pytest.fixture
def store(live: FerretDB) -> Iterator[MongoInbox]:
    s = MongoInbox(
        MongoDatabase(live.uri, f"t_{uuid.uuid4().hex}", server_selection_timeout=TIMEOUT)
    )
    try:
        yield s
    finally:
        s.close()


# -- what FerretDB lacks, detected --------------------------------------------------


def test_ttl_index_fallback_is_detected_and_sweep_does_the_work(store: MongoInbox) -> None:
    assert store.ttl_indexes is False  # FerretDB answers createIndexes+TTL with code 238
    assert store.atomic_updates is False  # ... and its $inc is read-modify-write
    for name in ("messages", "inbox", "idempotency"):
        keys = [list(ix["key"]) for ix in store._db[name].index_information().values()]
        assert [("expires_at", 1)] in keys, name
    inbox_keys = {
        tuple(ix["key"]): ix.get("unique", False)
        for ix in store._db["inbox"].index_information().values()
    }
    assert inbox_keys[(("user_id", 1), ("seq", 1))] is True
    assert (("message_id", 1),) in inbox_keys

    short, long_ = msg(T0 + 100), msg(T0 + 200)
    store.store_message(short, ["alice", "bob"], "k-short", T0)
    store.store_message(long_, ["alice"], "", T0)
    assert (count(store, "messages"), count(store, "inbox")) == (2, 3)

    # nothing removes expired documents by itself on FerretDB
    removed = store.sweep(T0 + 150)
    assert removed == 1 + 2  # body, two entries
    assert count(store, "messages") == 1
    assert [d["message_id"] for d in store._db["inbox"].find()] == [long_.id]
    assert count(store, "idempotency") == 1  # the key lives 24 h
    assert store.sweep(T0 + 86_400) == 1 + 1 + 1  # body, entry, key
    assert count(store, "messages") == count(store, "inbox") == count(store, "idempotency") == 0


def test_writes_ask_for_majority_journaled_acknowledgement(store: MongoInbox) -> None:
    assert store._db.write_concern.document == {"w": "majority", "j": True}
    store.store_message(msg(), ["alice"], "", T0)  # accepted by the server


def test_body_is_stored_once(store: MongoInbox) -> None:
    m = msg()
    store.store_message(m, [f"u{i}" for i in range(50)], "", T0)
    assert count(store, "messages") == 1
    assert count(store, "inbox", {"message_id": m.id}) == 50


# -- a failed push stores nothing ---------------------------------------------------


def test_failure_after_partial_writes_is_undone(
    store: MongoInbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.store_message(msg(), ["alice"], "", T0)
    m = msg()

    def broken(*args: Any, **kwargs: Any) -> None:
        raise AutoReconnect("connection reset (injected)")

    monkeypatch.setattr(store._inbox, "insert_many", broken)
    with pytest.raises(StoreUnavailable, match="unreachable"):
        store.store_message(m, ["alice", "bob", "zed"], "k-fail", T0)
    monkeypatch.undo()

    assert store.latest_seq("alice") == 1
    assert store.latest_seq("bob") == store.latest_seq("zed") == 0
    assert [e.seq for e in store.read_inbox("alice", 0, 10, T0).entries] == [1]
    with pytest.raises(NotFound):
        store.message_status(m.id, T0)
    assert count(store, "messages") == 1
    assert count(store, "idempotency") == 0
    retry = store.store_message(m, ["alice", "bob", "zed"], "k-fail", T0)
    assert not retry.duplicate and retry.seqs == (2, 1, 1)


def test_push_cut_off_mid_way_stays_invisible_and_is_cleaned_later(
    store: MongoInbox, live: FerretDB, monkeypatch: pytest.MonkeyPatch
) -> None:
    m = msg()
    real_insert = store._inbox.insert_many

    def insert_then_die(docs: list[dict[str, Any]], **kwargs: Any) -> Any:
        real_insert(docs[:1], **kwargs)  # one entry written...
        live.kill()  # ...then the database goes away before the rest
        raise AutoReconnect("connection closed (injected)")

    monkeypatch.setattr(store._inbox, "insert_many", insert_then_die)
    with pytest.raises(StoreUnavailable):
        store.store_message(m, ["alice", "bob"], "k-cut", T0)
    monkeypatch.undo()
    live.start()

    # the cleanup could not run, but the half-written push is invisible
    assert count(store, "inbox", {"message_id": m.id}) == 1
    assert store.read_inbox("alice", 0, 10, T0).entries == ()
    with pytest.raises(NotFound):
        store.message_status(m.id, T0)
    # a retry with the same key is not taken for a duplicate, and replaces it
    retry = store.store_message(m, ["alice", "bob"], "k-cut", T0)
    assert not retry.duplicate
    assert [e.message.id for e in store.read_inbox("alice", 0, 10, T0).entries] == [m.id]
    assert count(store, "inbox", {"message_id": m.id}) == 2


def test_sweep_removes_pushes_that_died_half_way(store: MongoInbox) -> None:
    m = msg()
    store._messages.insert_one(
        {
            "_id": m.id,
            "payload": m.payload,
            "content_type": m.content_type,
            "created_at": T0,
            "exp": T0 + 3600,
            "expires_at": None,
            "pending": True,
        }
    )
    store._inbox.insert_one({"user_id": "alice", "seq": 1, "message_id": m.id, "exp": T0 + 3600})
    assert store.read_inbox("alice", 0, 10, T0).entries == ()
    assert store.sweep(T0 + 10) == 0  # it may still be in flight
    assert store.sweep(T0 + 600) == 2
    assert count(store, "messages") == count(store, "inbox") == 0


# -- outages ------------------------------------------------------------------------


def test_unreachable_store_fails_fast_stores_nothing_and_recovers(
    store: MongoInbox, live: FerretDB
) -> None:
    store.store_message(msg(), ["alice"], "", T0)
    store.probe()
    live.stop()

    m = msg()
    for call in (
        lambda: store.probe(),
        lambda: store.store_message(m, ["alice", "bob"], "k-down", T0),
        lambda: store.read_inbox("alice", 0, 10, T0).entries,
        lambda: store.ack("alice", 1),
        lambda: store.user_starts(["alice"]),
    ):
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match="the message store is unreachable"):
            call()
        assert time.monotonic() - started < TIMEOUT + MARGIN

    live.start()  # same port, same data
    deadline = time.monotonic() + 10
    while True:  # the driver reconnects by itself; no new store object
        try:
            store.probe()
            break
        except StoreUnavailable:
            assert time.monotonic() < deadline, "the store did not recover"
    assert store.latest_seq("alice") == 1
    assert store.latest_seq("bob") == 0
    with pytest.raises(NotFound):
        store.message_status(m.id, T0)
    result = store.store_message(m, ["alice", "bob"], "k-down", T0)
    assert not result.duplicate and result.seqs == (2, 1)
    assert [e.seq for e in store.read_inbox("alice", 0, 10, T0).entries] == [1, 2]


def test_store_created_while_the_database_is_down(live: FerretDB) -> None:
    live.stop()
    started = time.monotonic()
    store = MongoInbox(
        MongoDatabase(live.uri, f"t_{uuid.uuid4().hex}", server_selection_timeout=TIMEOUT)
    )
    try:
        assert time.monotonic() - started < TIMEOUT + MARGIN
        with pytest.raises(StoreUnavailable):
            store.probe()
        live.start()
        store.probe()  # finishes its setup now
        assert store.ttl_indexes is False
        assert store.store_message(msg(), ["alice"], "", T0).seqs == (1,)
    finally:
        store.close()
