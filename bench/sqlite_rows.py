"""Rows out of SQLite while another thread runs Python: one call into sqlite3 per
row, or one row for all.

sqlite3 releases the GIL around every step of a statement, and a result of N
rows is N steps: on a node whose event loop keeps the GIL busy, each step waits
for the loop to hand it back. The embedded store allocates a group commit's
seqs with one upsert of the counters; this measures reading the new counters
back as a ``RETURNING`` (a row per user) against one ``json_group_object`` row,
for one group commit of ``--users`` users, on an idle process and beside a
thread that spins in Python (the GIL switch interval of a saturated node, 5 ms).
Runs in under a minute.

    .venv/bin/python -m bench.sqlite_rows [--users 256] [--rounds 20] [--record]
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.common import append_results, table

UPSERT = (
    "INSERT INTO counters (user_id, seq) VALUES {}"
    " ON CONFLICT (user_id) DO UPDATE SET seq = seq + excluded.seq"
)


def allocate(conn: sqlite3.Connection, users: list[str], how: str) -> dict[str, int]:
    """One group commit's seq allocation: the upsert, then the counters read back."""
    sql = UPSERT.format(",".join(["(?,1)"] * len(users)))
    conn.execute("BEGIN IMMEDIATE")
    if how == "RETURNING, a row per user":
        tops = {u: int(s) for u, s in conn.execute(sql + " RETURNING user_id, seq", users)}
    else:
        conn.execute(sql, users)
        (doc,) = conn.execute(
            "SELECT json_group_object(user_id, seq) FROM counters"
            " WHERE user_id IN (SELECT value FROM json_each(?))",
            (json.dumps(users),),
        ).fetchone()
        tops = json.loads(doc)
    conn.execute("COMMIT")
    return tops


def measure(conn: sqlite3.Connection, how: str, users: int, rounds: int) -> float:
    """Median milliseconds of one allocation."""
    took = []
    for r in range(rounds):
        batch = [f"user-{(r * users + i) % 10_000}" for i in range(users)]
        began = time.perf_counter()
        tops = allocate(conn, batch, how)
        took.append(time.perf_counter() - began)
        assert len(tops) == users
    return statistics.median(took) * 1000


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--users", type=int, default=256, help="users in one group commit")
    p.add_argument("--rounds", type=int, default=20, help="allocations per measurement")
    p.add_argument("--record", action="store_true", help="append the results to bench/RESULTS.md")
    args = p.parse_args()
    sys.setswitchinterval(0.005)  # CPython's default; a saturated node's (pushsvc.cpuload)
    ways = ("RETURNING, a row per user", "json_group_object, one row")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        conn = sqlite3.connect(Path(tmp) / "rows.db", isolation_level=None)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("CREATE TABLE counters (user_id TEXT PRIMARY KEY, seq INTEGER NOT NULL)")
        idle = {how: measure(conn, how, args.users, args.rounds) for how in ways}
        stop = threading.Event()

        def spin() -> None:  # an event loop's Python, without a system call
            n = 0
            while not stop.is_set():
                n += 1

        spinner = threading.Thread(target=spin, daemon=True)
        spinner.start()
        try:
            busy = {how: measure(conn, how, args.users, args.rounds) for how in ways}
        finally:
            stop.set()
            spinner.join()
        conn.close()
    for how in ways:
        rows.append((how, round(idle[how], 2), round(busy[how], 1)))
    out = table(("counters read back", "idle, ms", "beside a busy thread, ms"), rows)
    print(out)
    if args.record:
        command = ".venv/bin/python -m bench.sqlite_rows " + " ".join(sys.argv[1:])
        append_results(
            f"SQLite rows and the GIL: one group commit's seqs for {args.users} users",
            out
            + "\n\nMedian of "
            + str(args.rounds)
            + " allocations each (upsert, read back, commit).\n",
            command=command.strip(),
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
