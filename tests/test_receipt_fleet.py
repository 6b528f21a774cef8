"""StreamReceipts across a 2-node fleet on FerretDB: events recorded on one node reach
a stream on the other, and a stream resumed from its cursor misses nothing."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from pushsvc_client.v1 import push_pb2
from tests.ferretdb import ferretdb  # noqa: F401
from tests.nodeproc import NodeProcess, auth
from tests.receiptstream import ACKED, DELIVERED, ReceiptReader
from tests.test_fleet import Fleet, fleet, presence  # noqa: F401
from tests.waiting import wait_for
from tests.wsclient import Client, open_ws


def push(node: NodeProcess, users: list[str], data: Any) -> Any:
    with node.stub() as stub:
        return stub.Push(
            push_pb2.PushRequest(user_ids=users, payload=json.dumps(data).encode()),
            metadata=auth(),
            timeout=15,
        )


def both(message_id: str, user: str, seq: int) -> set[tuple[int, str, str, int]]:
    return {(DELIVERED, message_id, user, seq), (ACKED, message_id, user, seq)}


def test_events_on_one_node_reach_a_stream_on_the_other_and_resume(
    fleet: Fleet,  # noqa: F811
    clients: list[Client],
) -> None:
    a, b = fleet(2)
    stream = ReceiptReader(a)  # on node A: this API key's messages
    erin = open_ws(b, "erin")  # the recipient, on node B
    clients.append(erin)
    wait_for(lambda: presence(a, "erin").online, 30, "erin visible from a")

    first = push(a, ["erin"], {"n": 1})
    (m,) = erin.messages(1)
    erin.send({"type": "ack", "seq": m["seq"]})
    seen = stream.wait_seen(both(first.message_id, "erin", 1))
    assert Counter(seen) == Counter(both(first.message_id, "erin", 1))
    assert {e.node_id for e in stream.events} == {b.node_id}  # recorded where erin is
    cursor = stream.cursor
    stream.close()

    # While nobody listens: more deliveries and acks, recorded on B.
    later = [push(a, ["erin"], {"n": n}) for n in (2, 3, 4)]
    got = erin.messages(3)
    erin.send({"type": "ack", "seq": got[1]["seq"]})  # acks 2 and 3
    erin.send({"type": "ack", "seq": got[2]["seq"]})  # then 4
    missed = set()
    for r, seq in zip(later, (2, 3, 4), strict=True):
        missed |= both(r.message_id, "erin", seq)

    # Resumed on either node, from the cursor: exactly what happened since.
    for node in (a, b):
        resumed = ReceiptReader(node, cursor=cursor)
        try:
            seen = resumed.wait_seen(missed)
            sentinel = push(a, ["erin"], {"sentinel": node.node_id})
            (s,) = erin.messages(1)
            erin.send({"type": "ack", "seq": s["seq"]})
            seen = resumed.wait_seen(missed | both(sentinel.message_id, "erin", s["seq"]))
            assert Counter(seen) == Counter(missed | both(sentinel.message_id, "erin", s["seq"]))
            missed |= both(sentinel.message_id, "erin", s["seq"])
        finally:
            resumed.close()
