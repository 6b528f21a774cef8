"""Group commit in the stores: stored pushes per second one at a time and with
many concurrent callers, and database round trips per message.

Each scenario stores unicast pushes (~20-byte JSON, TTL 1 h) to 1,000 users
through ``store_messages`` directly -- no gRPC, no WebSocket -- so it measures
the store alone: the embedded store (SQLite, WAL, ``synchronous=FULL``, on this
machine's disk) and the Mongo inbox on FerretDB 1.24 (SQLite backend, same
machine). Round trips are the stores' own counters: commands sent (MongoDB
wire) and hand-offs to the database thread, each at most one fsync (SQLite).
Runs in about a minute.

    .venv/bin/python -m bench.store_group_commit [--record]
"""

from gevent import monkey

monkey.patch_all()  # the Mongo driver cooperates with the callers' greenlets, as in a node

import argparse  # noqa: E402
import itertools  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from collections.abc import Callable  # noqa: E402

import gevent  # noqa: E402

from bench.common import append_results, table  # noqa: E402
from bench.ferretdb import FerretDB  # noqa: E402
from pushsvc.errors import PushError  # noqa: E402
from pushsvc.messages import Message  # noqa: E402
from pushsvc.store.embedded import EmbeddedStore  # noqa: E402
from pushsvc.store.inbox import InboxStore, StoreRequest  # noqa: E402
from pushsvc.store.mongo import MongoInbox  # noqa: E402
from pushsvc.store.mongo_database import MongoDatabase  # noqa: E402

USERS = 1000
_ids = itertools.count()


def request(users: tuple[str, ...]) -> StoreRequest:
    now = time.time()
    mid = f"b{next(_ids)}-{uuid.uuid4().hex[:8]}"
    return StoreRequest(Message(mid, b'{"n":1}', "application/json", now, now + 3600), users)


def unicast() -> StoreRequest:
    return request((f"user-{next(_ids) % USERS}",))


def run(store: InboxStore, callers: int, per_caller: int) -> tuple[float, float]:
    """``callers`` greenlets each storing ``per_caller`` pushes one call at a time.
    Returns (pushes per second, round trips per push)."""

    def caller() -> None:
        for _ in range(per_caller):
            (outcome,) = store.store_messages([unicast()], time.time())
            if isinstance(outcome, PushError):
                raise outcome

    before = store.round_trips
    t0 = time.perf_counter()
    gevent.joinall([gevent.spawn(caller) for _ in range(callers)], raise_error=True)
    elapsed = time.perf_counter() - t0
    n = callers * per_caller
    return n / elapsed, (store.round_trips - before) / n


def one_call(store: InboxStore, requests: list[StoreRequest]) -> tuple[float, int]:
    """One ``store_messages`` call; returns (milliseconds, round trips)."""
    before = store.round_trips
    t0 = time.perf_counter()
    outcomes = store.store_messages(requests, time.time())
    elapsed = time.perf_counter() - t0
    errors = [o for o in outcomes if isinstance(o, PushError)]
    if errors:
        raise errors[0]
    return elapsed * 1000, store.round_trips - before


def scenarios(name: str, fresh: Callable[[], InboxStore], scale: int) -> list[list[object]]:
    rows: list[list[object]] = []

    def concurrent(callers: int, per_caller: int) -> None:
        store = fresh()
        try:
            run(store, min(callers, 10), 2)  # warm up
            rate, trips = run(store, callers, per_caller)
            label = "one at a time" if callers == 1 else f"{callers} concurrent callers"
            rows.append([name, f"unicast, {label}", callers * per_caller, rate, trips, ""])
            print(rows[-1], flush=True)
        finally:
            store.close()

    concurrent(1, 30 * scale)
    concurrent(50, 8 * scale)
    concurrent(200, 2 * scale)

    store = fresh()
    try:
        for n in (10, 100):
            ms, trips = one_call(store, [unicast() for _ in range(n)])
            label = f"one call of {n} unicast pushes"
            rows.append([name, label, n, n / ms * 1000, trips / n, trips])
            print(rows[-1], flush=True)
        fanout = tuple(f"fan-{i}" for i in range(1000))
        for kind in ("new", "existing"):
            ms, trips = one_call(store, [request(fanout)])
            label = f"one push to 1,000 {kind} users"
            rows.append([name, label, 1, 1000 / ms * 1000, trips, trips])
            print(rows[-1], flush=True)
    finally:
        store.close()
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--record", action="store_true", help="append to bench/RESULTS.md")
    args = parser.parse_args()
    rows: list[list[object]] = []
    with tempfile.TemporaryDirectory(prefix="pushsvc-bench-") as tmp:
        dirs = itertools.count()
        rows += scenarios("embedded", lambda: EmbeddedStore(f"{tmp}/{next(dirs)}"), 10)
    server = FerretDB().start()
    try:
        rows += scenarios(
            "MongoDB wire (FerretDB)",
            lambda: MongoInbox(MongoDatabase(server.uri, f"bench_{uuid.uuid4().hex}")),
            1,
        )
    finally:
        server.cleanup()
    headers = [
        "store",
        "scenario",
        "pushes",
        "stored pushes/s (1,000 users: recipients/s)",
        "round trips per push",
        "round trips per call",
    ]
    text = table(headers, rows)
    print(text)
    if args.record:
        append_results(
            "Stores: group commit and round trips",
            __doc__.split("\n\n")[1].replace("\n", " ") + "\n\n" + text,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
