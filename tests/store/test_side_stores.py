"""The stores beside the inbox, for both backends: the receipt log and the revocation list.

Every test passes explicit times; nothing sleeps.
"""

from __future__ import annotations

import pathlib
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import pytest

from pushsvc.messages import Message
from pushsvc.store.embedded import EmbeddedStore
from pushsvc.store.inbox import InboxStore
from pushsvc.store.mongo import MongoInbox
from pushsvc.store.mongo_database import MongoDatabase
from pushsvc.store.receipt_log import (
    RECEIPTS_DB,
    Kind,
    MongoReceiptLog,
    Receipt,
    ReceiptFilter,
    ReceiptLog,
    SqliteReceiptLog,
)
from pushsvc.store.revocation import (
    MongoRevocationStore,
    Revocation,
    RevocationStore,
    SqliteRevocationStore,
)
from pushsvc.store.sqlite_side import SideDatabase
from tests.ferretdb import ferretdb  # noqa: F401

S = TypeVar("S", ReceiptLog, RevocationStore)
T0 = 1_700_000_000.0
RETENTION = 3600.0


@dataclass
class Side:
    inbox: InboxStore
    log: Callable[[str], ReceiptLog]  # a receipt log writing as the named source
    revocations: Callable[[], RevocationStore]


@pytest.fixture(params=["embedded", "mongo"])
def side(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> Iterator[Side]:
    opened: list[ReceiptLog | RevocationStore] = []

    def keep(store: S) -> S:
        opened.append(store)
        return store

    inbox: InboxStore
    if request.param == "embedded":
        inbox = EmbeddedStore(tmp_path / "data")
        # As the server wires them: the log in a file of its own, reading the inbox's.
        events = SideDatabase(tmp_path / "data" / RECEIPTS_DB, attach={"inbox_db": inbox.path})
        sdb = SideDatabase(inbox.path)
        events.attach()  # held by the fixture: logs come and go
        sdb.attach()
        s = Side(
            inbox,
            lambda source: keep(SqliteReceiptLog(events, source, RETENTION)),
            lambda: keep(SqliteRevocationStore(sdb)),
        )
    else:
        uri = request.getfixturevalue("ferretdb").uri
        mdb = MongoDatabase(uri, f"test_{uuid.uuid4().hex}")
        inbox = MongoInbox(mdb)
        s = Side(
            inbox,
            lambda source: keep(MongoReceiptLog(mdb, source, RETENTION)),
            lambda: keep(MongoRevocationStore(mdb)),
        )
    try:
        yield s
    finally:
        for store in opened:
            store.close()
        if request.param == "embedded":
            events.detach()
            sdb.detach()
        inbox.close()


def delivered(message_id: str, user: str, seq: int, at: float = T0, owner: str = "") -> Receipt:
    return Receipt(Kind.DELIVERED, message_id, user, seq, owner, at)


def acked(message_id: str, user: str, seq: int, at: float = T0) -> Receipt:
    return Receipt(Kind.ACKED, message_id, user, seq, "", at)


def test_batches_are_committed_in_order_and_read_back_by_range_and_filter(side: Side) -> None:
    log = side.log("node-a")
    first = log.append([delivered("m1", "alice", 1, owner="k1"), delivered("m1", "bob", 1)], T0)
    second = log.append([acked("m1", "alice", 1)], T0)
    # n is the batch's time in microseconds, then one more per event; batches chain.
    assert [e.n for e in first.events] == [int(T0 * 1_000_000), first.upto]
    assert first.upto == first.events[0].n + 1 and first.prev == 0
    assert second.prev == first.upto and second.upto == first.upto + 1  # same time: n goes on
    assert log.marks()["node-a"].committed == second.upto

    everything = log.read("node-a", 0, second.upto, 100, None)
    assert [(e.kind, e.user_id) for e in everything] == [
        (Kind.DELIVERED, "alice"),
        (Kind.DELIVERED, "bob"),
        (Kind.ACKED, "alice"),
    ]
    assert log.read("node-a", first.upto, second.upto, 100, None) == list(second.events)
    assert log.read("node-a", 0, first.upto, 1, None) == [first.events[0]]
    users = log.read("node-a", 0, second.upto, 100, ReceiptFilter(frozenset({"alice"})))
    assert [e.kind for e in users] == [Kind.DELIVERED, Kind.ACKED]
    owned = log.read("node-a", 0, second.upto, 100, ReceiptFilter(owner="k1"))
    assert [(e.user_id, e.owner) for e in owned] == [("alice", "k1")]


def test_an_event_is_recorded_once_whichever_node_reports_it(side: Side) -> None:
    a, b = side.log("node-a"), side.log("node-b")
    a.append([delivered("m1", "alice", 1)], T0)
    again = b.append([delivered("m1", "alice", 1), acked("m1", "alice", 1)], T0)
    assert [e.kind for e in again.events] == [Kind.ACKED]  # the repeat is left out
    assert again.events[0].n == again.upto  # the repeat's n stays used: a gap, never a reuse
    marks = a.marks()
    assert set(marks) == {"node-a", "node-b"}
    assert len(b.read("node-b", 0, marks["node-b"].committed, 10, None)) == 1


def test_the_counter_of_a_source_never_goes_back(side: Side) -> None:
    first = side.log("node-a").append([delivered("m1", "alice", 1)], T0)
    restarted = side.log("node-a").append([delivered("m2", "alice", 2)], T0)
    assert restarted.prev >= first.upto and restarted.events[0].n > first.upto


def test_seqs_and_acked_ranges_are_resolved_from_the_inbox(side: Side) -> None:
    def message(mid: str) -> Message:
        return Message(mid, b"{}", "application/json", T0, T0 + 3600)

    for mid in ("m1", "m2", "m3"):
        side.inbox.store_message(message(mid), ["alice", "bob"], "", T0)
    log = side.log("node-a")
    assert log.delivered_seqs([("m2", "alice"), ("m3", "bob"), ("m9", "alice")], T0) == {
        ("m2", "alice"): 2,
        ("m3", "bob"): 3,
    }
    assert log.acked_messages({"alice": (1, 3), "bob": (0, 1), "carol": (0, 5)}, T0) == [
        ("alice", 2, "m2"),
        ("alice", 3, "m3"),
        ("bob", 1, "m1"),
    ]
    assert log.acked_messages({"alice": (0, 3)}, T0 + 3600) == []  # expired entries


def test_sweep_removes_old_events_and_remembers_how_far(side: Side) -> None:
    log = side.log("node-a")
    old = log.append([delivered("m1", "alice", 1, at=T0)], T0)
    new = log.append([delivered("m2", "alice", 2, at=T0 + RETENTION)], T0 + RETENTION)
    assert log.sweep(T0 + RETENTION + 1) == 1
    assert log.marks()["node-a"].swept == old.upto
    assert log.read("node-a", 0, new.upto, 10, None) == list(new.events)

    idle = side.log("node-gone")
    idle.append([delivered("m3", "bob", 1, at=T0)], T0)
    log.sweep(T0 + 2 * RETENTION + 10)  # its events go first...
    log.sweep(T0 + 2 * RETENTION + 20)  # ...then the source itself
    assert "node-gone" not in log.marks()


def test_revocations_are_kept_until_they_expire_and_read_by_time(side: Side) -> None:
    store = side.revocations()
    store.add(Revocation("jti-1", T0 + 100, "lost phone", at=T0))
    store.add(Revocation("jti-2", T0 + 50, "", at=T0 + 10))
    store.add(Revocation("jti-1", T0 + 200, "stolen", at=T0 + 20))  # extended
    assert {(r.jti, r.expires_at, r.reason) for r in store.since(0, T0)} == {
        ("jti-1", T0 + 200, "stolen"),
        ("jti-2", T0 + 50, ""),
    }
    assert [r.jti for r in store.since(T0 + 15, T0)] == ["jti-1"]
    assert [r.jti for r in store.since(0, T0 + 60)] == ["jti-1"]  # jti-2 expired
    assert store.sweep(T0 + 60) == 1
    assert [r.jti for r in side.revocations().since(0, T0)] == ["jti-1"]  # durable, shared


def test_what_failed_pushes_left_in_the_inbox_is_not_resolved(side: Side) -> None:
    side.inbox.store_message(
        Message("m-ok", b"{}", "application/json", T0, T0 + 3600), ["alice"], "", T0
    )
    if isinstance(side.inbox, MongoInbox):
        # A push whose attempt failed leaves its entry with no committed body of its
        # own attempt (a tombstone): one with no body, one of an older attempt.
        side.inbox.database.collection("inbox").insert_many(
            [
                {"user_id": "alice", "seq": 2, "message_id": "m-gone", "w": "w1", "exp": T0 + 3600},
                {"user_id": "alice", "seq": 3, "message_id": "m-ok", "w": "old", "exp": T0 + 3600},
            ]
        )
    log = side.log("node-a")
    assert log.acked_messages({"alice": (0, 3)}, T0) == [("alice", 1, "m-ok")]
    assert log.delivered_seqs([("m-gone", "alice"), ("m-ok", "alice")], T0) == {
        ("m-ok", "alice"): 1
    }
