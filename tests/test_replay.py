"""The replay workers (pushsvc/replay.py): every read is answered with its token,
whatever the order the store answers in, and the answer to an older read leaves a
newer read's pause running."""

from __future__ import annotations

from typing import Any

import gevent
from gevent.event import Event
from gevent.queue import Queue

from pushsvc.health import StoreHealth
from pushsvc.metrics import Metrics
from pushsvc.replay import Replay
from pushsvc.store.inbox import InboxPage

TIMEOUT = 30.0  # seconds for any one answer: generous, the machine may be busy


class Connection:
    """A reader that records its answers."""

    user_id = "alice"
    closing = False
    read_page_size = 10

    def __init__(self) -> None:
        self.answers: Queue[tuple[int, InboxPage | None]] = Queue()

    def on_page(self, page: InboxPage, token: int) -> None:
        self.answers.put((token, page))

    def on_read_failed(self, token: int) -> None:
        self.answers.put((token, None))


class HeldInbox:
    """Reads after seq 0 wait until ``release`` is set, then find nothing beyond;
    the others find seq 5 still being written."""

    def __init__(self) -> None:
        self.release = Event()
        self.holding = Event()  # a read after 0 is at the store

    def read_inbox(self, user_id: str, after: int, limit: int, now: float) -> InboxPage:
        if after == 0:
            self.holding.set()
            self.release.wait()
            return InboxPage(())
        return InboxPage((), blocked_at=5)


def _never_called() -> None:
    raise AssertionError("no probe in these tests")


def test_an_older_reads_answer_leaves_a_newer_pause_running() -> None:
    inbox = HeldInbox()
    replay = Replay(inbox, StoreHealth(_never_called, Metrics()), workers=4)  # type: ignore[arg-type]
    conn = Connection()
    reader: Any = conn
    try:
        replay.read(reader, 0, later=True, token=1)  # blocked: poll after a pause
        assert inbox.holding.wait(TIMEOUT)  # the pause ended: read 1 is at the store
        replay.read(reader, 1, later=False, token=2)  # unblocked live: read now
        assert conn.answers.get(timeout=TIMEOUT) == (2, InboxPage((), blocked_at=5))
        replay.read(reader, 1, later=True, token=3)  # blocked again: a pause
        inbox.release.set()
        assert conn.answers.get(timeout=TIMEOUT) == (1, InboxPage(()))  # the older answer
        # The pause of read 3 was not cut short by it: read 3 is made and answered.
        assert conn.answers.get(timeout=TIMEOUT) == (3, InboxPage((), blocked_at=5))
    finally:
        replay.stop()


def test_every_read_is_answered_with_its_token() -> None:
    inbox = HeldInbox()
    inbox.release.set()
    replay = Replay(inbox, StoreHealth(_never_called, Metrics()), workers=4)  # type: ignore[arg-type]
    conn = Connection()
    reader: Any = conn
    try:
        for token in range(1, 6):
            replay.read(reader, token % 2, later=False, token=token)
        answered = {conn.answers.get(timeout=TIMEOUT)[0] for _ in range(5)}
        assert answered == {1, 2, 3, 4, 5}
        gevent.sleep(0)
        assert conn.answers.empty()
    finally:
        replay.stop()
