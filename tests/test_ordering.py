"""The ordering state machine (``pushsvc/ordering.py``), sans I/O.

A model of one user's inbox under the store's seq-visibility invariant (seqs
are inserted in order; an inserted seq is pending until its push commits or is
abandoned; committed seqs may expire) drives connections through arbitrary
interleavings of commits, late and lost live announcements, pages read at one
moment and delivered at another, failed reads, timers, acks and reconnects with
``since``. After every step: no duplicate, order kept, the connection moved
past a seq only if the store had deleted it, and nothing acked that was not
sent. At the end, with the writers settled, every committed seq reached the
connection.
"""

from __future__ import annotations

import copy
import itertools
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
)

from pushsvc.ordering import AckError, Ordering, Read, ReadLater, Send

PENDING, COMMITTED, DELETED = "pending", "committed", "deleted"

Item = tuple[str, int]  # ("m", seq): what a Send carries, checked against its seq
Page = tuple[list[tuple[int, Item]], int | None, bool]  # entries, blocked_at, more


# -- unit cases -------------------------------------------------------------------


def test_start_reads_after_the_start_point() -> None:
    o: Ordering[Item] = Ordering()
    assert o.start(7) == [Read(7)]
    assert not o.live


def test_nothing_to_replay_is_live_at_once() -> None:
    o: Ordering[Item] = Ordering()
    assert o.start(4, latest=4) == []
    assert o.live
    assert o.on_live(5, ("m", 5)) == [Send(5, ("m", 5))]
    # Behind the latest: read first.
    p: Ordering[Item] = Ordering()
    assert p.start(3, latest=4) == [Read(3)]


def test_replay_then_live() -> None:
    o: Ordering[Item] = Ordering()
    o.start(0)
    assert o.on_page([(1, ("m", 1)), (2, ("m", 2))]) == [Send(1, ("m", 1)), Send(2, ("m", 2))]
    assert o.live
    assert o.on_live(3, ("m", 3)) == [Send(3, ("m", 3))]


def test_live_message_during_replay_is_sent_once() -> None:
    o: Ordering[Item] = Ordering()
    o.start(0)
    assert o.on_live(2, ("m", 2)) == []  # a read is outstanding: it will cover seq 1 and 2
    actions = o.on_page([(1, ("m", 1))])
    assert actions == [Send(1, ("m", 1)), Read(1)]  # 2 was announced after the read began
    assert o.on_page([(2, ("m", 2))]) == [Send(2, ("m", 2))]
    assert o.live


def test_gap_in_live_starts_a_read() -> None:
    o: Ordering[Item] = Ordering()
    o.start(0)
    o.on_page([])
    assert o.on_live(2, ("m", 2)) == [Read(0)]
    assert o.on_page([(1, ("m", 1)), (2, ("m", 2))]) == [Send(1, ("m", 1)), Send(2, ("m", 2))]


def test_seq_in_flight_blocks_without_a_timer_skip() -> None:
    o: Ordering[Item] = Ordering()
    o.start(0)
    assert o.on_page([], blocked_at=1) == [ReadLater(0)]
    assert o.blocked_at == 1
    # However often the store still says "in flight", the connection waits.
    for _ in range(100):
        assert o.on_page([], blocked_at=1) == [ReadLater(0)]
    assert o.position == 0
    # Seq 2 committed first: it waits behind 1 (no read for it while blocked).
    assert o.on_live(2, ("m", 2)) == []
    # The pending read returns still blocked; 2 was announced since it was
    # issued, so one more read now, then back to waiting.
    assert o.on_page([], blocked_at=1) == [Read(0)]
    assert o.on_page([], blocked_at=1) == [ReadLater(0)]
    # 1 commits and is announced: sent, then 2 is read.
    assert o.on_live(1, ("m", 1)) == [Send(1, ("m", 1)), Read(1)]
    assert o.on_page([(2, ("m", 2))]) == [Send(2, ("m", 2))]
    assert o.live


def test_announced_seq_missing_from_a_later_complete_read_is_gone() -> None:
    o: Ordering[Item] = Ordering()
    o.start(0)
    o.on_page([])
    assert o.on_live(3, ("m", 3)) == [Read(0)]
    # The read began after 3 was announced (so after it committed) and did not
    # return it: 1 to 3 were deleted (expired) meanwhile.
    assert o.on_page([]) == []
    assert o.position == 3 and o.live
    assert o.last_sent == 0


def test_ack_beyond_what_was_sent_is_refused() -> None:
    o: Ordering[Item] = Ordering()
    o.start(5)
    assert o.on_ack(5) is True  # the start point counts as received
    assert o.on_ack(4) is False  # lower than an earlier ack: nothing to store
    o.on_page([(6, ("m", 6))])
    assert o.on_ack(6) is True
    assert o.on_ack(6) is False
    with pytest.raises(AckError):
        o.on_ack(7)


def test_a_full_page_reads_on() -> None:
    o: Ordering[Item] = Ordering()
    o.start(0)
    assert o.on_page([(1, ("m", 1))], more=True) == [Send(1, ("m", 1)), Read(1)]


def test_failed_read_is_retried_later() -> None:
    o: Ordering[Item] = Ordering()
    o.start(3)
    assert o.on_read_failed() == [ReadLater(3)]


def test_stale_blocked_page_after_a_live_unblock_reads_on() -> None:
    o: Ordering[Item] = Ordering()
    o.start(0)
    assert o.on_page([], blocked_at=1) == [ReadLater(0)]
    assert o.on_live(1, ("m", 1)) == [Send(1, ("m", 1)), Read(1)]
    # The page of the ReadLater read that was already under way arrives.
    assert o.on_page([], blocked_at=1) == [Read(1)]


def test_position_check_reads_when_behind_and_never_skips_a_seq_in_flight() -> None:
    o: Ordering[Item] = Ordering()
    o.start(0)
    o.on_page([])
    assert o.live
    assert o.on_behind(0) == []  # not behind
    assert o.on_behind(3) == [Read(0)]  # announcements of 1..3 were lost
    # 3 is still in flight: the page says so, and the connection waits.
    assert o.on_page([(1, ("m", 1))], blocked_at=2) == [Send(1, ("m", 1)), ReadLater(1)]
    assert o.position == 1


def test_the_answer_to_a_replaced_read_changes_nothing() -> None:
    """Found by the model: a ReadLater's read is under way when a live message unblocks
    the connection and it reads again, and meanwhile the position check reported seq 3,
    still in flight. The older read's page, begun before 3 existed, says nothing of 3:
    taken for the newer read's, it made the connection skip 3 and drop it when it came."""
    o: Ordering[Item] = Ordering()
    [first] = o.start(0, latest=2)  # 1 and 2 in flight
    assert isinstance(first, Read)
    [later] = o.on_page([], blocked_at=1, token=first.token)
    assert isinstance(later, ReadLater) and later == ReadLater(0)
    # Its pause ends and its read begins: 1 is committed, 2 abandoned. Then 3 is
    # allocated, and the position check sees it (the read under way will answer).
    assert o.on_behind(3) == []
    send, newer = o.on_live(1, ("m", 1))  # the announcement of 1 unblocks: read again
    assert (send, newer) == (Send(1, ("m", 1)), Read(1))
    assert o.on_page([(1, ("m", 1))], token=later.token) == []  # the older read's answer
    assert o.position == 1
    # The newer read sees 3 in flight: blocked there, nothing skipped.
    assert isinstance(newer, Read)
    [again] = o.on_page([], blocked_at=3, token=newer.token)
    assert isinstance(again, ReadLater) and again == ReadLater(1)
    assert o.on_live(3, ("m", 3)) == []  # a gap (2): the pending read covers it
    assert o.on_page([(3, ("m", 3))], token=again.token) == [Send(3, ("m", 3))]


def test_closed_machine_does_nothing() -> None:
    o: Ordering[Item] = Ordering()
    o.start(0)
    o.close()
    assert o.on_page([(1, ("m", 1))]) == []
    assert o.on_live(1, ("m", 1)) == []


def _state(machine: Ordering[Item]) -> dict[str, object]:
    return {name: getattr(machine, name) for name in Ordering.__slots__}


# -- the model --------------------------------------------------------------------


@dataclass
class PendingRead:
    after: int
    token: int
    page: Page | None = None  # None until the store executed the read


@dataclass
class Conn:
    """One connection: the machine, and the driver's pending I/O."""

    machine: Ordering[Item]
    start: int
    sent: list[int] = field(default_factory=list)
    #: reads under way, as the node's replay workers have them: a Read does not
    #: wait for a read whose pause ended, and the store may answer them in any order
    reads: list[PendingRead] = field(default_factory=list)
    timer: tuple[int, int] | None = None  # (after, token) of a pending ReadLater
    inbound: deque[int] = field(default_factory=deque)  # live announcements in transit


class OrderingModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.store: dict[int, str] = {}
        self.limit = 3
        self.conn: Conn | None = None
        self.received_max = 0  # the client's dedupe point across reconnects
        self.lost: set[int] = set()  # seqs whose announcement never reached the connection
        self.closed: list[Conn] = []

    # -- the store ------------------------------------------------------------------

    def _page(self, after: int) -> Page:
        entries: list[tuple[int, Item]] = []
        for seq in sorted(s for s in self.store if s > after):
            state = self.store[seq]
            if state == DELETED:
                continue
            if state == PENDING:
                return entries, seq, False
            entries.append((seq, ("m", seq)))
            if len(entries) == self.limit:
                return entries, None, True
        return entries, None, False

    @rule(limit=st.integers(1, 4))
    def page_size(self, limit: int) -> None:
        self.limit = limit

    @rule()
    def insert(self) -> None:
        """A writer allocates the next seq (visible to readers as in flight)."""
        self.store[len(self.store) + 1] = PENDING

    @rule(data=st.data(), lost=st.booleans())
    def commit(self, data: st.DataObject, lost: bool) -> None:
        pending = [s for s, v in self.store.items() if v == PENDING]
        if not pending:
            return
        seq = data.draw(st.sampled_from(pending))
        self.store[seq] = COMMITTED
        if self.conn is not None:
            if lost:
                self.lost.add(seq)  # this connection never hears of it live
            else:
                self.conn.inbound.append(seq)  # the announcement, possibly late

    @rule(data=st.data())
    def abandon(self, data: st.DataObject) -> None:
        """A push failed (or its writer died and the sweeper abandoned it)."""
        pending = [s for s, v in self.store.items() if v == PENDING]
        if pending:
            self.store[data.draw(st.sampled_from(pending))] = DELETED

    @rule(data=st.data())
    def expire(self, data: st.DataObject) -> None:
        committed = [s for s, v in self.store.items() if v == COMMITTED]
        if committed:
            self.store[data.draw(st.sampled_from(committed))] = DELETED

    # -- the connection and its driver ----------------------------------------------

    def _apply(self, conn: Conn, actions: Sequence[object]) -> None:
        for action in actions:
            if isinstance(action, Send):
                assert action.item == ("m", action.seq)
                conn.sent.append(action.seq)
                self.received_max = max(self.received_max, action.seq)
            elif isinstance(action, Read):
                conn.timer = None  # a pending ReadLater is cancelled (not one under way)
                conn.reads.append(PendingRead(action.after, action.token))
            elif isinstance(action, ReadLater):
                conn.timer = (action.after, action.token)
            else:
                raise AssertionError(action)

    @precondition(lambda self: self.conn is None)
    @rule(from_acked=st.booleans())
    def connect(self, from_acked: bool) -> None:
        """Connect with since = what the client processed (or from the start)."""
        start = self.received_max if from_acked else 0
        conn = Conn(Ordering(), start)
        self.conn = conn
        self.lost = set()
        # The store's latest seq at the welcome: every seq inserted so far (a
        # push in flight included), as the counters read says.
        latest = max(self.store, default=0)
        self._apply(conn, conn.machine.start(start, latest))

    @precondition(lambda self: self.conn is not None)
    @rule()
    def disconnect(self) -> None:
        assert self.conn is not None
        self.conn.machine.close()
        self.closed.append(self.conn)
        self.conn = None

    @precondition(lambda self: self.conn is not None and self.conn.inbound)
    @rule(data=st.data())
    def announce(self, data: st.DataObject) -> None:
        """Deliver one announcement in transit, in any order."""
        assert self.conn is not None
        i = data.draw(st.integers(0, len(self.conn.inbound) - 1))
        seq = self.conn.inbound[i]
        del self.conn.inbound[i]
        machine = self.conn.machine
        if data.draw(st.booleans(), label="through take_live"):
            # The connection's fast path: where it takes the seq, exactly what on_live
            # does (one Send, the same state after); where it refuses, no change.
            twin = copy.copy(machine)
            expected = twin.on_live(seq, ("m", seq))
            before = _state(machine)
            if machine.take_live(seq):
                assert expected == [Send(seq, ("m", seq))]
                assert _state(machine) == _state(twin)
                self._apply(self.conn, expected)
                return
            assert _state(machine) == before
        self._apply(self.conn, machine.on_live(seq, ("m", seq)))

    @precondition(lambda self: self.conn is not None)
    @rule()
    def position_check(self) -> None:
        """The periodic check: the highest seq inserted so far (it may be in flight)."""
        assert self.conn is not None
        if self.store:
            self._apply(self.conn, self.conn.machine.on_behind(max(self.store)))

    @precondition(lambda self: self.conn is not None and self.conn.reads)
    @rule(data=st.data())
    def execute_read(self, data: st.DataObject) -> None:
        """The store answers one read now; the answer arrives in a later step."""
        assert self.conn is not None and self.conn.reads
        self._execute(data.draw(st.sampled_from(self.conn.reads)))

    def _execute(self, read: PendingRead) -> None:
        if read.page is None:
            read.page = self._page(read.after)

    @precondition(
        lambda self: self.conn is not None and any(r.page is not None for r in self.conn.reads)
    )
    @rule(data=st.data(), fail=st.booleans())
    def deliver_page(self, data: st.DataObject, fail: bool) -> None:
        assert self.conn is not None
        answered = [r for r in self.conn.reads if r.page is not None]
        self._deliver(data.draw(st.sampled_from(answered)), fail)

    def _deliver(self, read: PendingRead, fail: bool) -> None:
        assert self.conn is not None and read.page is not None
        entries, blocked_at, more = read.page
        self.conn.reads.remove(read)
        machine = self.conn.machine
        if fail:
            self._apply(self.conn, machine.on_read_failed(read.token))
        else:
            actions = machine.on_page(entries, blocked_at=blocked_at, more=more, token=read.token)
            self._apply(self.conn, actions)

    @precondition(lambda self: self.conn is not None and self.conn.timer is not None)
    @rule()
    def fire_timer(self) -> None:
        assert self.conn is not None and self.conn.timer is not None
        after, token = self.conn.timer
        self.conn.reads.append(PendingRead(after, token))
        self.conn.timer = None

    @precondition(lambda self: self.conn is not None)
    @rule(data=st.data())
    def ack(self, data: st.DataObject) -> None:
        assert self.conn is not None
        m = self.conn.machine
        if not m.started:
            return
        seq = data.draw(st.integers(0, m.last_sent + 2))
        if seq > m.last_sent:
            with pytest.raises(AckError):
                m.on_ack(seq)
        else:
            m.on_ack(seq)
            assert seq <= m.last_sent

    # -- what must hold after every step --------------------------------------------

    @invariant()
    def sent_in_order_without_gaps(self) -> None:
        for conn in ([self.conn] if self.conn else []) + self.closed:
            seqs = conn.sent
            assert all(a < b for a, b in itertools.pairwise(seqs)), seqs
            assert not seqs or seqs[0] > conn.start, (conn.start, seqs)
            sent = set(seqs)
            # Every seq the connection moved past without sending is gone for good.
            for s in range(conn.start + 1, conn.machine.position + 1):
                if s not in sent:
                    assert self.store.get(s) == DELETED, (s, self.store, seqs)
            assert conn.machine.acked <= conn.machine.last_sent

    def teardown(self) -> None:
        """Settle every writer and all I/O: the open connection gets everything."""
        conn = self.conn
        if conn is None:
            return
        for seq, state in self.store.items():
            if state == PENDING:
                self.store[seq] = COMMITTED
                conn.inbound.append(seq)
        self._settle(conn)
        # Without the periodic check, everything whose announcement arrived (or that
        # was committed before the connection read its start) has been sent.
        committed = {s for s, v in self.store.items() if v == COMMITTED and s > conn.start}
        assert committed - self.lost <= set(conn.sent), (committed, self.lost, conn.sent)
        # The node's periodic position check recovers lost announcements too.
        if self.store:
            self._apply(conn, conn.machine.on_behind(max(self.store)))
        self._settle(conn)
        self.sent_in_order_without_gaps()
        assert conn.machine.live
        expected = [s for s, v in sorted(self.store.items()) if v == COMMITTED and s > conn.start]
        assert [s for s in conn.sent if self.store[s] == COMMITTED] == expected

    def _settle(self, conn: Conn) -> None:
        for _ in range(10_000):
            if conn.inbound:
                seq = conn.inbound.popleft()
                self._apply(conn, conn.machine.on_live(seq, ("m", seq)))
            elif conn.reads:
                self._execute(conn.reads[0])
                self._deliver(conn.reads[0], False)
            elif conn.timer is not None:
                self.fire_timer()
            else:
                break


OrderingModel.TestCase.settings = settings(
    max_examples=300,
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestOrderingModel = pytest.mark.timeout(600)(OrderingModel.TestCase)
