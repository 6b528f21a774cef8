"""The behavioural contract of ``pushsvc.store.inbox.InboxStore``, for every backend.

Every test passes explicit ``now`` values; nothing sleeps.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager as ContextManager

import gevent
import pytest

from pushsvc.errors import InvalidArgument, NotFound, StoreUnavailable
from pushsvc.messages import Message
from pushsvc.store.inbox import (
    IDEMPOTENCY_WINDOW,
    InboxEntry,
    InboxStore,
    StoreRequest,
    StoreResult,
    UserStart,
)

T0 = 1_700_000_000.0
TTL = 3600.0

_counter = 0


def msg(
    payload: bytes = b'{"n":1}',
    *,
    created_at: float = T0,
    expires_at: float | None = T0 + TTL,
    content_type: str = "application/json",
) -> Message:
    global _counter
    _counter += 1
    return Message(f"m{_counter:06d}", payload, content_type, created_at, expires_at)


def push(
    store: InboxStore,
    users: Sequence[str],
    *,
    key: str = "",
    now: float = T0,
    message: Message | None = None,
) -> StoreResult:
    return store.store_message(message or msg(created_at=now), users, key, now)


def seqs_of(store: InboxStore, user: str, now: float = T0) -> list[int]:
    return [e.seq for e in after(store, user, 0, 10_000, now)]


def after(store: InboxStore, user: str, seq: int, limit: int, now: float = T0) -> list[InboxEntry]:
    """The entries of one page (which must not be blocked)."""
    page = store.read_inbox(user, seq, limit, now)
    assert page.blocked_at is None
    return list(page.entries)


# -- seq allocation ---------------------------------------------------------------


def test_seq_strictly_increasing_per_user_and_independent(store: InboxStore) -> None:
    assert store.latest_seq("alice") == 0
    assert push(store, ["alice"]).seqs == (1,)
    assert push(store, ["alice", "bob"]).seqs == (2, 1)
    assert push(store, ["bob", "alice"]).seqs == (2, 3)
    assert push(store, ["carol"]).seqs == (1,)
    assert store.latest_seq("alice") == 3
    assert store.latest_seq("bob") == 2
    assert store.latest_seq("carol") == 1
    assert seqs_of(store, "alice") == [1, 2, 3]
    assert seqs_of(store, "bob") == [1, 2]


def test_concurrent_pushes_from_greenlets_get_distinct_consecutive_seqs(store: InboxStore) -> None:
    jobs = [gevent.spawn(push, store, ["alice"]) for _ in range(20)]
    gevent.joinall(jobs, raise_error=True)
    seqs = sorted(job.value.seqs[0] for job in jobs)
    assert seqs == list(range(1, 21))
    assert store.latest_seq("alice") == 20
    assert seqs_of(store, "alice") == list(range(1, 21))
    assert len({job.value.message_id for job in jobs}) == 20


def test_body_is_stored_once_for_many_recipients(
    store: InboxStore, count_bodies: Callable[[], int | None]
) -> None:
    users = [f"user-{i:04d}" for i in range(1000)]
    m = msg(b'{"big":true}')
    result = push(store, users, message=m)
    assert result.message_id == m.id
    assert result.seqs == (1,) * 1000
    status = store.message_status(m.id, T0)
    assert sorted(s.user_id for s in status) == sorted(users)
    for uid in (users[0], users[500], users[-1]):
        [entry] = after(store, uid, 0, 10, T0)
        assert entry.message == m
        assert entry.user_id == uid
    bodies = count_bodies()
    if bodies is not None:
        assert bodies == 1


# -- reading inboxes ----------------------------------------------------------------


def test_inbox_after_pages_in_seq_order(store: InboxStore) -> None:
    sent = [msg(f'{{"n":{i}}}'.encode()) for i in range(5)]
    for m in sent:
        push(store, ["alice"], message=m)
    push(store, ["bob"])

    page1 = after(store, "alice", 0, 2, T0)
    assert [(e.user_id, e.seq) for e in page1] == [("alice", 1), ("alice", 2)]
    assert [e.message for e in page1] == sent[:2]
    page2 = after(store, "alice", page1[-1].seq, 2, T0)
    assert [e.seq for e in page2] == [3, 4]
    assert [e.message for e in page2] == sent[2:4]
    page3 = after(store, "alice", 4, 2, T0)
    assert [e.seq for e in page3] == [5]
    assert after(store, "alice", 5, 2, T0) == []
    assert after(store, "alice", 0, 0, T0) == []
    assert after(store, "nobody", 0, 10, T0) == []
    assert [e.message.payload for e in after(store, "alice", 0, 100, T0)] == [
        m.payload for m in sent
    ]


def test_expired_entries_are_hidden_and_swept_with_their_bodies(
    store: InboxStore, count_bodies: Callable[[], int | None]
) -> None:
    short = msg(b'{"short":1}', expires_at=T0 + 100)
    long_ = msg(b'{"long":1}', expires_at=T0 + 3 * 3600)
    push(store, ["alice", "bob"], message=short)
    push(store, ["alice"], message=long_)
    assert count_bodies() in (None, 2)

    later = T0 + 150
    assert [e.message.id for e in after(store, "alice", 0, 10, later)] == [long_.id]
    assert after(store, "bob", 0, 10, later) == []
    # expiry is exclusive: an entry expiring at exactly `now` is gone
    assert after(store, "bob", 0, 10, T0 + 100) == []
    with pytest.raises(NotFound):
        store.message_status(short.id, later)
    assert store.message_status(short.id, T0)  # still there before its expiry

    # Stores may keep expired records a while (the Mongo inbox keeps entries
    # an hour, so their seqs are not reused); well after that they are gone.
    later = T0 + 2 * 3600
    removed = store.sweep(later)
    assert removed >= 3  # two inbox rows and one body
    assert count_bodies() in (None, 1)
    # swept for good: even an earlier clock no longer sees them
    assert [e.message.id for e in after(store, "alice", 0, 10, T0)] == [long_.id]
    assert after(store, "bob", 0, 10, T0) == []
    with pytest.raises(NotFound):
        store.message_status(short.id, T0)
    # seqs survive the sweep: allocation continues, never reuses
    assert store.latest_seq("bob") == 1
    fresh = msg(created_at=later, expires_at=later + TTL)
    assert push(store, ["bob"], now=later, message=fresh).seqs == (2,)
    assert store.sweep(later) == 0


def test_read_inbox_says_when_a_page_was_cut_at_the_limit(store: InboxStore) -> None:
    for _ in range(3):
        push(store, ["alice"])
    page = store.read_inbox("alice", 0, 2, T0)
    assert [e.seq for e in page.entries] == [1, 2]
    assert page.more and page.blocked_at is None
    page = store.read_inbox("alice", 2, 2, T0)
    assert [e.seq for e in page.entries] == [3]
    assert not page.more and page.blocked_at is None
    page = store.read_inbox("alice", 0, 3, T0)
    assert [e.seq for e in page.entries] == [1, 2, 3] and not page.more
    assert store.read_inbox("alice", 0, 0, T0).entries == ()


def test_user_starts_reads_latest_and_acked_seq_of_many_users(store: InboxStore) -> None:
    for _ in range(3):
        push(store, ["alice", "bob"])
    push(store, ["bob"])
    store.ack_many({"alice": 2, "carol": 4})
    starts = store.user_starts(["alice", "bob", "carol", "dave", "alice"])
    assert set(starts) == {"alice", "bob", "carol", "dave"}
    assert (starts["alice"].latest_seq, starts["alice"].acked_seq) == (3, 2)
    assert (starts["bob"].latest_seq, starts["bob"].acked_seq) == (4, 0)
    assert (starts["carol"].latest_seq, starts["carol"].acked_seq) == (0, 4)
    assert (starts["dave"].latest_seq, starts["dave"].acked_seq) == (0, 0)
    assert store.user_starts([]) == {}


def test_ack_never_lowers(store: InboxStore) -> None:
    assert store.acked_seq("alice") == 0
    store.ack("alice", 5)
    store.ack("alice", 3)
    assert store.acked_seq("alice") == 5
    store.ack("alice", 7)
    assert store.acked_seq("alice") == 7
    assert store.acked_seq("bob") == 0
    store.ack_many({"alice": 6, "bob": 2, "carol": -1})
    store.ack_many({})
    assert store.user_starts(["alice", "bob", "carol"]) == {
        "alice": UserStart(0, 7),
        "bob": UserStart(0, 2),
        "carol": UserStart(0, 0),
    }


# -- idempotency ------------------------------------------------------------------------


def test_idempotency_key_returns_the_first_result_and_stores_nothing(store: InboxStore) -> None:
    first = push(store, ["alice", "bob"], key="k-1")
    assert first.seqs == (1, 1) and not first.duplicate
    push(store, ["bob"])  # bob: seq 2, without a key

    again = push(store, ["bob", "carol", "alice"], key="k-1", now=T0 + 60)
    assert again.duplicate
    assert again.message_id == first.message_id
    assert again.seqs == (1, 0, 1)  # carol was not a recipient the first time
    assert store.latest_seq("alice") == 1
    assert store.latest_seq("bob") == 2
    assert store.latest_seq("carol") == 0
    assert seqs_of(store, "alice") == [1]
    assert seqs_of(store, "bob") == [1, 2]
    assert seqs_of(store, "carol") == []
    assert {s.user_id for s in store.message_status(first.message_id, T0)} == {"alice", "bob"}

    # an empty key never deduplicates
    assert push(store, ["dave"]).seqs == (1,)
    assert push(store, ["dave"]).seqs == (2,)


def test_idempotency_key_is_forgotten_after_the_window(store: InboxStore) -> None:
    first = push(store, ["alice"], key="k-2")
    edge = T0 + IDEMPOTENCY_WINDOW - 1
    assert push(store, ["alice"], key="k-2", now=edge).duplicate

    later = T0 + IDEMPOTENCY_WINDOW + 1
    # forgotten even before a sweep removes it
    fresh = push(store, ["alice"], key="k-2", now=later)
    assert not fresh.duplicate
    assert fresh.message_id != first.message_id
    assert fresh.seqs == (2,)
    # the new use of the key is now the one remembered
    dup = push(store, ["alice"], key="k-2", now=later + 10)
    assert dup.duplicate and dup.message_id == fresh.message_id and dup.seqs == (2,)

    # and after a sweep a key older than the window is gone too
    push(store, ["bob"], key="k-3", now=T0)
    store.sweep(later)
    assert not push(store, ["bob"], key="k-3", now=later).duplicate
    assert store.latest_seq("bob") == 2


# -- receipts ---------------------------------------------------------------------


def test_mark_delivered_and_message_status(store: InboxStore) -> None:
    m = msg(expires_at=T0 + 100)
    result = push(store, ["alice", "bob", "carol"], message=m)
    other = push(store, ["alice"])

    status = {s.user_id: s for s in store.message_status(m.id, T0)}
    assert set(status) == {"alice", "bob", "carol"}
    assert all(not s.delivered and not s.acked for s in status.values())
    assert [status[u].seq for u in ("alice", "bob", "carol")] == list(result.seqs)

    # bob's receipt came through a node that did not know the expiry (a forward
    # from a node of an earlier version): marked all the same
    store.mark_delivered(
        [(m.id, "alice", T0 + 100), (m.id, "bob", None), ("no-such-message", "alice", T0 + 100)]
    )
    store.mark_delivered([(m.id, "alice", T0 + 100)])  # a second device: marked once
    store.mark_delivered([])
    store.ack("bob", 1)
    store.ack("carol", 0)
    status = {s.user_id: s for s in store.message_status(m.id, T0)}
    assert (status["alice"].delivered, status["alice"].acked) == (True, False)
    assert (status["bob"].delivered, status["bob"].acked) == (True, True)
    assert (status["carol"].delivered, status["carol"].acked) == (False, False)
    # the receipt is per (message, user): alice's other message is untouched
    [o] = store.message_status(other.message_id, T0)
    assert (o.user_id, o.seq, o.delivered, o.acked) == ("alice", 2, False, False)

    store.ack("alice", 2)  # cumulative: covers seq 1 too
    assert {s.user_id: s.acked for s in store.message_status(m.id, T0)}["alice"]
    # the marks last as long as the message, and its sweep leaves them so
    store.sweep(T0 + 99)
    status = {s.user_id: s for s in store.message_status(m.id, T0 + 99)}
    assert [status[u].delivered for u in ("alice", "bob", "carol")] == [True, True, False]

    with pytest.raises(NotFound):
        store.message_status("no-such-message", T0)
    with pytest.raises(NotFound):
        store.message_status(m.id, T0 + 100)


def test_delivery_marks_are_per_pair_in_one_call(store: InboxStore) -> None:
    # Many pairs in one call (more than one statement holds on FerretDB), crossed so
    # that marking by message or by user alone would mark the wrong recipients.
    users = [f"u{i}" for i in range(6)]
    ids = [push(store, users).message_id for _ in range(20)]
    marked = {(m, u) for i, m in enumerate(ids) for j, u in enumerate(users) if (i + j) % 2}
    # half with the expiry known, half without (the two ways a mark is stored)
    store.mark_delivered(
        [(m, u, T0 + 3600 if (i % 2) else None) for i, (m, u) in enumerate(sorted(marked))]
    )
    for m in ids:
        for s in store.message_status(m, T0):
            assert s.delivered == ((m, s.user_id) in marked), (m, s.user_id)


# -- failures leave nothing behind ----------------------------------------------------


def test_invalid_message_raises_before_anything_is_written(store: InboxStore) -> None:
    with pytest.raises(InvalidArgument):
        push(store, ["alice"], key="k-bad", message=msg(expires_at=None))
    with pytest.raises(InvalidArgument):
        push(store, [], key="k-bad")
    assert store.latest_seq("alice") == 0
    assert after(store, "alice", 0, 10, T0) == []
    # the key was not consumed by the failed call
    ok = push(store, ["alice"], key="k-bad")
    assert not ok.duplicate and ok.seqs == (1,)


def test_failed_write_leaves_nothing_stored(
    store: InboxStore,
    inject_failure: Callable[[str], ContextManager[None]],
    count_bodies: Callable[[], int | None],
) -> None:
    push(store, ["alice"])
    m = msg()
    with inject_failure("zed"), pytest.raises(StoreUnavailable):
        push(store, ["alice", "bob", "zed"], key="k-fail", message=m)
    assert store.latest_seq("alice") == 1
    assert store.latest_seq("bob") == 0
    assert store.latest_seq("zed") == 0
    assert seqs_of(store, "alice") == [1]
    assert seqs_of(store, "bob") == []
    with pytest.raises(NotFound):
        store.message_status(m.id, T0)
    assert count_bodies() in (None, 1)
    # the store is still usable, and the retry is not taken for a duplicate
    retry = push(store, ["alice", "bob", "zed"], key="k-fail", message=m)
    assert not retry.duplicate
    assert retry.seqs == (2, 1, 1)


def test_probe(store: InboxStore) -> None:
    store.probe()
    store.probe()


# -- group commit: many requests, one call or many callers --------------------------


def request(users: Sequence[str], *, key: str = "", message: Message | None = None) -> StoreRequest:
    return StoreRequest(message or msg(), tuple(users), key)


def test_one_call_stores_each_request_and_keeps_list_order_per_user(store: InboxStore) -> None:
    push(store, ["bob"])
    outcomes = store.store_messages(
        [
            request(["alice"]),
            request(["alice", "bob"]),
            request(["bob"]),
            request(["carol", "alice"]),
        ],
        T0,
    )
    assert [o.seqs for o in outcomes if isinstance(o, StoreResult)] == [(1,), (2, 2), (3,), (1, 3)]
    assert seqs_of(store, "alice") == [1, 2, 3]
    assert seqs_of(store, "bob") == [1, 2, 3]
    assert store.store_messages([], T0) == []


def test_requests_of_one_call_fail_alone(store: InboxStore) -> None:
    stored = push(store, ["alice"])
    taken = msg()
    push(store, ["bob"], message=taken)
    outcomes = store.store_messages(
        [
            request(["alice"], message=msg(expires_at=None)),  # not storable
            request(["alice"]),
            request(["carol"], message=taken),  # its id is already stored
            request([]),
            request(["alice", "carol"]),
        ],
        T0,
    )
    assert isinstance(outcomes[0], InvalidArgument)
    assert isinstance(outcomes[2], InvalidArgument) and "already stored" in str(outcomes[2])
    assert isinstance(outcomes[3], InvalidArgument)
    assert [o.seqs for o in (outcomes[1], outcomes[4]) if isinstance(o, StoreResult)] == [
        (2,),
        (3, 1),
    ]
    assert seqs_of(store, "carol") == [1]
    last = outcomes[4]
    assert isinstance(last, StoreResult)
    assert [e.message.id for e in after(store, "carol", 0, 10)] == [last.message_id]
    assert stored.seqs == (1,)


def test_a_key_repeated_within_one_call_is_a_duplicate_of_its_first_use(
    store: InboxStore,
) -> None:
    first, again, other = store.store_messages(
        [request(["alice", "bob"], key="k"), request(["bob", "carol"], key="k"), request(["bob"])],
        T0,
    )
    assert isinstance(first, StoreResult) and isinstance(again, StoreResult)
    assert not first.duplicate and first.seqs == (1, 1)
    assert again.duplicate and again.message_id == first.message_id and again.seqs == (1, 0)
    assert isinstance(other, StoreResult) and other.seqs == (2,)
    assert seqs_of(store, "carol") == []
    # and in a later call
    (later,) = store.store_messages([request(["alice"], key="k")], T0 + 1)
    assert isinstance(later, StoreResult) and later.duplicate and later.seqs == (1,)


def test_concurrent_callers_share_round_trips(store: InboxStore) -> None:
    store.probe()  # connected and set up
    before = store.round_trips
    jobs = [gevent.spawn(push, store, ["alice", f"user-{i}"]) for i in range(50)]
    gevent.joinall(jobs, raise_error=True)
    assert sorted(job.value.seqs[0] for job in jobs) == list(range(1, 51))
    assert all(job.value.seqs[1] == 1 for job in jobs)
    # Group commit: far fewer round trips than pushes (one per push without it).
    assert store.round_trips - before <= 15
    assert seqs_of(store, "alice") == list(range(1, 51))


def test_a_failed_request_leaves_nothing_visible_and_others_are_whole(
    store: InboxStore, inject_failure: Callable[[str], ContextManager[None]]
) -> None:
    push(store, ["alice"])
    sent = [msg() for _ in range(3)]
    with inject_failure("zed"):
        outcomes = store.store_messages(
            [
                request(["alice", "bob"], message=sent[0]),
                request(["zed"], message=sent[1]),
                request(["bob"], key="k-z", message=sent[2]),
            ],
            T0,
        )
    assert isinstance(outcomes[1], StoreUnavailable)
    # A store may fail the whole group or only the request that failed; each
    # outcome says which, and only what succeeded is visible.
    visible = {u: [e.message.id for e in after(store, u, 0, 10)] for u in ("alice", "bob", "zed")}
    assert visible["zed"] == []
    expect: dict[str, list[str]] = {"alice": [visible["alice"][0]], "bob": [], "zed": []}
    for m, users, outcome in zip(sent, (["alice", "bob"], ["zed"], ["bob"]), outcomes, strict=True):
        if isinstance(outcome, StoreResult):
            for u in users:
                expect[u].append(m.id)
        else:
            assert isinstance(outcome, StoreUnavailable)
            with pytest.raises(NotFound):
                store.message_status(m.id, T0)
    assert visible == expect
    # nothing half-done holds the key or blocks the readers
    retry = push(store, ["bob"], key="k-z", message=sent[2])
    assert retry.message_id == sent[2].id
    assert store.read_inbox("bob", 0, 10, T0).blocked_at is None
