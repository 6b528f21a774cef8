"""StreamReceipts on one node (the embedded store): events, filters, cursors, limits."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import grpc
import pytest

from pushsvc.receipt_stream import decode_cursor, encode_cursor
from pushsvc_client.v1 import push_pb2, push_pb2_grpc
from tests.nodeproc import API_KEY, NodeProcess, auth
from tests.receiptstream import ACKED, DELIVERED, ReceiptReader
from tests.waiting import wait_for
from tests.wsclient import Client, open_ws

OTHER_KEY = "other-api-key"
Event = tuple[int, str, str, int]


def push(node: NodeProcess, users: list[str], data: Any, key: str = API_KEY) -> Any:
    with node.stub() as stub:
        return stub.Push(
            push_pb2.PushRequest(user_ids=users, payload=json.dumps(data).encode()),
            metadata=auth(key),
            timeout=15,
        )


def receive_and_ack(client: Client, n: int) -> list[dict[str, Any]]:
    """Read n messages, then ack the last (cumulative)."""
    got = client.messages(n)
    client.send({"type": "ack", "seq": got[-1]["seq"]})
    return got


def both(message_id: str, user: str, seq: int) -> set[Event]:
    return {(DELIVERED, message_id, user, seq), (ACKED, message_id, user, seq)}


def settle(reader: ReceiptReader, node: NodeProcess, client: Client, user: str) -> list[Event]:
    """Push one more message and wait for its events: events are recorded in order on a
    node, so once they arrived every earlier event has too. Returns all events seen."""
    r = push(node, [user], {"sentinel": True})
    (m,) = receive_and_ack(client, 1)
    return reader.wait_seen(both(r.message_id, user, m["seq"]))


def test_one_event_per_recipient_and_per_acked_message(
    node_factory: Callable[..., NodeProcess], clients: list[Client]
) -> None:
    node = node_factory(env={"PUSHSVC_API_KEYS": f"{API_KEY},{OTHER_KEY}"})
    mine = ReceiptReader(node)
    theirs = ReceiptReader(node, api_key=OTHER_KEY)
    bobs = ReceiptReader(node, users=["bob"], api_key=OTHER_KEY)
    try:
        alice, alice_2, bob = open_ws(node, "alice"), open_ws(node, "alice"), open_ws(node, "bob")
        clients += [alice, alice_2, bob]
        sent = [push(node, ["alice", "bob"], {"n": n}) for n in range(3)]
        other = push(node, ["alice"], {"other": True}, key=OTHER_KEY)
        alice_2.messages(4)  # a second device: its frames are the same deliveries
        receive_and_ack(alice, 4)  # one ack for all four
        receive_and_ack(bob, 3)

        expected = set()
        for r in sent:
            expected |= both(r.message_id, "alice", r.seqs[0]) | both(
                r.message_id, "bob", r.seqs[1]
            )
        theirs_expected = both(other.message_id, "alice", 4)
        bobs_expected = {e for e in expected if e[2] == "bob"}

        seen = settle(mine, node, bob, "bob")
        sentinel = set(seen) - expected
        assert len(sentinel) == 2 and all(e[2] == "bob" for e in sentinel)
        assert Counter(seen) == Counter(expected | sentinel)  # each once, nothing foreign
        theirs.wait_seen(theirs_expected)
        assert Counter(theirs.seen()) == Counter(theirs_expected)
        seen_by_bobs = bobs.wait_seen(bobs_expected | sentinel)
        assert Counter(seen_by_bobs) == Counter(bobs_expected | sentinel)
        # Per recipient, the delivery is recorded before the ack.
        kinds = [(e[1], e[2], e[0]) for e in seen]
        for e in expected:
            if e[0] == ACKED:
                assert kinds.index((e[1], e[2], DELIVERED)) < kinds.index((e[1], e[2], ACKED))
        assert all(e.node_id == node.node_id and e.recorded_at > 0 for e in mine.events)
    finally:
        for reader in (mine, theirs, bobs):
            reader.close()


def test_resume_from_a_cursor_after_a_restart_misses_nothing(
    node_factory: Callable[..., NodeProcess], clients: list[Client]
) -> None:
    node = node_factory()
    first = ReceiptReader(node)
    carol = open_ws(node, "carol")
    r1 = push(node, ["carol"], {"n": 1})
    receive_and_ack(carol, 1)
    first.wait_seen(both(r1.message_id, "carol", 1))
    carol.close()

    assert node.stop() == 0  # a drain ends the stream, naming where to resume
    error = first.wait_ended()
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    cursor = (error.details() or "").rpartition("resume from cursor ")[2].split()[0]
    assert decode_cursor(cursor).positions == decode_cursor(first.cursor).positions
    first.close()

    node.start()
    carol = open_ws(node, "carol")
    clients.append(carol)
    later = [push(node, ["carol"], {"n": n}) for n in (2, 3)]
    receive_and_ack(carol, 2)
    resumed = ReceiptReader(node, cursor=cursor)
    try:
        expected = both(later[0].message_id, "carol", 2) | both(later[1].message_id, "carol", 3)
        seen = settle(resumed, node, carol, "carol")
        assert expected <= set(seen)
        assert len(seen) == len(set(seen)) == len(expected) + 2  # nothing before the cursor
        # Each event's own cursor resumes right after it.
        middle = resumed.events[1]
        key = (middle.kind, middle.message_id, middle.user_id, middle.seq)
    finally:
        resumed.close()
    again = ReceiptReader(node, cursor=middle.cursor)
    try:
        assert settle(again, node, carol, "carol")[: len(seen) - 2] == seen[2:]
        assert key not in again.seen()
    finally:
        again.close()


def test_a_consumer_too_slow_is_cut_off_with_its_cursor(
    node_factory: Callable[..., NodeProcess], clients: list[Client]
) -> None:
    node = node_factory(env={"PUSHSVC_RECEIPT_BUFFER": "10"})
    # A consumer that reads nothing: what the transport takes fills up, then its queue.
    channel = grpc.insecure_channel(node.grpc_addr, options=[("grpc.http2.bdp_probe", 0)])
    stalled: Any = push_pb2_grpc.PushServiceStub(channel).StreamReceipts(
        push_pb2.StreamReceiptsRequest(user_ids=["dave"]), metadata=auth()
    )
    start = next(stalled)
    dave = open_ws(node, "dave")
    clients.append(dave)
    with node.stub() as stub:
        requests = [
            push_pb2.PushRequest(user_ids=["dave"], payload=b'{"filler": "%d"}' % n)
            for n in range(1500)
        ]
        for response in stub.PushStream(iter(requests), metadata=auth(), timeout=120):
            assert not response.HasField("error"), response.error
        receive_and_ack(dave, 1500)  # 3,000 events
        # Events are recorded before the ack is stored: once it is, all 3,000 are.
        status = push_pb2.GetMessageStatusRequest(message_id=response.message_id)
        wait_for(
            lambda: stub.GetMessageStatus(status, metadata=auth(), timeout=10).recipients[0].acked,
            30,
            "the last ack stored",
        )

    read: list[push_pb2.ReceiptEvent] = []
    with pytest.raises(grpc.RpcError) as info:
        for response in stalled:
            read.extend(response.events)
    error = info.value
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    details = error.details() or ""
    assert details.startswith("consumer fell too far behind"), details
    cursor = details.rpartition("resume from cursor ")[2]
    last = read[-1].cursor if read else start.cursor
    assert decode_cursor(cursor).positions == decode_cursor(last).positions
    channel.close()

    # Resuming from it reads the rest from the log at the reader's pace (pages of at
    # most the buffer's size): every event, once.
    resumed = ReceiptReader(node, users=["dave"], cursor=cursor)
    try:
        wait_for(
            lambda: len(read) + len(resumed.events) >= 3000 or resumed.error,
            60,
            "all 3,000 events",
        )
        assert resumed.error is None, resumed.error
        keys = [(e.kind, e.seq) for e in read + resumed.events]
        assert sorted(keys) == sorted(
            [(DELIVERED, s) for s in range(1, 1501)] + [(ACKED, s) for s in range(1, 1501)]
        )
    finally:
        resumed.close()


def rpc_code(node: NodeProcess, request: push_pb2.StreamReceiptsRequest) -> tuple[Any, str]:
    with node.stub() as stub, pytest.raises(grpc.RpcError) as info:
        for _ in stub.StreamReceipts(request, metadata=auth(), timeout=10):
            pass
    return info.value.code(), info.value.details() or ""


BAD_REQUESTS: list[tuple[dict[str, Any], grpc.StatusCode, str]] = [
    ({"cursor": "not-a-cursor"}, grpc.StatusCode.INVALID_ARGUMENT, "cursor is malformed"),
    ({"cursor": "r1.e30"}, grpc.StatusCode.INVALID_ARGUMENT, "cursor is malformed"),
    ({"user_ids": [""]}, grpc.StatusCode.INVALID_ARGUMENT, "user id is empty"),
    (
        {"user_ids": [f"u{i}" for i in range(1001)]},
        grpc.StatusCode.INVALID_ARGUMENT,
        "over the limit of 1000",
    ),
    (
        {"cursor": encode_cursor({}, time.time() - 7200)},
        grpc.StatusCode.FAILED_PRECONDITION,
        "beyond the receipt retention",
    ),
]


def test_bad_requests_get_a_clear_error(node: NodeProcess) -> None:
    for fields, code, words in BAD_REQUESTS:
        got, details = rpc_code(node, push_pb2.StreamReceiptsRequest(**fields))
        assert (got, words in details) == (code, True), (fields, got, details)


def test_streaming_off_says_how_to_turn_it_on(node_factory: Callable[..., NodeProcess]) -> None:
    node = node_factory(env={"PUSHSVC_RECEIPT_RETENTION": "0"})
    code, details = rpc_code(node, push_pb2.StreamReceiptsRequest())
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert "PUSHSVC_RECEIPT_RETENTION" in details
