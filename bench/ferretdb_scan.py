"""Why pushes slow down on FerretDB: query cost against the size of the inbox.

FerretDB 1.24 on SQLite (the test server, DESIGN §3) answers queries that are
not on ``_id`` by scanning the collection. This times, at growing inbox sizes,
the commands pushsvc's MongoStore issues per push and per receipt batch, with
the same indexes the store creates. Runs in well under a minute.

    .venv/bin/python -m bench.ferretdb_scan --record
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import Any

import pymongo

from bench.common import append_results, table
from bench.ferretdb import FerretDB


def timed(fn: Callable[[], Any], n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="0,1000,5000,10000")
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    server = FerretDB().start()
    rows: list[list[object]] = []
    try:
        client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(server.uri)
        db = client["scan"]
        inbox, messages, counters = db["inbox"], db["messages"], db["counters"]
        inbox.create_index([("user_id", 1), ("seq", 1)], unique=True)
        inbox.create_index([("message_id", 1)])
        seq = [0]

        def insert_entry() -> None:
            seq[0] += 1
            inbox.insert_many([{"user_id": "new", "seq": seq[0], "message_id": f"x{seq[0]}"}])

        probes: list[tuple[str, Callable[[], Any], int]] = [
            ("inbox insert_many (1 doc)", insert_entry, 20),
            (
                "counters find_one_and_update by _id ($inc)",
                lambda: counters.find_one_and_update(
                    {"_id": "u1"}, {"$inc": {"seq": 1}}, upsert=True
                ),
                20,
            ),
            (
                "messages update_one by _id (commit)",
                lambda: messages.update_one({"_id": "m0"}, {"$set": {"pending": False}}),
                20,
            ),
            (
                "inbox update_many by message_id+user_id (receipts)",
                lambda: inbox.update_many(
                    {"message_id": "m5", "user_id": {"$in": ["u5"]}}, {"$set": {"delivered": True}}
                ),
                5,
            ),
            (
                "inbox find user_id, seq > x, sorted, limit 200 (replay)",
                lambda: list(
                    inbox.find(
                        {"user_id": "u3", "seq": {"$gt": 100_500}},
                        sort=[("user_id", 1), ("seq", 1)],
                        limit=200,
                    )
                ),
                5,
            ),
        ]
        for size in sizes:
            have = inbox.count_documents({"user_id": {"$ne": "new"}})
            if size > have:
                inbox.insert_many(
                    [
                        {"user_id": f"u{i % 100}", "seq": 100_000 + i, "message_id": f"m{i}"}
                        for i in range(have, size)
                    ]
                )
                messages.insert_many(
                    [
                        {"_id": f"m{i}", "payload": b"x" * 40, "pending": False}
                        for i in range(have, size)
                    ]
                )
            print(f"inbox of {size:,} entries", flush=True)
            rows.append([f"{size:,}", *(timed(fn, n) for _, fn, n in probes)])
        names = [name for name, _, _ in probes]
    finally:
        server.cleanup()
    # one row per command, one column per size
    headers = ["command (ms per call)", *(f"{r[0]} entries" for r in rows)]
    text = table(headers, [[name, *(r[i + 1] for r in rows)] for i, name in enumerate(names)])
    print(text)
    if args.record:
        append_results(
            "FerretDB 1.24 (SQLite) query cost against inbox size",
            "Same indexes as MongoStore; inbox entries spread over 100 users, one message body "
            "per entry. Mean of 5-20 calls per cell.\n\n" + text,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
