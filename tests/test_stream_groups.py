"""PushStream groups: a producer that keeps a window of requests ahead of its
answers gets its whole window pushed in one group (one durable write), not half
of it -- counted at the node's ``push_many``, with the servicer driven directly."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import gevent
import gevent.queue

from pushsvc.grpc_api import CallerLimits, Limits, PushServicer
from pushsvc.messages import PushCommand
from pushsvc.node import PushOutcome
from pushsvc.owners import OwnerTags
from pushsvc_client.v1 import push_pb2

WINDOW = 32
GROUPS = 8


class _Node:
    """Takes ``push_many`` as a store would: a while per group, any size."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.groups: list[int] = []

    def push_many(self, cmds: Sequence[PushCommand]) -> list[PushOutcome]:
        self.groups.append(len(cmds))
        gevent.sleep(self.seconds)  # stands for the store's round trips
        return [PushOutcome(f"m{len(self.groups)}-{i}", (1,), False, 0) for i in range(len(cmds))]


class _Context:
    def invocation_metadata(self) -> list[tuple[str, str]]:
        return [("authorization", "Bearer key")]


def _stream(
    node: _Node, total: int, window: int, ttl: int | None = None
) -> list[push_pb2.PushResponse]:
    """A producer with ``window`` requests ahead of its answers, like the bench's."""
    servicer = PushServicer(node, Limits(4096, 3600, 86400), CallerLimits(0, 0), OwnerTags("s"))  # type: ignore[arg-type]
    queue: gevent.queue.Queue[Any] = gevent.queue.Queue()
    sent = 0

    def send() -> None:
        nonlocal sent
        if sent < total:
            request = push_pb2.PushRequest(user_ids=[f"u{sent % 7}"], payload=b"{}")
            if ttl is not None:
                request.ttl_seconds = ttl
            queue.put(request)
            sent += 1
            if sent == total:
                queue.put(StopIteration)

    def requests() -> Iterator[push_pb2.PushRequest]:
        while (item := queue.get()) is not StopIteration:
            yield item

    def rest() -> None:
        for _ in range(window - 1):
            send()

    send()  # one first, the rest a moment later: a group of 1, then one of the others
    gevent.spawn_later(0.01, rest)
    answers = []
    for response in servicer.PushStream(requests(), _Context()):  # type: ignore[arg-type]
        answers.append(response)
        # Each answer lets the producer send one more, which reaches the node a
        # moment later (the network, the producer's turn): spread over a few ms.
        gevent.spawn_later(0.002 + 0.0001 * (len(answers) % window), send)
    return answers


def test_a_window_of_requests_is_pushed_in_one_group_each_time() -> None:
    node = _Node(0.1)
    answers = _stream(node, WINDOW * GROUPS, WINDOW)
    assert len(answers) == WINDOW * GROUPS
    assert all(not a.HasField("error") for a in answers)
    # Taken the moment a group is answered, the next would hold what came while
    # it was pushed: groups of about half the window, twice as many of them.
    # Nor does a request answered a group early stay a group apart (1, 31, 1, 31...).
    assert node.groups[2:-1] == [WINDOW] * (len(node.groups) - 3), node.groups
    assert len(node.groups) <= GROUPS + 2, node.groups


def test_online_only_groups_do_not_wait() -> None:
    """Groups that store nothing are not held back, however long they took."""
    node = _Node(0.1)
    answers = _stream(node, WINDOW * 4, WINDOW, ttl=0)
    assert len(answers) == WINDOW * 4
    assert len(node.groups) > 4 + 1, node.groups  # as they came: about half a window
