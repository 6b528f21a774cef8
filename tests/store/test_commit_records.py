"""Readers of the MongoDB store and bodies committed by a commit record.

The first tests write that form by hand, as a node with
``PUSHSVC_MONGO_COMMIT_RECORDS`` does, and check that every reader -- pages,
message status, idempotent retries, the receipt log, sweeps -- reads it right
whatever the reading node's own setting; the last ones write it through the
store. All against a real FerretDB. (The behavioural, property and crash
suites run on this form too: the ``mongo-records`` backend.)
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from pushsvc.errors import NotFound, StoreUnavailable
from pushsvc.messages import Message
from pushsvc.store.commit_records import record_id
from pushsvc.store.inbox import InboxPage, StoreRequest
from pushsvc.store.mongo import PENDING_GRACE, MongoInbox
from pushsvc.store.mongo_database import MongoDatabase
from pushsvc.store.receipt_log import MongoReceiptLog
from tests.ferretdb import FerretDB

T0 = 1_700_000_000.0
EXP = T0 + 3600


@pytest.fixture
def store(ferretdb: FerretDB) -> Iterator[MongoInbox]:
    s = MongoInbox(MongoDatabase(ferretdb.uri, f"t_{uuid.uuid4().hex}"))
    try:
        yield s
    finally:
        s.close()


def write_attempt(
    store: MongoInbox,
    w: str,
    pushes: list[tuple[str, list[tuple[str, int]]]],
    *,
    record: bool | None,
    t: float = T0,
) -> None:
    """What a writer of the next form leaves: a record (pending if ``record`` is
    True, committed if False, none if None -- abandoned), bodies naming ``w`` in
    ``pending``, and each recipient's entry (``pushes``: message id, [(user, seq)])."""
    node = "node-x"
    if record is not None:
        store._messages.insert_one(
            {
                "_id": record_id(w),
                "w": w,
                "pending": record,
                "ids": [mid for mid, _ in pushes],
                "t": t,
                "created_at": t,
                "by": f"{node}/1",
                "node": node,
                "exp": EXP,
                "expires_at": None,
            }
        )
    for mid, recipients in pushes:
        store._messages.insert_one(
            {
                "_id": mid,
                "w": w,
                "payload": b'{"n":1}',
                "content_type": "application/json",
                "created_at": t,
                "exp": EXP,
                "expires_at": None,
                "t": t,
                "by": f"{node}/1",
                "node": node,
                "pending": w,
            }
        )
        for i, (user, seq) in enumerate(recipients):
            store._inbox.insert_one(
                {
                    "user_id": user,
                    "seq": seq,
                    "message_id": mid,
                    "w": w,
                    "i": i,
                    "exp": EXP,
                    "expires_at": None,
                    "delivered": False,
                }
            )


def mid(n: int) -> str:
    return f"{n:026x}"


def seqs(page: InboxPage) -> list[int]:
    return [e.seq for e in page.entries]


def test_a_body_whose_record_committed_reads_as_committed(store: MongoInbox) -> None:
    write_attempt(store, "w1", [(mid(1), [("alice", 1), ("bob", 1)])], record=False)
    page = store.read_inbox("alice", 0, 10, T0)
    assert seqs(page) == [1] and page.blocked_at is None
    assert page.entries[0].message.payload == b'{"n":1}'
    assert [(s.user_id, s.seq) for s in store.message_status(mid(1), T0)] == [
        ("alice", 1),
        ("bob", 1),
    ]


def test_a_body_whose_record_is_pending_blocks_readers_at_its_seq(store: MongoInbox) -> None:
    write_attempt(store, "w0", [(mid(1), [("alice", 1)])], record=False)
    write_attempt(store, "w1", [(mid(2), [("alice", 2)])], record=True)
    write_attempt(store, "w2", [(mid(3), [("alice", 3)])], record=False)
    assert store.read_inbox("alice", 0, 10, T0) == InboxPage(
        store.read_inbox("alice", 0, 1, T0).entries, blocked_at=2
    )
    with pytest.raises(NotFound):
        store.message_status(mid(2), T0)


def test_a_body_whose_record_is_gone_reads_as_a_deletion(store: MongoInbox) -> None:
    write_attempt(store, "w1", [(mid(1), [("alice", 1)])], record=None)
    write_attempt(store, "w2", [(mid(2), [("alice", 2)])], record=False)
    page = store.read_inbox("alice", 0, 10, T0)
    assert seqs(page) == [2] and page.blocked_at is None
    with pytest.raises(NotFound):
        store.message_status(mid(1), T0)


def test_a_page_reads_its_records_with_its_bodies(store: MongoInbox) -> None:
    for n in range(1, 6):
        write_attempt(store, f"w{n}", [(mid(n), [("alice", n)])], record=False)
    before = store.round_trips
    assert seqs(store.read_inbox("alice", 0, 10, T0)) == [1, 2, 3, 4, 5]
    assert store.round_trips - before == 2  # the entries, then bodies and records at once


def test_old_and_new_bodies_read_side_by_side(store: MongoInbox) -> None:
    first = store.store_message(
        Message(mid(1), b"{}", "application/json", T0, EXP), ["alice"], "", T0
    )
    write_attempt(store, "w2", [(mid(2), [("alice", first.seqs[0] + 1)])], record=False)
    assert seqs(store.read_inbox("alice", 0, 10, T0)) == [1, 2]


def test_an_idempotent_retry_of_a_record_committed_push_is_a_duplicate(
    store: MongoInbox,
) -> None:
    write_attempt(store, "w1", [(mid(1), [("alice", 1)])], record=False)
    store._idempotency.insert_one(
        {
            "_id": "key-1",
            "message_id": mid(1),
            "w": "w1",
            "users": ["alice"],
            "created_at": T0,
            "exp": T0 + 86400,
            "expires_at": None,
        }
    )
    retry = Message(mid(9), b"{}", "application/json", T0, EXP)
    (result,) = store.store_messages([StoreRequest(retry, ("alice",), "key-1")], T0)
    assert not isinstance(result, Exception)
    assert result.duplicate and result.message_id == mid(1) and result.seqs == (1,)


def test_the_receipt_log_counts_only_record_committed_entries(
    store: MongoInbox,
) -> None:
    write_attempt(store, "w1", [(mid(1), [("alice", 1)])], record=False)
    write_attempt(store, "w2", [(mid(2), [("alice", 2)])], record=True)
    write_attempt(store, "w3", [(mid(3), [("alice", 3)])], record=None)
    log = MongoReceiptLog(store.database, "node-x", 3600.0)
    pairs = [(mid(n), "alice") for n in (1, 2, 3)]
    assert log.delivered_seqs(pairs, T0) == {(mid(1), "alice"): 1}
    assert log.acked_messages({"alice": (0, 3)}, T0) == [("alice", 1, mid(1))]


def test_sweep_abandons_a_dead_attempt_by_its_record_and_raises_its_counters(
    store: MongoInbox,
) -> None:
    write_attempt(
        store, "dead", [(mid(1), [("alice", 1)]), (mid(2), [("bob", 4)])], record=True, t=T0
    )
    assert store.read_inbox("alice", 0, 10, T0).blocked_at == 1
    store.sweep(T0 + PENDING_GRACE + 1)
    # The record is gone: both bodies read as deletions, and the counters are
    # above their entries, so their seqs are never taken again.
    assert store._messages.count_documents({"_id": record_id("dead")}) == 0
    assert store.read_inbox("alice", 0, 10, T0) == InboxPage(())
    assert store.read_inbox("bob", 0, 10, T0) == InboxPage(())
    counters: dict[str, Any] = {d["_id"]: d["seq"] for d in store._counters.find()}
    assert counters == {"alice": 1, "bob": 4}
    later = store.store_message(
        Message(mid(3), b"{}", "application/json", T0, EXP), ["alice"], "", T0
    )
    assert later.seqs == (2,)


def test_a_committed_record_is_not_swept(store: MongoInbox) -> None:
    write_attempt(store, "w1", [(mid(1), [("alice", 1)])], record=False, t=T0)
    store.sweep(T0 + PENDING_GRACE + 1)
    assert seqs(store.read_inbox("alice", 0, 10, T0)) == [1]


# -- the writer of this form (``MongoInbox(commit_records=True)``) -----------------


@pytest.fixture
def writer(ferretdb: FerretDB) -> Iterator[MongoInbox]:
    s = MongoInbox(
        MongoDatabase(ferretdb.uri, f"t_{uuid.uuid4().hex}"), commit_records=True, writer="n/1"
    )
    try:
        yield s
    finally:
        s.close()


def test_a_batch_commits_by_its_record_and_leaves_its_bodies_untouched(
    writer: MongoInbox,
) -> None:
    requests = [
        StoreRequest(Message(mid(n), b"{}", "application/json", T0, EXP), ("alice", f"u{n}"))
        for n in range(1, 31)
    ]
    results = writer.store_messages(requests, T0)
    assert all(not isinstance(r, Exception) for r in results)
    (record,) = writer._messages.find({"_id": {"$regex": "^attempt/"}})
    assert record["pending"] is False and record["ids"] == [mid(n) for n in range(1, 31)]
    bodies = list(writer._messages.find({"_id": {"$in": record["ids"]}}))
    assert len(bodies) == 30 and {b["pending"] for b in bodies} == {record["w"]}
    assert seqs(writer.read_inbox("alice", 0, 100, T0)) == list(range(1, 31))
    assert writer.read_inbox("u7", 0, 10, T0).entries[0].message.id == mid(7)


def test_a_writer_that_failed_abandons_its_record_and_a_retry_stores_the_message(
    writer: MongoInbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    m = Message(mid(1), b"{}", "application/json", T0, EXP)

    def no_commit(*args: Any, **kwargs: Any) -> Any:
        raise StoreUnavailable("the commit did not go (injected)")

    monkeypatch.setattr(writer, "_commit_record", no_commit)
    with pytest.raises(StoreUnavailable):
        writer.store_message(m, ["alice"], "k", T0)
    monkeypatch.undo()
    # The record is gone and so is the body: seq 1 stays a tombstone.
    assert writer._messages.count_documents({}) == 0
    assert writer.read_inbox("alice", 0, 10, T0) == InboxPage(())
    retry = writer.store_message(m, ["alice"], "k", T0)
    assert not retry.duplicate and retry.seqs == (2,)
    assert seqs(writer.read_inbox("alice", 0, 10, T0)) == [2]
