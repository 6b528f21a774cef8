"""When delivery receipts and acks reach the store: at the store's period, or as soon
as a batch fills, and never lost on the way (``pushsvc.receipts``)."""

from __future__ import annotations

import pathlib
import time
import uuid
from collections.abc import Callable, Iterator

import gevent
import pytest

from pushsvc.health import StoreHealth
from pushsvc.messages import Message
from pushsvc.metrics import Metrics
from pushsvc.receipts import Receipts
from pushsvc.store.embedded import EmbeddedStore
from pushsvc.store.inbox import InboxStore
from pushsvc.store.mongo import RECEIPT_INTERVAL, MongoInbox
from pushsvc.store.mongo_database import MongoDatabase
from pushsvc.store.receipt_log import MongoReceiptLog
from tests.ferretdb import FerretDB, ferretdb  # noqa: F401

T0 = time.time()


def msg(mid: str) -> Message:
    return Message(mid, b'{"n":1}', "application/json", T0, T0 + 3600)


@pytest.fixture
def store(tmp_path: pathlib.Path) -> Iterator[EmbeddedStore]:
    s = EmbeddedStore(tmp_path)
    try:
        yield s
    finally:
        s.close()


def delivered(store: InboxStore, message_id: str) -> bool:
    return all(r.delivered for r in store.message_status(message_id, time.time()))


def gevent_wait(cond: Callable[[], bool], timeout: float = 30.0) -> None:
    """Poll ``cond`` from a greenlet, letting the flusher run, with a deadline."""
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out waiting for the flush"
        gevent.sleep(0.01)  # polling a condition with a deadline


def test_receipts_wait_for_the_period_unless_a_batch_fills(store: EmbeddedStore) -> None:
    for mid, user in (("m1", "alice"), ("m2", "bob")):
        store.store_message(msg(mid), [user], "", T0)
    receipts = Receipts(store, StoreHealth(store.probe, Metrics()), interval=3600.0, batch=2)
    receipts.start()
    try:
        receipts.delivered("m1", "alice", 1, T0 + 3600)
        for _ in range(5):
            gevent.idle()  # every greenlet that is ready has run
        assert not delivered(store, "m1")  # one receipt: it waits for the hour
        receipts.delivered("m2", "bob", 1, T0 + 3600)  # the batch is full: written at once
        gevent_wait(lambda: delivered(store, "m1") and delivered(store, "m2"))
    finally:
        receipts.stop()


def test_stopping_writes_what_waits(store: EmbeddedStore) -> None:
    store.store_message(msg("m1"), ["alice"], "", T0)
    receipts = Receipts(store, StoreHealth(store.probe, Metrics()), interval=3600.0)
    receipts.start()
    receipts.delivered("m1", "alice", 1, T0 + 3600)
    receipts.ack("alice", 1)
    receipts.stop()
    assert delivered(store, "m1")
    assert store.user_starts(["alice"])["alice"].acked_seq == 1


def test_a_remote_store_is_flushed_less_often_than_the_embedded_one() -> None:
    # Each flush to MongoDB costs round trips to a shared server (docs/scaling.md).
    assert EmbeddedStore.receipt_interval == InboxStore.receipt_interval == 0.05
    assert MongoInbox.receipt_interval == RECEIPT_INTERVAL == 1.0


def test_the_receipt_log_is_set_up_when_the_flusher_starts(ferretdb: FerretDB) -> None:  # noqa: F811
    """Its index and its source's position, before any receipt: the first flush
    then writes its events and its mark, and reads nothing."""
    mdb = MongoDatabase(ferretdb.uri, f"flush_{uuid.uuid4().hex}")
    inbox = MongoInbox(mdb)
    log = MongoReceiptLog(mdb, "node-a", 3600.0)
    receipts = Receipts(
        inbox, StoreHealth(inbox.probe, Metrics()), interval=3600.0, receipt_log=log
    )
    sent = mdb.commands_sent(["receipts", "receipt_sources"])
    receipts.start()
    try:
        events = mdb.db["receipts"]
        gevent_wait(
            lambda: (
                [("source", 1), ("n", 1)]
                in [list(ix["key"]) for ix in events.index_information().values()]
            )
        )
        gevent_wait(lambda: mdb.commands_sent(["receipts", "receipt_sources"]) >= sent + 4)
        inbox.store_message(msg("m-set-up"), ["alice"], "", T0)
        before = mdb.commands_sent(["receipts", "receipt_sources"])
        receipts.delivered("m-set-up", "alice", 1, T0 + 3600)
    finally:
        receipts.stop()  # writes what waits
        log.close()
        inbox.close()
    # the event's insert and the source's mark, nothing read
    assert mdb.commands_sent(["receipts", "receipt_sources"]) - before == 2
