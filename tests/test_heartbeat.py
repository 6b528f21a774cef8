"""The node's periodic passes over its connections: they take turns with the rest
of the event loop, connections opened together are not pinged together, and the
position check knows which users have a push of this node in flight."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import gevent
import pytest

from pushsvc.auth import Identity
from pushsvc.metrics import Counters
from pushsvc.node import InFlight, in_turns
from pushsvc.session import PING_PHASE_SPREAD, Session, SessionLimits

INTERVAL = 10.0


def test_a_pass_in_turns_visits_everything_in_order_and_lets_others_run() -> None:
    items = list(range(1000))
    seen: list[int] = []
    other_ran_at: list[int] = []

    def walk() -> None:
        for some in in_turns(items, size=100):
            assert len(some) <= 100
            if not seen:  # ready while the pass runs: it must get its turn before the end
                gevent.spawn(lambda: other_ran_at.append(len(seen)))
            seen.extend(some)

    gevent.spawn(walk).join()
    gevent.sleep(0)
    assert seen == items
    assert other_ran_at == [100], other_ran_at  # right after the first slice


def test_a_pass_shorter_than_a_turn_does_not_yield() -> None:
    ran: list[bool] = []
    gevent.spawn(lambda: ran.append(True))
    assert [list(s) for s in in_turns([1, 2, 3], size=3)] == [[1, 2, 3]]
    assert ran == []  # nothing else got to run: one slice, no yield
    gevent.sleep(0)
    assert ran == [True]
    assert list(in_turns([], size=3)) == []


class _Node:
    """What a session's heartbeat touches of its node."""

    def __init__(self) -> None:
        self.counters = Counters()


@pytest.fixture
def sessions() -> Iterator[list[tuple[Session, socket.socket]]]:
    limits = SessionLimits(
        send_queue_size=16,
        max_replay=100,
        ping_interval=INTERVAL,
        ping_timeout=INTERVAL * 6,
        client_rate=100.0,
        client_burst=100,
        abuse_limit=10,
    )
    node = _Node()
    made = []
    for i in range(200):
        ours, theirs = socket.socketpair()
        theirs.setblocking(False)
        s = Session(f"c{i}", Identity(f"u{i}", 0.0), ours, node, limits, None)  # type: ignore[arg-type]
        made.append((s, ours, theirs))
    yield [(s, theirs) for s, _, theirs in made]
    for _, ours, theirs in made:
        ours.close()
        theirs.close()


def _pinged(theirs: socket.socket) -> bool:
    try:
        data = theirs.recv(1024)
    except BlockingIOError:
        return False
    assert data[:1] == b"\x89", data  # a ping frame, nothing else
    return True


def test_connections_opened_together_get_their_first_pings_spread_out(
    sessions: list[tuple[Session, socket.socket]],
) -> None:
    opened = max(s.opened_at for s, _ in sessions)
    first_ping: dict[str, float] = {}
    # The heartbeat's passes, once per second of a simulated clock, over two intervals.
    for step in range(1, 2 * int(INTERVAL) + 1):
        now = opened + step
        for s, theirs in sessions:
            s.tick(now)
            if _pinged(theirs):
                if s.conn_id in first_ping:
                    # After the first, one ping every interval.
                    assert now - first_ping[s.conn_id] >= INTERVAL
                else:
                    first_ping[s.conn_id] = step
    assert len(first_ping) == len(sessions)  # every one pinged within its first interval
    assert min(first_ping.values()) >= (1 - PING_PHASE_SPREAD) * INTERVAL - 1
    assert max(first_ping.values()) <= INTERVAL
    # Not all in one pass: 200 phases drawn at random fall in most of the 8 possible
    # seconds (all in at most 3 has a probability far below 1e-40).
    assert len(set(first_ping.values())) >= 4, sorted(first_ping.values())


def test_in_flight_counts_each_push_of_a_user() -> None:
    pushing = InFlight()
    pushing.enter(["alice", "bob"])
    pushing.enter(["alice"])  # a second push to alice, concurrent
    assert "alice" in pushing and "bob" in pushing and len(pushing) == 2
    pushing.leave(["alice", "bob"])
    assert "alice" in pushing and "bob" not in pushing  # alice's second is still out
    pushing.leave(["alice"])
    assert "alice" not in pushing and len(pushing) == 0
