"""Processes that race on one store: writers, readers, and a writer that hangs
mid-push so the test can kill it. Used by ``test_concurrency.py``.

Each runs in a process of its own (``multiprocessing`` spawn), opens its own
store object on the shared database or SQLite file, and writes what it did
to a JSON file the test reads afterwards. Nothing here imports the store
before ``gevent.monkey.patch_all()`` has run, so the Mongo driver cooperates
with the process's greenlets as it does in a node.
"""

from __future__ import annotations

import multiprocessing

if multiprocessing.parent_process() is not None:
    # A racer process: make the driver cooperative before anything imports it.
    from gevent import monkey

    monkey.patch_all()

import json
import random
import time
from dataclasses import dataclass
from multiprocessing.synchronize import Barrier, Event
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pushsvc.store.inbox import InboxStore

T0 = 1_700_000_000.0
TTL = 3600.0
DEADLINE = 90.0  # no process of a test runs longer than this


@dataclass(frozen=True)
class Spec:
    """Which store to open: ``embedded`` (``where`` is the data directory) or
    ``mongo`` (``where`` is the URI, ``db`` the database name; ``records``:
    batches committed by their record)."""

    backend: str
    where: str
    db: str = ""
    records: bool = False


def open_store(spec: Spec) -> InboxStore:
    if spec.backend == "embedded":
        from pushsvc.store.embedded import EmbeddedStore

        return EmbeddedStore(spec.where)
    from pushsvc.store.mongo import MongoInbox
    from pushsvc.store.mongo_database import MongoDatabase

    return MongoInbox(
        MongoDatabase(spec.where, spec.db, socket_timeout=60.0), commit_records=spec.records
    )


def _dump(path: str, data: Any) -> None:
    with open(path, "w") as f:
        json.dump(data, f)


def writer(spec: Spec, name: str, users: list[str], calls: int, start: Barrier, out: str) -> None:
    """Four greenlets, each making ``calls`` calls of 1-3 requests to 1-3 of
    ``users``. Records every request's outcome."""
    import gevent

    from pushsvc.errors import PushError
    from pushsvc.messages import Message
    from pushsvc.store.inbox import StoreRequest

    store = open_store(spec)
    rng = random.Random(name)
    results: list[dict[str, Any]] = []
    counter = 0

    def one_greenlet(g: int) -> None:
        nonlocal counter
        for _ in range(calls):
            requests = []
            for _ in range(rng.randint(1, 3)):
                counter += 1
                mid = f"{name}-{g}-{counter}"
                m = Message(mid, b'{"n":1}', "application/json", T0, T0 + TTL)
                requests.append(StoreRequest(m, tuple(rng.sample(users, rng.randint(1, 3)))))
            outcomes = store.store_messages(requests, T0)
            for r, o in zip(requests, outcomes, strict=True):
                record: dict[str, Any] = {"id": r.message.id, "greenlet": g, "ok": False}
                if isinstance(o, PushError):
                    record["error"] = str(o)
                else:
                    record |= {"ok": True, "seqs": dict(zip(r.user_ids, o.seqs, strict=True))}
                results.append(record)

    start.wait(DEADLINE)
    gevent.joinall([gevent.spawn(one_greenlet, g) for g in range(4)], raise_error=True)
    store.close()
    stats = {"collisions": getattr(store, "collisions", 0), "round_trips": store.round_trips}
    _dump(out, {"results": results, "stats": stats})


def reader(spec: Spec, users: list[str], limit: int, start: Barrier, done: Event, out: str) -> None:
    """Page through every user's inbox until the writers are done and a pass
    finds nothing new, recording each entry seen and anything out of order."""
    import gevent

    store = open_store(spec)
    cursor = {u: 0 for u in users}
    seen: dict[str, list[list[Any]]] = {u: [] for u in users}
    problems: list[str] = []
    blocked = 0
    start.wait(DEADLINE)
    deadline = time.monotonic() + DEADLINE
    quiet_passes = 0
    while time.monotonic() < deadline:
        finished = done.is_set()  # read before the pass: a quiet pass after it ends
        progress = False
        for u in users:
            page = store.read_inbox(u, cursor[u], limit, T0)
            last = cursor[u]
            for e in page.entries:
                if e.seq <= last:
                    problems.append(f"{u}: seq {e.seq} after {last}")
                seen[u].append([e.seq, e.message.id])
                last = e.seq
            progress = progress or bool(page.entries)
            if page.blocked_at is not None:
                blocked += 1
                progress = True  # something is in flight: not quiet
            cursor[u] = last
        if finished and not progress:
            quiet_passes += 1
            if quiet_passes >= 2:
                break
        else:
            quiet_passes = 0
        gevent.sleep(0.002)  # let the writers in
    else:
        problems.append("the reader ran out of time")
    store.close()
    _dump(out, {"seen": seen, "problems": problems, "blocked": blocked})


def watcher(spec: Spec, user: str, until: str, start: Barrier, swept: Event, out: str) -> None:
    """Read one user's inbox until the message ``until`` is seen, noting each
    entry and whether the sweep had started before the read that returned it."""
    import gevent

    store = open_store(spec)
    cursor = 0
    seen: list[list[Any]] = []
    blocked_at: list[int] = []
    start.wait(DEADLINE)
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline and not any(mid == until for _, mid, _ in seen):
        before_sweep = not swept.is_set()
        page = store.read_inbox(user, cursor, 2, T0)
        for e in page.entries:
            seen.append([e.seq, e.message.id, before_sweep])
            cursor = e.seq
        if page.blocked_at is not None and (not blocked_at or blocked_at[-1] != page.blocked_at):
            blocked_at.append(page.blocked_at)
        gevent.sleep(0.005)
    store.close()
    _dump(out, {"seen": seen, "blocked_at": blocked_at})


def hung_writer(spec: Spec, user: str, paused: Event) -> None:
    """Store one push to ``user`` and hang just before it commits (Mongo: after
    its entries are inserted; SQLite: inside its transaction), until killed."""
    store = open_store(spec)

    def hang(*args: Any, **kwargs: Any) -> Any:
        paused.set()
        time.sleep(DEADLINE)
        raise SystemExit("not killed in time")

    if spec.backend == "embedded":
        from pushsvc.store import embedded

        embedded._store_requests = hang
    else:
        setattr(store, "_commit", hang)  # noqa: B010 -- the instance's, not the class's
    from pushsvc.messages import Message

    store.store_message(
        Message("hung", b'{"hung":1}', "application/json", T0, T0 + TTL), [user], "", T0
    )
