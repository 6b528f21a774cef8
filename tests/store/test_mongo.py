"""MongoInbox specifics, against a real FerretDB: TTL fallback, outages, cleanup.

The behavioural contract itself is in ``test_store_behaviour.py``. Tests here
that stop the database use a private FerretDB, not the session one.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import gevent
import gevent.event
import pytest
from pymongo.collection import Collection
from pymongo.errors import AutoReconnect

from pushsvc.errors import NotFound, StoreUnavailable
from pushsvc.messages import Message
from pushsvc.store.inbox import InboxPage, StoreRequest, StoreResult, UserStart
from pushsvc.store.mongo import (
    DEAD_WRITER_GRACE,
    ENTRY_RETENTION,
    PENDING_GRACE,
    PROBE_RETENTION,
    MongoInbox,
)
from pushsvc.store.mongo_database import FERRETDB_BATCH, MongoDatabase
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
    return store.database.db[collection].count_documents(query or {})


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
    for name in ("messages", "inbox", "idempotency", "delivered"):
        keys = [list(ix["key"]) for ix in store.database.db[name].index_information().values()]
        assert [("expires_at", 1)] in keys, name
    inbox_keys = {
        tuple(ix["key"]): ix.get("unique", False)
        for ix in store.database.db["inbox"].index_information().values()
    }
    assert inbox_keys[(("user_id", 1), ("seq", 1))] is True
    assert (("message_id", 1),) in inbox_keys

    short, long_ = msg(T0 + 100), msg(T0 + 200)
    store.store_message(short, ["alice", "bob"], "k-short", T0)
    store.store_message(long_, ["alice"], "", T0)
    assert (count(store, "messages"), count(store, "inbox")) == (2, 3)
    store.mark_delivered([(short.id, "alice", T0 + 100), (long_.id, "alice", T0 + 200)])
    assert count(store, "delivered") == 2

    # nothing removes expired documents by itself on FerretDB; readers skip them
    assert store.sweep(T0 + 150) == 0
    assert [e.message.id for e in store.read_inbox("alice", 0, 10, T0 + 150).entries] == [long_.id]
    # bodies go once a dead writer's would have been abandoned (t + 600 s), delivery
    # marks MARK_MARGIN after their message's expiry ...
    assert store.sweep(T0 + 450) == 1  # short's mark
    assert [d["_id"] for d in store.database.db["delivered"].find()] == [f"{long_.id}/alice"]
    assert store.sweep(T0 + 700) == 2 + 1
    assert count(store, "messages") == count(store, "delivered") == 0
    assert store.read_inbox("alice", 0, 10, T0).entries == ()
    # ... entries an hour after their expiry, the counters raised over them first
    assert count(store, "inbox") == 3
    assert store.sweep(T0 + 100 + ENTRY_RETENTION) == 2
    assert [d["message_id"] for d in store.database.db["inbox"].find()] == [long_.id]
    assert count(store, "idempotency") == 1  # the key lives 24 h
    assert store.sweep(T0 + 86_400) == 1 + 1  # entry, key
    assert count(store, "messages") == count(store, "inbox") == count(store, "idempotency") == 0
    # seqs are never reused, even with every entry gone
    assert store.user_starts(["alice", "bob"]) == {
        "alice": UserStart(2, 0),
        "bob": UserStart(1, 0),
    }
    later = T0 + 90_000
    assert store.store_message(msg(later + 60), ["alice", "bob"], "", later).seqs == (3, 2)


def test_writes_ask_for_majority_journaled_acknowledgement(store: MongoInbox) -> None:
    assert store.database.db.write_concern.document == {"w": "majority", "j": True}
    store.store_message(msg(), ["alice"], "", T0)  # accepted by the server


def test_body_is_stored_once(store: MongoInbox) -> None:
    m = msg()
    store.store_message(m, [f"u{i}" for i in range(50)], "", T0)
    assert count(store, "messages") == 1
    assert count(store, "inbox", {"message_id": m.id}) == 50


# -- a failed push stores nothing visible -------------------------------------------


def test_failure_before_any_entry_is_undone(
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
    page = store.read_inbox("alice", 0, 10, T0)
    assert [e.seq for e in page.entries] == [1] and page.blocked_at is None
    with pytest.raises(NotFound):
        store.message_status(m.id, T0)
    assert count(store, "messages") == 1
    assert count(store, "idempotency") == 0
    retry = store.store_message(m, ["alice", "bob", "zed"], "k-fail", T0)
    assert not retry.duplicate and retry.seqs == (2, 1, 1)


def test_push_cut_off_mid_way_blocks_readers_until_a_retry_takes_over(
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

    # The cleanup could not run: alice's entry is in flight as far as anyone
    # can tell, so readers wait there rather than skip it.
    assert count(store, "inbox", {"message_id": m.id}) == 1
    assert store.read_inbox("alice", 0, 10, T0) == InboxPage((), blocked_at=1)
    assert store.read_inbox("bob", 0, 10, T0) == InboxPage(())
    with pytest.raises(NotFound):
        store.message_status(m.id, T0)
    # A retry with the same key takes the abandoned push over; its entry stays
    # behind as a tombstone, so seq 1 is never reused.
    retry = store.store_message(m, ["alice", "bob"], "k-cut", T0)
    assert not retry.duplicate and retry.seqs == (2, 1)
    page = store.read_inbox("alice", 0, 10, T0)
    assert [(e.seq, e.message.id) for e in page.entries] == [(2, m.id)]
    assert page.blocked_at is None
    assert [(s.user_id, s.seq) for s in store.message_status(m.id, T0)] == [
        ("alice", 2),
        ("bob", 1),
    ]
    assert count(store, "inbox", {"message_id": m.id}) == 3


def _dead_push(
    store: MongoInbox, m: Message, user: str, seq: int, *, legacy: bool, by: str = ""
) -> None:
    """What a writer that died between its entries and its commit leaves."""
    body: dict[str, Any] = {
        "_id": m.id,
        "payload": m.payload,
        "content_type": m.content_type,
        "created_at": T0,
        "exp": T0 + 3600,
        "expires_at": None,
        "pending": True,
    }
    entry: dict[str, Any] = {"user_id": user, "seq": seq, "message_id": m.id, "exp": T0 + 3600}
    if not legacy:
        body |= {"w": "dead", "t": T0, "by": by, "node": by.rpartition("/")[0]}
        entry["w"] = "dead"
    store._messages.insert_one(body)
    store._inbox.insert_one(entry)


@pytest.mark.parametrize("legacy", [False, True], ids=["current", "earlier-version"])
def test_sweep_abandons_pushes_that_died_half_way(store: MongoInbox, legacy: bool) -> None:
    store.store_message(msg(), ["alice"], "", T0)
    dead = msg()
    _dead_push(store, dead, "alice", 2, legacy=legacy)
    later = store.store_message(msg(), ["alice"], "", T0 + 1)
    assert later.seqs == (3,)

    page = store.read_inbox("alice", 0, 10, T0 + 1)
    assert [e.seq for e in page.entries] == [1] and page.blocked_at == 2
    assert store.read_inbox("alice", 1, 10, T0 + 1) == InboxPage((), blocked_at=2)
    assert store.sweep(T0 + 10) == 0  # it may still be in flight
    assert store.read_inbox("alice", 1, 10, T0 + 10).blocked_at == 2
    assert store.sweep(T0 + PENDING_GRACE + 1) == 1  # abandoned: its body is deleted
    page = store.read_inbox("alice", 1, 10, T0 + PENDING_GRACE + 1)
    assert [e.seq for e in page.entries] == [3] and page.blocked_at is None
    assert count(store, "messages", {"_id": dead.id}) == 0
    assert count(store, "inbox", {"message_id": dead.id}) == 1  # a tombstone
    assert store.sweep(T0 + PENDING_GRACE + 2) == 0


def test_a_later_run_of_the_writer_abandons_what_the_earlier_run_left(live: FerretDB) -> None:
    name = f"t_{uuid.uuid4().hex}"
    again = MongoInbox(MongoDatabase(live.uri, name), writer="n1/run2")
    try:
        again.store_message(msg(), ["ann"], "", T0)
        mine, theirs = msg(), msg()
        _dead_push(again, mine, "ann", 2, legacy=False, by="n1/run1")  # the killed run
        _dead_push(again, theirs, "bob", 1, legacy=False, by="n2/run7")  # another node's
        assert again.read_inbox("ann", 1, 10, T0).blocked_at == 2
        assert again.recover() == 1
        assert again.read_inbox("ann", 1, 10, T0) == InboxPage(())
        assert again.read_inbox("bob", 0, 10, T0).blocked_at == 1  # not this node's to judge
        assert again.recover() == 0
    finally:
        again.close()


def test_sweep_abandons_a_dead_writers_push_after_its_lease(store: MongoInbox) -> None:
    dead = msg()
    _dead_push(store, dead, "cy", 1, legacy=False, by="n3/run1")
    past_lease = T0 + DEAD_WRITER_GRACE + 1
    assert store.sweep(past_lease, live_writers={"n3"}) == 0  # its node is alive: wait
    assert store.read_inbox("cy", 0, 10, past_lease).blocked_at == 1
    assert store.sweep(past_lease, live_writers={"n1", "n2"}) == 1  # n3 is gone
    assert store.read_inbox("cy", 0, 10, past_lease) == InboxPage(())


def test_each_node_probes_its_own_document_and_stale_ones_are_swept(
    store: MongoInbox,
) -> None:
    other = MongoInbox(store.database, writer="n2/run1")
    mine = MongoInbox(store.database, writer="n1/run1")
    try:
        mine.probe()
        other.probe()
        mine.probe()
        probes = {d["_id"]: d["at"] for d in store.database.db["probe"].find()}
        assert set(probes) == {"n1", "n2"}  # one per node, not one for the fleet
        now = time.time()
        mine.sweep(now)
        assert count(store, "probe") == 2  # both recent
        # n2 stopped probing more than a day ago; n1 goes on
        store.database.db["probe"].update_one(
            {"_id": "n2"}, {"$set": {"at": now - PROBE_RETENTION - 1}}
        )
        mine.sweep(now)
        assert [d["_id"] for d in store.database.db["probe"].find()] == ["n1"]
    finally:
        other.close()
        mine.close()


# -- round trips: a batch costs a handful, whatever its size --------------------------


def _requests(n: int, users: int = 1, key: str = "") -> list[StoreRequest]:
    return [
        StoreRequest(msg(), tuple(f"u{i}-{j}" for j in range(users)), f"{key}{i}" if key else "")
        for i in range(n)
    ]


@pytest.mark.parametrize("key", ["", "k-"], ids=["plain", "idempotency-keys"])
def test_a_batch_of_100_pushes_costs_a_handful_of_round_trips(store: MongoInbox, key: str) -> None:
    store.probe()
    before = store.round_trips
    outcomes = store.store_messages(_requests(100, key=key), T0)
    assert all(isinstance(o, StoreResult) and o.seqs == (1,) for o in outcomes)
    assert store.round_trips - before <= 20  # measured: 5, or 6 with keys


def test_concurrent_pushes_share_round_trips(store: MongoInbox) -> None:
    store.probe()
    before = store.round_trips
    jobs = [
        gevent.spawn(store.store_message, msg(), [f"c{i}", "shared"], "", T0) for i in range(100)
    ]
    gevent.joinall(jobs, raise_error=True)
    assert sorted(j.value.seqs[1] for j in jobs) == list(range(1, 101))
    assert store.round_trips - before <= 20


def test_streams_of_groups_cost_four_commands_per_group_and_read_no_counters(
    store: MongoInbox,
) -> None:
    """Stream-like callers, each sending a group of unicast pushes and waiting
    for it: their groups share one batch, and once this process has written a
    user's seqs (fresh hints) a batch costs the bodies, the entries, the counters
    raise and the commit -- no counters read."""
    callers, group, rounds = 4, 8, 6
    users = [f"st{i}" for i in range(callers * group)]
    store.probe()

    def caller(c: int) -> None:
        for _ in range(rounds):
            requests = [StoreRequest(msg(), (u,)) for u in users[c * group : (c + 1) * group]]
            outcomes = store.store_messages(requests, T0)
            assert all(isinstance(o, StoreResult) for o in outcomes)

    caller(0)  # the first writes create these users' counters
    gevent.joinall([gevent.spawn(caller, c) for c in range(1, callers)], raise_error=True)
    batches, before = store._batcher.batches, store.round_trips
    counters = store.database.commands_sent(["counters"])
    gevent.joinall([gevent.spawn(caller, c) for c in range(callers)], raise_error=True)
    sent = store.round_trips - before
    n = store._batcher.batches - batches
    assert n <= rounds + 1  # the callers' groups went together
    assert sent == 4 * n  # measured: 24 for 192 pushes, 0.125 a push
    assert store.database.commands_sent(["counters"]) - counters == n  # raises only
    for u in users:
        page = store.read_inbox(u, 0, 100, T0)
        assert [e.seq for e in page.entries] == list(range(1, 2 * rounds + 1))


def test_two_writers_taking_turns_with_the_same_users_do_not_collide_per_user(
    live: FerretDB, store: MongoInbox
) -> None:
    """Fresh hints go stale when another node pushes to the same users: the batch
    that finds out reads their counters once, instead of a collision (two round
    trips, and a bounded number of them) per user."""
    other = MongoInbox(
        MongoDatabase(live.uri, store.database.name, server_selection_timeout=TIMEOUT)
    )
    try:
        users = tuple(f"tw{i}" for i in range(300))
        for turn in range(4):
            for writer in (store, other):
                before = writer.round_trips
                (outcome,) = writer.store_messages([StoreRequest(msg(), users)], T0)
                assert isinstance(outcome, StoreResult), outcome
                assert outcome.seqs == (2 * turn + (writer is other) + 1,) * 300
                # Entries and counter raises go FERRETDB_BATCH per command on FerretDB.
                per_command = FERRETDB_BATCH if writer.database.ferretdb else 300
                assert writer.round_trips - before <= 8 + 2 * (300 // per_command)
    finally:
        other.close()


def test_a_push_to_1000_users_costs_a_handful_of_round_trips(store: MongoInbox) -> None:
    store.probe()
    users = [f"u{i}" for i in range(1000)]
    # FerretDB takes entries (and raises of existing counters) 50 per command:
    # it keeps an insert's order only within a batch of its own, and updates
    # documents one by one. One command each on MongoDB.
    per_command = FERRETDB_BATCH if store.database.ferretdb else 1000
    before = store.round_trips
    (outcome,) = store.store_messages([StoreRequest(msg(), tuple(users))], T0)
    assert isinstance(outcome, StoreResult) and outcome.seqs == (1,) * 1000
    assert store.round_trips - before <= 7 + 1000 // per_command  # measured: 24 / 5
    # Again: now every counter exists and is raised, not inserted.
    before = store.round_trips
    (outcome,) = store.store_messages([StoreRequest(msg(), tuple(users))], T0)
    assert isinstance(outcome, StoreResult) and outcome.seqs == (2,) * 1000
    assert store.round_trips - before <= 7 + 2 * (1000 // per_command)  # measured: 44 / 5


# -- the protocol's corners ------------------------------------------------------------


def _in_flight(store: MongoInbox, user: str, seq: int) -> Message:
    """Another writer's push between its entries and its commit."""
    m = msg()
    store._messages.insert_one(
        {
            "_id": m.id,
            "w": "other",
            "payload": b"{}",
            "content_type": "application/json",
            "created_at": T0,
            "exp": T0 + 3600,
            "t": T0,
            "pending": True,
        }
    )
    store._inbox.insert_one(
        {"user_id": user, "seq": seq, "message_id": m.id, "w": "other", "exp": T0 + 3600}
    )
    return m


def test_a_taken_seq_is_skipped_and_readers_wait_for_the_push_holding_it(
    store: MongoInbox,
) -> None:
    store.store_message(msg(), ["alice"], "", T0)
    other = _in_flight(store, "alice", 2)  # its counter is not raised yet
    mine = store.store_message(msg(), ["alice", "bob"], "", T0)
    assert mine.seqs == (3, 1)
    # Readers stop at the push in flight, however many commit above it.
    page = store.read_inbox("alice", 0, 10, T0)
    assert [e.seq for e in page.entries] == [1] and page.blocked_at == 2
    # It commits: everything is readable, in order.
    store._messages.update_one({"_id": other.id}, {"$set": {"pending": False}})
    page = store.read_inbox("alice", 0, 10, T0)
    assert [e.seq for e in page.entries] == [1, 2, 3] and page.blocked_at is None


def _readable(store: MongoInbox, user: str) -> list[tuple[int, str]]:
    return [(e.seq, e.message.id) for e in store.read_inbox(user, 0, 100, T0).entries]


def test_entries_past_ferretdbs_insert_batch_are_all_written_after_a_taken_seq(
    store: MongoInbox,
) -> None:
    """FerretDB keeps an insert's order only within its own batch of 100: past a
    duplicate key it went on with the next batch and counted those in
    ``nInserted``, so 49 recipients here were answered seqs never written (the
    fault benchmark's missing deliveries). Every answered seq is written."""
    users = [f"wide{i}" for i in range(150)]
    other = _in_flight(store, users[5], 1)  # the sixth recipient's seq 1 is taken
    m = msg()
    (outcome,) = store.store_messages([StoreRequest(m, tuple(users))], T0)
    assert isinstance(outcome, StoreResult), outcome
    assert outcome.seqs == (1,) * 5 + (2,) + (1,) * 144
    store._messages.update_one({"_id": other.id}, {"$set": {"pending": False}})
    for user, seq in zip(users, outcome.seqs, strict=True):
        mine = [(seq, m.id)]
        assert _readable(store, user) == ([(1, other.id), *mine] if user == users[5] else mine)


def test_a_server_that_inserts_past_a_taken_seq_fails_the_batch_and_loses_nothing() -> None:
    """A FerretDB whose insert batch is smaller than the store's commands goes on
    past a duplicate key: the store cannot tell which entries it wrote, so the
    push fails and what it wrote becomes tombstones; the store cuts its commands
    smaller each time, and a retry soon writes every seq."""
    with FerretDB(args=["--test-batch-size=10"]) as server:
        store = MongoInbox(MongoDatabase(server.uri, "narrow", server_selection_timeout=TIMEOUT))
        try:
            users = [f"narrow{i}" for i in range(30)]
            other = _in_flight(store, users[2], 1)
            (failed,) = store.store_messages([StoreRequest(msg(), tuple(users))], T0)
            assert isinstance(failed, StoreUnavailable) and "past a duplicate" in str(failed)
            assert count(store, "messages", {"_id": {"$ne": other.id}}) == 0
            store._messages.update_one({"_id": other.id}, {"$set": {"pending": False}})
            m = msg()
            for _ in range(4):  # 50 entries per command, then at most half each time
                (outcome,) = store.store_messages([StoreRequest(m, tuple(users))], T0)
                if not isinstance(outcome, StoreUnavailable):
                    break
            assert isinstance(outcome, StoreResult), outcome
            for user, seq in zip(users, outcome.seqs, strict=True):
                mine = [(seq, m.id)]
                assert _readable(store, user) == (
                    [(1, other.id), *mine] if user == users[2] else mine
                )
        finally:
            store.close()


def test_latest_seqs_see_entries_above_a_counter_that_lost_an_update(
    live: FerretDB, store: MongoInbox
) -> None:
    """FerretDB's ``$max`` reads, then writes: two nodes raising one counter at
    once can leave it below a committed entry. The position check (``latest_seqs``)
    must not take such a counter's word, or a live connection whose announcement
    was lost waits for the user's next message."""
    for _ in range(3):
        store.store_message(msg(), ["alice"], "", T0)
    store.store_message(msg(), ["bob"], "", T0)
    store._counters.update_one({"_id": "alice"}, {"$set": {"seq": 1}})  # the lost update
    other = MongoInbox(
        MongoDatabase(live.uri, store.database.name, server_selection_timeout=TIMEOUT)
    )
    try:  # another node: nothing of its own to go by
        assert other.user_starts(["alice"])["alice"].latest_seq == 1
        expected = 1 if other.atomic_updates else 3  # MongoDB's $max loses nothing
        assert other.latest_seqs(["alice", "bob", "carol"]) == {
            "alice": expected,
            "bob": 1,
            "carol": 0,
        }
    finally:
        other.close()


def test_a_batch_past_its_lease_gives_up_and_leaves_tombstones(store: MongoInbox) -> None:
    store.store_message(msg(), ["alice"], "", T0)
    store.lease = -1.0  # every batch is late
    m = msg()
    with pytest.raises(StoreUnavailable, match="took over"):
        store.store_message(m, ["alice", "bob"], "k-late", T0)
    store.lease = 60.0
    assert store.read_inbox("alice", 0, 10, T0) == InboxPage(
        (store.read_inbox("alice", 0, 1, T0).entries[0],)
    )
    assert store.read_inbox("bob", 0, 10, T0) == InboxPage(())
    assert count(store, "idempotency") == 0
    with pytest.raises(NotFound):
        store.message_status(m.id, T0)
    # Its seqs stay taken (the counters were raised over them): never reused.
    assert store.user_starts(["alice", "bob"])["alice"].latest_seq == 2
    again = store.store_message(m, ["alice", "bob"], "k-late", T0)
    assert not again.duplicate and again.seqs == (3, 2)
    assert [e.seq for e in store.read_inbox("alice", 0, 10, T0).entries] == [1, 3]


def test_a_batch_still_finding_free_seqs_at_its_lease_gives_up(store: MongoInbox) -> None:
    """A batch's pending bodies hold its users' readers: one that meets taken seqs
    on a slow store gives up at its lease instead of holding them longer, and
    what it wrote stays taken as tombstones."""
    _in_flight(store, "alice", 1)  # alice's seq 1 is taken (counter not raised)
    store.lease = -1.0  # every batch is late
    (out,) = store.store_messages([StoreRequest(msg(), ("bob", "alice"))], T0)
    store.lease = 60.0
    assert isinstance(out, StoreUnavailable) and "took over" in str(out)
    assert store.collisions == 1
    assert store.read_inbox("bob", 0, 10, T0) == InboxPage(())  # its entry: a tombstone
    assert store.user_starts(["bob"])["bob"].latest_seq == 1  # ...whose seq stays taken
    assert store.store_message(msg(), ["bob"], "", T0).seqs == (2,)


def test_a_writer_whose_body_was_abandoned_does_not_report_success(
    store: MongoInbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    m = msg()
    real = store._raise_counters

    def sweeper_meanwhile(*args: Any, **kwargs: Any) -> None:
        real(*args, **kwargs)
        store._messages.delete_one({"_id": m.id, "pending": True})  # what sweep does

    monkeypatch.setattr(store, "_raise_counters", sweeper_meanwhile)
    with pytest.raises(StoreUnavailable, match="abandoned"):
        store.store_message(m, ["alice"], "k-ab", T0)
    monkeypatch.undo()
    assert store.read_inbox("alice", 0, 10, T0) == InboxPage(())
    assert count(store, "idempotency") == 0
    assert store.store_message(msg(), ["alice"], "", T0).seqs == (2,)


def test_a_commit_that_applied_despite_an_error_is_reported_stored(
    store: MongoInbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    m = msg()
    real = store._messages.update_many

    def applied_then_lost(*args: Any, **kwargs: Any) -> Any:
        real(*args, **kwargs)  # the commit
        raise AutoReconnect("connection reset after the write (injected)")

    monkeypatch.setattr(store._messages, "update_many", applied_then_lost)
    result = store.store_message(m, ["alice"], "k-applied", T0)
    monkeypatch.undo()
    assert result.seqs == (1,) and not result.duplicate
    assert [e.message.id for e in store.read_inbox("alice", 0, 10, T0).entries] == [m.id]
    assert store.store_message(msg(), ["alice"], "k-applied", T0).duplicate


def test_a_page_with_a_hole_is_read_again(
    store: MongoInbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    for _ in range(4):
        store.store_message(msg(), ["alice"], "", T0)
    real = store._inbox.find
    queries: list[dict[str, Any]] = []

    def cursor_missed_seq_2(query: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        # A MongoDB cursor that yielded may miss an entry inserted meanwhile.
        queries.append(query)
        docs = list(real(query, *args, **kwargs))
        return [d for d in docs if d["seq"] != 2] if len(queries) == 1 else docs

    monkeypatch.setattr(store._inbox, "find", cursor_missed_seq_2)
    page = store.read_inbox("alice", 0, 10, T0)
    assert [e.seq for e in page.entries] == [1, 2, 3, 4]
    assert queries[1]["seq"] == {"$gt": 0, "$lte": 4}


def test_pages_skip_runs_of_tombstones(store: MongoInbox) -> None:
    store.store_message(msg(), ["alice"], "", T0)
    store.lease = -1.0
    for _ in range(5):
        with pytest.raises(StoreUnavailable):
            store.store_message(msg(), ["alice"], "", T0)
    store.lease = 60.0
    store.store_message(msg(), ["alice"], "", T0)
    store.store_message(msg(), ["alice"], "", T0)
    page = store.read_inbox("alice", 1, 1, T0)
    assert [e.seq for e in page.entries] == [7] and page.more
    page = store.read_inbox("alice", 7, 1, T0)
    assert [e.seq for e in page.entries] == [8] and not page.more


def test_a_message_id_pending_for_a_push_in_flight_is_not_taken_over(
    store: MongoInbox,
) -> None:
    other = _in_flight(store, "alice", 1)
    same_id = Message(other.id, b"{}", "application/json", T0, T0 + 3600)
    with pytest.raises(StoreUnavailable, match="being stored by another push"):
        store.store_message(same_id, ["bob"], "", T0 + 10)
    # Past the grace its writer is dead: the retry abandons it and stores.
    later = T0 + PENDING_GRACE + 1
    assert store.store_message(same_id, ["bob"], "", later).seqs == (1,)
    assert store.read_inbox("alice", 0, 10, later) == InboxPage(())  # a tombstone now
    assert [e.message.id for e in store.read_inbox("bob", 0, 10, later).entries] == [other.id]


def test_a_key_held_by_a_push_in_flight_waits_then_is_taken_over_past_the_grace(
    store: MongoInbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("pushsvc.store.mongo.CLAIM_WAIT", 0.2)
    other = _in_flight(store, "alice", 1)
    store.database.db["idempotency"].insert_one(
        {
            "_id": "k-held",
            "message_id": other.id,
            "w": "other",
            "users": ["alice"],
            "created_at": T0,
            "exp": T0 + 86_400,
        }
    )
    with pytest.raises(StoreUnavailable, match="still being stored"):
        store.store_message(msg(), ["alice"], "k-held", T0 + 10)
    later = T0 + PENDING_GRACE + 1
    taken = store.store_message(msg(), ["alice"], "k-held", later)
    assert not taken.duplicate and taken.seqs == (2,)
    page = store.read_inbox("alice", 0, 10, later)
    assert [e.seq for e in page.entries] == [2] and page.blocked_at is None
    assert store.store_message(msg(), ["alice"], "k-held", later).duplicate


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


def test_callers_that_find_the_store_not_set_up_set_it_up_once(
    store: MongoInbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After an outage at start, every caller used to set the store up itself:
    dozens of createIndexes at once."""
    setups: list[None] = []
    real = MongoInbox._setup
    go = gevent.event.Event()

    def setup(self: MongoInbox) -> None:
        setups.append(None)
        go.wait(30)  # the other callers arrive while this setup is under way
        real(self)

    monkeypatch.setattr(MongoInbox, "_setup", setup)
    store._ready = False
    callers = [gevent.spawn(store.user_starts, ["alice"]) for _ in range(20)]
    gevent.idle()  # every caller runs until it waits: one in the setup, the rest for it
    go.set()
    gevent.joinall(callers, timeout=60, raise_error=True)
    assert all(c.successful() for c in callers)
    assert len(setups) == 1


def test_a_restarted_node_finds_its_indexes_and_creates_none(
    store: MongoInbox, live: FerretDB, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FerretDB 1.24 deadlocks on a createIndexes that arrives while its pool is
    busy with reads: a node restarted into a busy fleet must not send one."""
    created: list[object] = []
    real = Collection.create_index

    def create_index(coll: Collection[Any], keys: Any, **kwargs: Any) -> str:
        created.append(keys)
        return real(coll, keys, **kwargs)

    monkeypatch.setattr(Collection, "create_index", create_index)
    again = MongoInbox(
        MongoDatabase(live.uri, store.database.name, server_selection_timeout=TIMEOUT)
    )
    try:
        assert again.user_starts(["alice"]) == {"alice": UserStart(0, 0)}
        assert created == []
        assert again.ttl_indexes == store.ttl_indexes
    finally:
        again.close()
