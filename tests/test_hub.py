"""Fan-out in the hub: one encode per message, the same bytes to every connection."""

from __future__ import annotations

from pushsvc.hub import Hub
from pushsvc.protocol import UserFrame, wire_text


class Recorder:
    """A connection as the hub sees it: what was queued on it."""

    def __init__(self, conn_id: str, user_id: str) -> None:
        self.conn_id = conn_id
        self.user_id = user_id
        self.topics: set[str] = set()
        self.wires: list[bytes] = []
        self.seqs: list[int] = []

    def deliver_online(self, wire: bytes) -> None:
        self.wires.append(wire)

    def deliver_user(self, seq: int, wire: bytes, message_id: str) -> None:
        self.seqs.append(seq)
        self.wires.append(wire)


def test_topic_frame_is_encoded_once_for_all_subscribers() -> None:
    hub = Hub()
    subs = [Recorder(f"c{i}", f"u{i}") for i in range(50)]
    for s in subs:
        hub.add(s)  # type: ignore[arg-type]
        hub.subscribe(s, "news")  # type: ignore[arg-type]
    wire = wire_text('{"type":"message","topic":"news"}')
    assert hub.publish("news", wire) == 50
    assert all(s.wires[0] is wire for s in subs)  # the very same bytes object


def test_user_frame_is_encoded_once_per_user_for_all_connections() -> None:
    hub = Hub()
    conns = [Recorder(f"c{i}", "alice") for i in range(5)]
    for c in conns:
        hub.add(c)  # type: ignore[arg-type]
    frame = UserFrame.build("m1", b'{"a":1}', "application/json")
    assert hub.deliver_user("alice", 7, frame, "m1") == 5
    first = conns[0].wires[0]
    assert all(c.wires[0] is first for c in conns)
    assert all(c.seqs == [7] for c in conns)
    assert first.endswith(b'"seq":7,"content_type":"application/json","data":{"a":1}}')


def test_presence_hooks_see_first_arrival_before_the_connection_is_visible() -> None:
    hub = Hub()
    seen: list[tuple[str, int, int]] = []
    hub.presence_hooks.append(lambda u, n: seen.append((u, n, hub.connections_of(u))))
    a, b = Recorder("a", "bob"), Recorder("b", "bob")
    hub.add(a)  # type: ignore[arg-type]
    hub.add(b)  # type: ignore[arg-type]
    hub.remove(a)  # type: ignore[arg-type]
    hub.remove(b)  # type: ignore[arg-type]
    # (user, count now, count visible in the hub when the hook ran)
    assert seen == [("bob", 1, 0), ("bob", 2, 2), ("bob", 1, 1), ("bob", 0, 0)]
