"""Readers of the MongoDB store and bodies settled by their attempt's outcome.

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

from pushsvc.config import check_settings, load_settings
from pushsvc.errors import NotFound, StoreUnavailable
from pushsvc.messages import Message
from pushsvc.store.commit_records import (
    ABANDONED,
    COMMITTED,
    RECORDS_FORMAT,
    attempt_id,
    outcome_id,
)
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
    outcome: str | None,
    t: float = T0,
    attempt: bool = True,
) -> None:
    """What a writer of this form leaves: the attempt's document (unless
    ``attempt`` is False: swept once settled), its outcome (``COMMITTED``,
    ``ABANDONED``, or None while in flight), bodies naming ``w`` in ``pending``,
    and each recipient's entry (``pushes``: message id, [(user, seq)])."""
    node = "node-x"
    if attempt:
        store._messages.insert_one(
            {
                "_id": attempt_id(w),
                "w": w,
                "ids": [mid for mid, _ in pushes],
                "t": t,
                "created_at": t,
                "by": f"{node}/1",
                "node": node,
                "exp": EXP,
                "expires_at": None,
            }
        )
    if outcome is not None:
        store._messages.insert_one(
            {"_id": outcome_id(w), "w": w, "state": outcome, "exp": EXP, "expires_at": None}
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


def outcomes(store: MongoInbox) -> dict[str, str]:
    return {d["w"]: d["state"] for d in store._messages.find({"_id": {"$regex": "^outcome/"}})}


def attempts(store: MongoInbox) -> list[str]:
    return [d["w"] for d in store._messages.find({"_id": {"$regex": "^attempt/"}})]


def test_a_body_whose_attempt_committed_reads_as_committed(store: MongoInbox) -> None:
    write_attempt(store, "w1", [(mid(1), [("alice", 1), ("bob", 1)])], outcome=COMMITTED)
    page = store.read_inbox("alice", 0, 10, T0)
    assert seqs(page) == [1] and page.blocked_at is None
    assert page.entries[0].message.payload == b'{"n":1}'
    assert [(s.user_id, s.seq) for s in store.message_status(mid(1), T0)] == [
        ("alice", 1),
        ("bob", 1),
    ]


def test_a_body_whose_attempt_has_no_outcome_blocks_readers_at_its_seq(
    store: MongoInbox,
) -> None:
    write_attempt(store, "w0", [(mid(1), [("alice", 1)])], outcome=COMMITTED)
    write_attempt(store, "w1", [(mid(2), [("alice", 2)])], outcome=None)
    write_attempt(store, "w2", [(mid(3), [("alice", 3)])], outcome=COMMITTED)
    assert store.read_inbox("alice", 0, 10, T0) == InboxPage(
        store.read_inbox("alice", 0, 1, T0).entries, blocked_at=2
    )
    with pytest.raises(NotFound):
        store.message_status(mid(2), T0)


def test_a_body_whose_attempt_was_abandoned_reads_as_a_deletion(store: MongoInbox) -> None:
    write_attempt(store, "w1", [(mid(1), [("alice", 1)])], outcome=ABANDONED)
    write_attempt(store, "w2", [(mid(2), [("alice", 2)])], outcome=COMMITTED, attempt=False)
    page = store.read_inbox("alice", 0, 10, T0)
    assert seqs(page) == [2] and page.blocked_at is None
    with pytest.raises(NotFound):
        store.message_status(mid(1), T0)


def test_a_page_reads_its_outcomes_with_its_bodies(store: MongoInbox) -> None:
    for n in range(1, 6):
        write_attempt(store, f"w{n}", [(mid(n), [("alice", n)])], outcome=COMMITTED)
    before = store.round_trips
    assert seqs(store.read_inbox("alice", 0, 10, T0)) == [1, 2, 3, 4, 5]
    assert store.round_trips - before == 2  # the entries, then bodies and outcomes at once


def test_old_and_new_bodies_read_side_by_side(store: MongoInbox) -> None:
    first = store.store_message(
        Message(mid(1), b"{}", "application/json", T0, EXP), ["alice"], "", T0
    )
    write_attempt(store, "w2", [(mid(2), [("alice", first.seqs[0] + 1)])], outcome=COMMITTED)
    assert seqs(store.read_inbox("alice", 0, 10, T0)) == [1, 2]


def test_an_idempotent_retry_of_an_outcome_committed_push_is_a_duplicate(
    store: MongoInbox,
) -> None:
    write_attempt(store, "w1", [(mid(1), [("alice", 1)])], outcome=COMMITTED)
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


def test_the_receipt_log_counts_only_committed_entries(store: MongoInbox) -> None:
    write_attempt(store, "w1", [(mid(1), [("alice", 1)])], outcome=COMMITTED)
    write_attempt(store, "w2", [(mid(2), [("alice", 2)])], outcome=None)
    write_attempt(store, "w3", [(mid(3), [("alice", 3)])], outcome=ABANDONED)
    log = MongoReceiptLog(store.database, "node-x", 3600.0)
    pairs = [(mid(n), "alice") for n in (1, 2, 3)]
    assert log.delivered_seqs(pairs, T0) == {(mid(1), "alice"): 1}
    assert log.acked_messages({"alice": (0, 3)}, T0) == [("alice", 1, mid(1))]


def test_sweep_abandons_a_dead_attempt_and_raises_its_counters(store: MongoInbox) -> None:
    write_attempt(
        store, "dead", [(mid(1), [("alice", 1)]), (mid(2), [("bob", 4)])], outcome=None, t=T0
    )
    assert store.read_inbox("alice", 0, 10, T0).blocked_at == 1
    store.sweep(T0 + PENDING_GRACE + 1)
    # Abandoned: both bodies read as deletions and are gone, so is the attempt's
    # document, and the counters are above their entries, so their seqs are never
    # taken again.
    assert outcomes(store) == {"dead": ABANDONED} and attempts(store) == []
    assert store._messages.count_documents({"_id": {"$in": [mid(1), mid(2)]}}) == 0
    assert store.read_inbox("alice", 0, 10, T0) == InboxPage(())
    assert store.read_inbox("bob", 0, 10, T0) == InboxPage(())
    counters: dict[str, Any] = {d["_id"]: d["seq"] for d in store._counters.find()}
    assert counters == {"alice": 1, "bob": 4}
    later = store.store_message(
        Message(mid(3), b"{}", "application/json", T0, EXP), ["alice"], "", T0
    )
    assert later.seqs == (2,)


def test_sweep_removes_a_committed_attempt_document_and_keeps_its_bodies(
    store: MongoInbox,
) -> None:
    write_attempt(store, "w1", [(mid(1), [("alice", 1)])], outcome=COMMITTED, t=T0)
    write_attempt(store, "w2", [(mid(2), [("alice", 2)])], outcome=COMMITTED, t=T0 + 250)
    store.sweep(T0 + PENDING_GRACE + 1)
    # Only the one past the grace is looked at; the other is left for a later sweep.
    assert attempts(store) == ["w2"] and outcomes(store) == {"w1": COMMITTED, "w2": COMMITTED}
    assert seqs(store.read_inbox("alice", 0, 10, T0)) == [1, 2]


def test_an_abandoned_attempt_whose_bodies_are_left_is_finished_by_a_sweep(
    store: MongoInbox,
) -> None:
    # The abandoner died between its outcome and the deletions.
    write_attempt(store, "w1", [(mid(1), [("alice", 1)])], outcome=ABANDONED, t=T0)
    assert store.read_inbox("alice", 0, 10, T0) == InboxPage(())
    store.sweep(T0 + PENDING_GRACE + 1)
    assert attempts(store) == [] and store._messages.count_documents({"_id": mid(1)}) == 0
    assert outcomes(store) == {"w1": ABANDONED}


def test_a_dead_writers_attempt_is_abandoned_sooner(store: MongoInbox) -> None:
    write_attempt(store, "w1", [(mid(1), [("alice", 1)])], outcome=None, t=T0)
    store.sweep(T0 + 200, live_writers=["node-y"])  # node-x is gone
    assert outcomes(store) == {"w1": ABANDONED}
    write_attempt(store, "w2", [(mid(2), [("alice", 2)])], outcome=None, t=T0)
    store.sweep(T0 + 200, live_writers=["node-x"])  # alive: within the grace
    assert "w2" not in outcomes(store)
    assert store.read_inbox("alice", 0, 10, T0).blocked_at == 2


# -- the writer of this form (``MongoInbox(commit_records=True)``) -----------------


def records_store(ferretdb: FerretDB, name: str, writer: str) -> MongoInbox:
    return MongoInbox(MongoDatabase(ferretdb.uri, name), commit_records=True, writer=writer)


@pytest.fixture
def writer(ferretdb: FerretDB) -> Iterator[MongoInbox]:
    s = records_store(ferretdb, f"t_{uuid.uuid4().hex}", "n/1")
    try:
        yield s
    finally:
        s.close()


def test_a_batch_commits_by_inserting_its_outcome_and_leaves_its_bodies_untouched(
    writer: MongoInbox,
) -> None:
    requests = [
        StoreRequest(Message(mid(n), b"{}", "application/json", T0, EXP), ("alice", f"u{n}"))
        for n in range(1, 31)
    ]
    results = writer.store_messages(requests, T0)
    assert all(not isinstance(r, Exception) for r in results)
    (attempt,) = writer._messages.find({"_id": {"$regex": "^attempt/"}})
    assert attempt["ids"] == [mid(n) for n in range(1, 31)]
    (outcome,) = writer._messages.find({"_id": {"$regex": "^outcome/"}})
    assert outcome["state"] == COMMITTED and outcome["w"] == attempt["w"]
    assert outcome["exp"] == EXP and outcome["expires_at"] >= attempt["expires_at"]
    bodies = list(writer._messages.find({"_id": {"$in": attempt["ids"]}}))
    assert len(bodies) == 30 and {b["pending"] for b in bodies} == {attempt["w"]}
    assert seqs(writer.read_inbox("alice", 0, 100, T0)) == list(range(1, 31))
    assert writer.read_inbox("u7", 0, 10, T0).entries[0].message.id == mid(7)


def test_a_writer_that_failed_abandons_its_attempt_and_a_retry_stores_the_message(
    writer: MongoInbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    m = Message(mid(1), b"{}", "application/json", T0, EXP)

    def no_commit(*args: Any, **kwargs: Any) -> Any:
        raise StoreUnavailable("the commit did not go (injected)")

    monkeypatch.setattr(writer, "_commit_record", no_commit)
    with pytest.raises(StoreUnavailable):
        writer.store_message(m, ["alice"], "k", T0)
    monkeypatch.undo()
    # The body and the attempt's document are gone, its outcome says abandoned;
    # seq 1 stays a tombstone.
    assert list(outcomes(writer).values()) == [ABANDONED] and attempts(writer) == []
    assert writer._messages.count_documents({"_id": mid(1)}) == 0
    assert writer.read_inbox("alice", 0, 10, T0) == InboxPage(())
    retry = writer.store_message(m, ["alice"], "k", T0)
    assert not retry.duplicate and retry.seqs == (2,)
    assert seqs(writer.read_inbox("alice", 0, 10, T0)) == [2]


def test_a_commit_after_the_sweeper_abandoned_the_attempt_fails_and_stores_nothing(
    ferretdb: FerretDB, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = f"t_{uuid.uuid4().hex}"
    writer, sweeper = records_store(ferretdb, name, "n/1"), records_store(ferretdb, name, "m/1")
    try:
        commit = writer._commit_record

        def late_commit(pushes: Any) -> None:
            # Another node's sweeper takes the batch over first (the writer stalled).
            w = pushes[0].w
            sweeper._abandon_attempts([(attempt_id(w), w)])
            commit(pushes)

        monkeypatch.setattr(writer, "_commit_record", late_commit)
        m = Message(mid(1), b"{}", "application/json", T0, EXP)
        with pytest.raises(StoreUnavailable, match="abandoned"):
            writer.store_message(m, ["alice", "bob"], "k", T0)
        assert list(outcomes(writer).values()) == [ABANDONED]
        assert writer._messages.count_documents({"_id": mid(1)}) == 0
        assert writer.read_inbox("alice", 0, 10, T0) == InboxPage(())
        counters = {d["_id"]: d["seq"] for d in writer._counters.find()}
        assert counters == {"alice": 1, "bob": 1}
        monkeypatch.undo()
        retry = writer.store_message(m, ["alice", "bob"], "k", T0)
        assert not retry.duplicate and retry.seqs == (2, 2)
    finally:
        writer.close()
        sweeper.close()


def test_an_abandonment_after_the_commit_leaves_the_push_stored(ferretdb: FerretDB) -> None:
    name = f"t_{uuid.uuid4().hex}"
    writer, sweeper = records_store(ferretdb, name, "n/1"), records_store(ferretdb, name, "m/1")
    try:
        m = Message(mid(1), b"{}", "application/json", T0, EXP)
        stored = writer.store_message(m, ["alice"], "", T0)
        (w,) = attempts(writer)
        left = sweeper._abandon_attempts([(attempt_id(w), w)])
        assert left[mid(1)]["pending"] is False
        assert outcomes(writer) == {w: COMMITTED} and attempts(writer) == []
        assert seqs(writer.read_inbox("alice", 0, 10, T0)) == list(stored.seqs)
    finally:
        writer.close()
        sweeper.close()


def test_a_restarted_node_abandons_its_earlier_runs_attempts(ferretdb: FerretDB) -> None:
    name = f"t_{uuid.uuid4().hex}"
    first = records_store(ferretdb, name, "n/1")
    try:
        write_attempt(first, "w1", [(mid(1), [("alice", 1)])], outcome=None)
        first._messages.update_one({"_id": attempt_id("w1")}, {"$set": {"node": "n", "by": "n/1"}})
    finally:
        first.close()
    again = records_store(ferretdb, name, "n/2")
    try:
        assert again.recover() == 1
        assert outcomes(again) == {"w1": ABANDONED} and attempts(again) == []
        assert again.read_inbox("alice", 0, 10, T0) == InboxPage(())
    finally:
        again.close()


# -- which form a node writes: the database's format, or the setting ----------------


def test_a_node_on_a_database_no_node_used_writes_records_and_says_so(
    ferretdb: FerretDB,
) -> None:
    name = f"t_{uuid.uuid4().hex}"
    first = MongoInbox(MongoDatabase(ferretdb.uri, name), commit_records=None, writer="n/1")
    try:
        assert first.commit_records and first.store_format() == RECORDS_FORMAT
        first.store_message(Message(mid(1), b"{}", "application/json", T0, EXP), ["alice"], "", T0)
        assert list(outcomes(first).values()) == [COMMITTED]
        # A node of this version that comes later reads the format, not the data.
        later = MongoInbox(MongoDatabase(ferretdb.uri, name), commit_records=None, writer="m/1")
        assert later.commit_records
        later.close()
    finally:
        first.close()


@pytest.mark.parametrize("used_by", ["counters", "messages", "nodes"])
def test_a_node_on_a_database_in_use_keeps_the_first_form(ferretdb: FerretDB, used_by: str) -> None:
    # Data (or a registration) that nodes of an earlier version may have left.
    name = f"t_{uuid.uuid4().hex}"
    database = MongoDatabase(ferretdb.uri, name)
    database.db[used_by].insert_one({"_id": "x", "seq": 1})
    s = MongoInbox(database, commit_records=None, writer="n/1")
    try:
        assert not s.commit_records and s.store_format() == 1
        s.store_message(Message(mid(1), b"{}", "application/json", T0, EXP), ["alice"], "", T0)
        body = s._messages.find_one({"_id": mid(1)})
        assert outcomes(s) == {} and body is not None and body["pending"] is False
    finally:
        s.close()


def test_an_operator_raises_the_format_and_nodes_started_after_write_records(
    ferretdb: FerretDB,
) -> None:
    name = f"t_{uuid.uuid4().hex}"
    database = MongoDatabase(ferretdb.uri, name)
    database.db["counters"].insert_one({"_id": "alice", "seq": 3})
    old = MongoInbox(database, commit_records=None, writer="n/1")
    try:
        assert not old.commit_records
        # What docs/operations.md has the operator run once every node reads records.
        old._meta.update_one({"_id": "format"}, {"$set": {"version": RECORDS_FORMAT}})
    finally:
        old.close()
    s = MongoInbox(MongoDatabase(ferretdb.uri, name), commit_records=None, writer="n/2")
    try:
        assert s.commit_records
    finally:
        s.close()


def test_the_setting_overrides_the_databases_format(ferretdb: FerretDB) -> None:
    name = f"t_{uuid.uuid4().hex}"
    off = MongoInbox(MongoDatabase(ferretdb.uri, name), commit_records=False, writer="n/1")
    on = MongoInbox(MongoDatabase(ferretdb.uri, name), commit_records=True, writer="m/1")
    try:
        assert not off.commit_records and on.commit_records
        assert off._meta.find_one({"_id": "format"}) is None  # not consulted
    finally:
        off.close()
        on.close()


@pytest.mark.parametrize(
    ("raw", "parsed"),
    [("auto", "auto"), ("", "auto"), ("TRUE", "true"), ("1", "true"), ("off", "false")],
)
def test_the_setting_takes_auto_or_a_boolean(raw: str, parsed: str) -> None:
    env = {"PUSHSVC_MONGO_COMMIT_RECORDS": raw}
    assert load_settings(environ=env).mongo_commit_records == parsed
    assert load_settings(environ={}).mongo_commit_records == "auto"


def test_a_bad_setting_is_one_clear_line() -> None:
    settings, problems = check_settings(environ={"PUSHSVC_MONGO_COMMIT_RECORDS": "sometimes"})
    assert settings is None
    assert problems == ["PUSHSVC_MONGO_COMMIT_RECORDS: 'sometimes' is not auto, true or false"], (
        problems
    )
