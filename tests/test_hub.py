"""Fan-out: one encode per message, the same bytes to every connection (hub, topic fan-out)."""

from __future__ import annotations

import logging
from collections.abc import Callable

import gevent
import pytest
from gevent.event import AsyncResult

from pushsvc.fanout import COALESCE, SLICE, TopicFanout
from pushsvc.hub import SHARES, Hub
from pushsvc.metrics import Metrics
from pushsvc.protocol import UserFrame, wire_text


class Recorder:
    """A connection as the hub sees it: what was queued on it."""

    def __init__(self, conn_id: str, user_id: str) -> None:
        self.conn_id = conn_id
        self.user_id = user_id
        self.topics: set[str] = set()
        self.wires: list[bytes] = []
        self.seqs: list[int] = []
        self.expiries: list[float | None] = []
        self.writes = 0  # calls: a joined batch of frames is one

    def deliver_online(self, wire: bytes) -> bool:
        self.wires.append(wire)
        self.writes += 1
        return True

    def deliver_online_many(self, wires: tuple[bytes, ...], joined: bytes) -> bool:
        assert joined == b"".join(wires)
        self.wires.extend(wires)
        self.writes += 1
        return True

    def deliver_user(
        self, seq: int, wire: bytes, message_id: str, expires_at: float | None
    ) -> None:
        self.seqs.append(seq)
        self.wires.append(wire)
        self.expiries.append(expires_at)


def test_topic_frame_is_encoded_once_for_all_subscribers() -> None:
    hub = Hub()
    subs = [Recorder(f"c{i}", f"u{i}") for i in range(50)]
    for s in subs:
        hub.add(s)
        hub.subscribe(s, "news")
    wire = wire_text('{"type":"message","topic":"news"}')
    assert TopicFanout(hub, Metrics()).publish("news", wire).get(timeout=10) == 50
    assert all(s.wires[0] is wire for s in subs)  # the very same bytes object


def test_user_frame_is_encoded_once_per_user_for_all_connections() -> None:
    hub = Hub()
    conns = [Recorder(f"c{i}", "alice") for i in range(5)]
    for c in conns:
        hub.add(c)
    frame = UserFrame("m1", b'{"a":1}', "application/json")
    assert hub.deliver_user("alice", 7, frame, "m1", 1e9) == 5
    first = conns[0].wires[0]
    assert all(c.wires[0] is first for c in conns)
    assert all(c.seqs == [7] for c in conns)
    assert all(c.expiries == [1e9] for c in conns)  # for the delivery receipts
    assert first.endswith(b'"seq":7,"content_type":"application/json","data":{"a":1}}')


def test_membership_counts_connections_per_user() -> None:
    hub = Hub()
    a, b = Recorder("a", "bob"), Recorder("b", "bob")
    assert hub.add(a) == 1
    assert hub.add(b) == 2
    hub.subscribe(a, "news")
    assert hub.remove(a, ("news",)) == 1
    assert hub.subscribers("news") == ()  # a's subscription went with it
    assert hub.remove(a) == 1  # removing twice changes nothing
    assert hub.remove(b) == 0
    assert hub.user_count == 0 and hub.connection_count == 0


def test_each_connection_is_in_one_share_for_its_life() -> None:
    """A periodic pass visiting the shares in turn meets every connection once a
    round, while others come and go around it."""
    hub = Hub()
    conns = [Recorder(f"c{i}", f"u{i % 7}") for i in range(500)]
    for conn in conns:
        hub.add(conn)

    def share_of(conn: Recorder) -> int:
        found = [i for i in range(SHARES) if conn in hub.connections_in_shares(i, i + 1)]
        assert len(found) == 1, found
        return found[0]

    before = {conn.conn_id: share_of(conn) for conn in conns}
    assert sorted(hub.connections_in_shares(0, SHARES), key=id) == sorted(conns, key=id)
    assert len({*before.values()}) > 1  # spread, not all in one
    for conn in conns[::2]:
        hub.remove(conn)
    hub.add(Recorder("late", "u1"))
    kept = conns[1::2]
    assert {c.conn_id: share_of(c) for c in kept} == {c.conn_id: before[c.conn_id] for c in kept}
    assert len(hub.connections_in_shares(0, SHARES)) == len(kept) + 1
    assert all(c not in hub.connections_in_shares(0, SHARES) for c in conns[::2])


class Refusing(Recorder):
    def deliver_online(self, wire: bytes) -> bool:
        return False

    def deliver_online_many(self, wires: tuple[bytes, ...], joined: bytes) -> bool:
        return False


def test_publish_counts_connections_that_refused_the_frame() -> None:
    hub = Hub()
    ok, full = Recorder("a", "u1"), Refusing("b", "u2")
    for c in (ok, full):
        hub.add(c)
        hub.subscribe(c, "t")
    metrics = Metrics()
    assert TopicFanout(hub, metrics).publish("t", b"x").get(timeout=10) == 1
    assert metrics.fanout_incomplete._value.get() == 1


def test_topic_fan_out_keeps_order_per_topic_and_lets_other_topics_run() -> None:
    hub = Hub()
    big = [Recorder(f"b{i}", f"u{i}") for i in range(3 * SLICE)]
    small = Recorder("s", "s")
    for c in big:
        hub.add(c)
        hub.subscribe(c, "big")
    hub.add(small)
    hub.subscribe(small, "small")
    fanout = TopicFanout(hub, Metrics())
    first = fanout.publish("big", b"1")
    second = fanout.publish("big", b"2")
    other = fanout.publish("small", b"s")
    # The small topic is served while the big one is still being written...
    assert other.get(timeout=10) == 1
    assert not second.ready()
    # ...and on the big topic every subscriber gets 1 before 2.
    assert (first.get(timeout=10), second.get(timeout=10)) == (3 * SLICE, 3 * SLICE)
    assert all(c.wires == [b"1", b"2"] for c in big)
    gevent.sleep(0)
    assert fanout.pending == 0


def test_publishes_queued_behind_a_fan_out_go_out_together_in_order() -> None:
    hub = Hub()
    subs = [Recorder(f"c{i}", f"u{i}") for i in range(3)]
    for s in subs:
        hub.add(s)
        hub.subscribe(s, "t")
    refusing = Refusing("r", "r")
    hub.add(refusing)
    hub.subscribe(refusing, "t")
    metrics = Metrics()
    fanout = TopicFanout(hub, metrics)
    # Queued before the topic's greenlet runs: one pass, one write per subscriber.
    results = [fanout.publish("t", f"{i}".encode()) for i in range(COALESCE + 2)]
    assert [r.get(timeout=10) for r in results] == [3] * (COALESCE + 2)
    for s in subs:
        assert s.wires == [f"{i}".encode() for i in range(COALESCE + 2)]
        assert s.writes == 2  # COALESCE frames joined, then the 2 left
    assert metrics.fanout_incomplete._value.get() == COALESCE + 2  # per publish


def test_a_fan_out_runs_to_its_end_when_its_caller_goes_away(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A ``Publish`` whose deadline expires mid-way (its greenlet killed while it
    waits for the fan-out) is still written to every subscriber: the topic's
    greenlet writes it, not the caller's. What could not be written is counted and
    logged once."""
    hub = Hub()
    metrics = Metrics()
    fanout = TopicFanout(hub, metrics)
    asked: list[AsyncResult] = []
    seen_when_killed: list[bool] = []

    def kill_the_caller() -> None:  # while the fan-out is under way
        seen_when_killed.append(asked[0].ready())
        caller.kill(block=False)

    subs: list[Recorder] = [Recorder(f"c{i}", f"u{i}") for i in range(SLICE)]
    subs.append(Hooked("hook", "hook", kill_the_caller))
    subs += [Recorder(f"d{i}", f"v{i}") for i in range(2 * SLICE)]
    refusing = Refusing("r", "r")
    for c in [*subs, refusing]:
        hub.add(c)
        hub.subscribe(c, "t")

    def call() -> int:  # what ``Node.publish`` does in the call's greenlet
        asked.append(fanout.publish("t", b"x"))
        written: int = asked[0].get()
        return written

    caplog.set_level(logging.INFO, logger="pushsvc.fanout")
    caller = gevent.spawn(call)
    caller.join(timeout=10)
    assert caller.dead and isinstance(caller.value, gevent.GreenletExit)  # it went away
    assert seen_when_killed == [False]  # before its fan-out was done
    assert asked[0].get(timeout=10) == len(subs)
    assert all(c.wires == [b"x"] for c in subs)
    assert metrics.fanout_incomplete._value.get() == 1
    logged = [r for r in caplog.records if r.getMessage() == "fan-out incomplete"]
    assert len(logged) == 1


class Hooked(Recorder):
    """A subscriber that runs ``action`` the first time a frame is written to it:
    something happening while a fan-out is under way."""

    def __init__(self, conn_id: str, user_id: str, action: Callable[[], None]) -> None:
        super().__init__(conn_id, user_id)
        self.action: Callable[[], None] | None = action

    def _fire(self) -> None:
        action, self.action = self.action, None
        if action is not None:
            action()

    def deliver_online(self, wire: bytes) -> bool:
        self._fire()
        return super().deliver_online(wire)

    def deliver_online_many(self, wires: tuple[bytes, ...], joined: bytes) -> bool:
        self._fire()
        return super().deliver_online_many(wires, joined)


def test_a_publish_queued_during_a_pass_joins_it_for_the_subscribers_not_yet_reached() -> None:
    hub = Hub()
    metrics = Metrics()
    fanout = TopicFanout(hub, metrics)
    later: list[AsyncResult] = []
    subs: list[Recorder] = [Hooked("c0", "u0", lambda: later.append(fanout.publish("t", b"2")))]
    subs += [Recorder(f"c{i}", f"u{i}") for i in range(1, 3 * SLICE)]
    for c in subs:
        hub.add(c)
        hub.subscribe(c, "t")
    first = fanout.publish("t", b"1")
    assert first.get(timeout=10) == 3 * SLICE
    (second,) = later
    assert second.get(timeout=10) == 3 * SLICE
    for i, c in enumerate(subs):
        assert c.wires == [b"1", b"2"], i  # each once, in order
        # "2" came during the first slice: it joined at the second, so the rest of
        # the subscribers got both in one write, and the first slice got it after.
        assert c.writes == (2 if i < SLICE else 1), (i, c.writes)
    gevent.sleep(0)
    assert fanout.pending == 0
    assert metrics.fanout_incomplete._value.get() == 0


def test_the_rest_of_a_joined_publish_goes_to_the_subscribers_of_its_time() -> None:
    hub = Hub()
    fanout = TopicFanout(hub, Metrics())
    later: list[AsyncResult] = []
    newcomer = Recorder("new", "new")

    def change_membership() -> None:  # while the second slice is written
        hub.add(newcomer)
        hub.subscribe(newcomer, "t")
        hub.unsubscribe(subs[1], "t")  # already got "1"; "2" has not reached it yet

    subs: list[Recorder] = [Hooked("c0", "u0", lambda: later.append(fanout.publish("t", b"2")))]
    subs += [Recorder(f"c{i}", f"u{i}") for i in range(1, SLICE + 1)]
    subs.append(Hooked("hook", "hook", change_membership))
    subs += [Recorder(f"d{i}", f"v{i}") for i in range(SLICE)]
    for c in subs:
        hub.add(c)
        hub.subscribe(c, "t")
    first = fanout.publish("t", b"1")
    assert first.get(timeout=10) == len(subs)
    (second,) = later
    # Everyone subscribed when its pass went by: all but the one that left, and
    # the newcomer, which subscribed before the rest of "2" went out.
    assert second.get(timeout=10) == len(subs) - 1 + 1
    assert subs[1].wires == [b"1"]
    assert newcomer.wires == [b"2"]
    for c in subs[:1] + subs[2:]:
        assert c.wires == [b"1", b"2"], c.conn_id


def test_publishes_joining_a_pass_keep_their_refusals_apart() -> None:
    hub = Hub()
    metrics = Metrics()
    fanout = TopicFanout(hub, metrics)
    later: list[AsyncResult] = []
    subs: list[Recorder] = [Hooked("c0", "u0", lambda: later.append(fanout.publish("t", b"2")))]
    subs += [Refusing("r0", "r0")]  # refuses "1" (first slice) and, in the next pass, "2"
    subs += [Recorder(f"c{i}", f"u{i}") for i in range(1, SLICE)]
    subs += [Refusing("r1", "r1")]  # refuses both, in one write
    subs += [Recorder(f"d{i}", f"v{i}") for i in range(SLICE)]
    for c in subs:
        hub.add(c)
        hub.subscribe(c, "t")
    first = fanout.publish("t", b"1")
    assert first.get(timeout=10) == len(subs) - 2
    (second,) = later
    assert second.get(timeout=10) == len(subs) - 2
    assert metrics.fanout_incomplete._value.get() == 4  # two refusals per publish
