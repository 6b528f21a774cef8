"""Tables kept beside the embedded inbox: the revocation list and the receipt log.

Each ``SideDatabase`` is a connection and an OS thread of its own, so the
inbox's group commit never waits behind them in Python. The revocation list
lives in the inbox's own file (``pushsvc.db``: a backup holds it; its writes are
rare). The receipt log, written on every flush of receipts, has a file of its
own (``receipts.db``), so its writes never hold the inbox's write lock; it
attaches ``pushsvc.db`` to read the inbox (to resolve acked seqs to message
ids). SQLite in WAL mode lets readers and a writer work at once.

Writes are ``synchronous = NORMAL`` unless a caller asks for a durable one: a
committed write survives a crash of the process, and reaches the disk with the
next sync; a revocation, which must survive a power cut as well, asks for
``durable``.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from gevent.monkey import get_original
from gevent.threadpool import ThreadPool

from pushsvc.errors import StoreUnavailable

T = TypeVar("T")


class SideDatabase:
    """One connection to ``path`` on its own thread, shared by the side stores.

    Like ``MongoDatabase``: each store calls ``attach`` when created and
    ``detach`` when closed; the connection closes with the last one.
    """

    def __init__(
        self, path: str | pathlib.Path, attach: dict[str, pathlib.Path] | None = None
    ) -> None:
        self.path = pathlib.Path(path)
        self._attach = dict(attach or {})  # schema name -> another database file, to read
        self._conn: sqlite3.Connection | None = None
        self._lock = get_original("_thread", "allocate_lock")()
        self._pool = ThreadPool(1)
        self._holders = 0
        self._closed = False

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            # Created 0600 before SQLite opens it; its -wal and -shm files take its mode.
            os.close(os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600))
            conn = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA busy_timeout = 5000")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            for name, other in self._attach.items():
                conn.execute("ATTACH DATABASE ? AS " + name, (str(other),))
            self._conn = conn
        return self._conn

    def run(
        self, fn: Callable[[sqlite3.Connection], T], *, write: bool = False, durable: bool = False
    ) -> T:
        """``fn(conn)`` on the side thread; in one transaction when ``write``."""
        if self._closed:
            raise StoreUnavailable(f"{self.path} is closed")
        return self._pool.apply(self._guarded, (fn, write, durable))

    def _guarded(self, fn: Callable[[sqlite3.Connection], T], write: bool, durable: bool) -> T:
        with self._lock:
            if self._closed:
                raise StoreUnavailable(f"{self.path} is closed")
            try:
                conn = self._connection()
                if not write:
                    return fn(conn)
                if durable:
                    conn.execute("PRAGMA synchronous = FULL")
                conn.execute("BEGIN IMMEDIATE")
                try:
                    result = fn(conn)
                    conn.execute("COMMIT")
                finally:
                    if conn.in_transaction:
                        conn.rollback()
                    if durable:
                        conn.execute("PRAGMA synchronous = NORMAL")
                return result
            except sqlite3.Error as exc:
                self._drop()
                raise StoreUnavailable(f"embedded store {self.path} failed: {exc}") from None

    def _drop(self) -> None:
        """After an error, reopen on next use (the file may have been replaced)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(sqlite3.Error):
                conn.close()

    def attach(self) -> None:
        self._holders += 1

    def detach(self) -> None:
        self._holders -= 1
        if self._holders <= 0:
            self.close()

    def close(self) -> None:
        if self._closed:
            return

        def shut() -> None:
            with self._lock:
                self._closed = True
                self._drop()

        try:
            self._pool.apply(shut)
        finally:
            self._closed = True
            self._pool.kill()


def values_statements(
    conn: sqlite3.Connection, head: str, rows: Sequence[tuple[Any, ...]]
) -> Iterator[tuple[str, list[Any]]]:
    """``head`` + ``(?,…),(?,…)…`` statements with as many rows as SQLite takes at once:
    one call into sqlite3 per few thousand rows (each call hands the GIL back and
    forth), and nothing to parse, unlike JSON."""
    if not rows:
        return
    width = len(rows[0])
    per_statement = max(1, conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // width)
    one = "(" + ",".join("?" * width) + ")"
    for i in range(0, len(rows), per_statement):
        chunk = rows[i : i + per_statement]
        yield head + ",".join([one] * len(chunk)), [v for row in chunk for v in row]
