"""The embedded store: SQLite in WAL mode inside the node's data directory.

One node, no cluster features. Every database call runs on one private OS
thread (a ``gevent.threadpool.ThreadPool(1)``), so greenlets calling the store
are serialised onto that thread while the event loop keeps running. It works
the same whether or not gevent has monkey-patched the standard library.

Each call into sqlite3 releases the GIL, and getting it back from a busy event
loop thread costs milliseconds. So work per recipient is done in SQL, one
statement for all recipients (rows bound as one multi-row ``VALUES``, or
``json_each`` over a JSON array of user ids), never one statement per recipient:
a push to 1,000 users is a handful of statements in one transaction (measured:
4 ms idle; 25 ms with the loop spinning, against 7 s for per-row statements).
Each row of a result is such a call too: what comes back per user comes back
as one JSON row (``json_group_object``), not a row per user (``bench/sqlite_rows.py``,
Dec 4 16:06: 1.1 ms either way on an idle process; beside a thread spinning in
Python, 50 ms against 1.7 s for 256 users).

Group commit: concurrent ``store_messages`` callers are coalesced (see
``batching``) and a whole batch is written by one call to the store's thread,
in one transaction with one fsync (``synchronous=FULL``), and in the same
handful of statements whatever the number of pushes: bodies in multi-row
inserts, seqs for every recipient of every push in one upsert of the counters,
entries in one insert. If that fails, the batch is written again one request
per savepoint, so a request that fails does not fail the others.

Seqs: a push allocates its seqs and inserts its entries in one transaction,
and SQLite has one writer at a time (also across processes sharing the file),
so a reader never sees a seq in flight: ``read_inbox`` is never blocked, and
a hole is always an expired entry.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import pathlib
import sqlite3
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any, TypeVar

from gevent.monkey import get_original
from gevent.threadpool import ThreadPool

from pushsvc.errors import ConfigError, InvalidArgument, NotFound, PushError, StoreUnavailable
from pushsvc.messages import Message
from pushsvc.store.batching import Call, GroupCommit
from pushsvc.store.inbox import (
    IDEMPOTENCY_WINDOW,
    DeliveredMark,
    InboxEntry,
    InboxPage,
    InboxStore,
    RecipientStatus,
    StoreRequest,
    StoreResult,
    UserStart,
    check_request,
)
from pushsvc.store.sqlite_side import values_statements

T = TypeVar("T")
Outcome = StoreResult | PushError
Item = tuple[StoreRequest, float]  # a request and the ``now`` it was stored at

DB_FILENAME = "pushsvc.db"
SCHEMA_VERSION = 3  # 2: presence.connections; 3: no nodes or presence, a probe table
MIN_SQLITE = (3, 24, 0)  # upsert; plus the JSON1 functions (built in since 3.38)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id           TEXT PRIMARY KEY,
    payload      BLOB NOT NULL,
    content_type TEXT NOT NULL,
    created_at   REAL NOT NULL,
    expires_at   REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_expires_at ON messages (expires_at);

CREATE TABLE IF NOT EXISTS inbox (
    user_id    TEXT NOT NULL,
    seq        INTEGER NOT NULL,
    message_id TEXT NOT NULL,
    expires_at REAL NOT NULL,
    delivered  INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, seq)
);
CREATE INDEX IF NOT EXISTS inbox_message ON inbox (message_id, user_id);
CREATE INDEX IF NOT EXISTS inbox_expires_at ON inbox (expires_at);

CREATE TABLE IF NOT EXISTS counters (
    user_id TEXT PRIMARY KEY,
    seq     INTEGER NOT NULL
);

CREATE TABLE IF NOT EXISTS acks (
    user_id   TEXT PRIMARY KEY,
    acked_seq INTEGER NOT NULL
);

CREATE TABLE IF NOT EXISTS idempotency (
    key        TEXT PRIMARY KEY,
    message_id TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS idempotency_created_at ON idempotency (created_at);

CREATE TABLE IF NOT EXISTS probe (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    at REAL NOT NULL
);
"""

_ENTRY_COLUMNS = "i.user_id, i.seq, m.id, m.payload, m.content_type, m.created_at, m.expires_at"

# Errors after which the connection itself is suspect: reopen it on next use.
_REOPEN_MARKERS = ("disk i/o error", "unable to open", "malformed", "not a database", "readonly")
# Requests per group commit: bounds one transaction's time and memory.
MAX_BATCH = 2000


def _fatal(exc: sqlite3.Error) -> bool:
    """Whether an error means the connection itself is suspect."""
    return any(m in str(exc).lower() for m in _REOPEN_MARKERS)


def _entry(row: tuple[Any, ...]) -> InboxEntry:
    user_id, seq, mid, payload, ctype, created_at, expires_at = row
    return InboxEntry(user_id, seq, Message(mid, bytes(payload), ctype, created_at, expires_at))


def _seqs_of(conn: sqlite3.Connection, message_ids: Iterable[str]) -> dict[str, dict[str, int]]:
    """Each recipient's seq of each message, one row per message (see the module notes)."""
    rows = conn.execute(
        "SELECT message_id, json_group_object(user_id, seq) FROM inbox"
        " WHERE message_id IN (SELECT value FROM json_each(?)) GROUP BY message_id",
        (json.dumps(list(message_ids)),),
    ).fetchall()
    return {mid: json.loads(seqs) for mid, seqs in rows}


class EmbeddedStore(InboxStore):
    """SQLite store for a single node: ``EmbeddedStore(data_dir)``.

    The database is ``<data_dir>/pushsvc.db`` (see :attr:`path`); the
    directory is created if missing. Raises ``ConfigError`` when the
    directory or the database cannot be created or written.
    """

    read_concurrency = 4  # one database thread: more readers would only queue there

    def __init__(self, data_dir: str | pathlib.Path) -> None:
        self.data_dir = pathlib.Path(data_dir)
        self.path = self.data_dir / DB_FILENAME
        try:
            self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise ConfigError(
                f"data directory {self.data_dir} cannot be created: {reason}"
            ) from None
        self._conn: sqlite3.Connection | None = None
        self._closed = False
        # Serialises callers on other OS threads (which gevent's pool runs
        # inline) with the pool's worker. A real lock, even when patched.
        self._lock = get_original("_thread", "allocate_lock")()
        self._pool = ThreadPool(1)
        self._batcher = GroupCommit(self._write_batch, MAX_BATCH)
        self._round_trips = 0
        try:
            self._pool.apply(self._open)
        except (sqlite3.Error, OSError) as exc:
            self._pool.kill()
            raise ConfigError(
                f"data directory {self.data_dir}: cannot open {self.path}: {exc}"
            ) from None

    @property
    def round_trips(self) -> int:
        """Calls made to the database thread (each one hand-off, at most one fsync)."""
        return self._round_trips

    # -- plumbing ---------------------------------------------------------------

    def _open(self) -> sqlite3.Connection:
        """Open (or reopen) the connection; runs on the store's thread."""
        # Created 0600 before SQLite opens it; its -wal and -shm files take its mode.
        os.close(os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600))
        conn = sqlite3.connect(
            str(self.path),
            isolation_level=None,  # explicit BEGIN/COMMIT only
            check_same_thread=False,
            cached_statements=256,
        )
        try:
            if sqlite3.sqlite_version_info < MIN_SQLITE:
                raise sqlite3.OperationalError(
                    f"SQLite {sqlite3.sqlite_version} is too old: need"
                    f" {'.'.join(map(str, MIN_SQLITE))} or later"
                )
            # json_each() batches per-recipient work into one statement.
            conn.execute("SELECT count(*) FROM json_each('[1]')").fetchone()
            # Other processes may hold the write lock (tests, backups): wait for it.
            conn.execute("PRAGMA busy_timeout = 10000")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise sqlite3.OperationalError(f"cannot enable WAL mode (journal_mode={mode})")
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = OFF")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise sqlite3.OperationalError(
                    f"schema version {version} is newer than this build ({SCHEMA_VERSION})"
                )
            conn.execute("BEGIN IMMEDIATE")
            if 0 < version < 3:
                # Registrations and presence are the fleet's (MongoRegistry); a
                # node on this store answers them from its own memory.
                conn.execute("DROP TABLE IF EXISTS presence")
                conn.execute("DROP TABLE IF EXISTS nodes")
            for stmt in _SCHEMA.split(";"):
                if stmt.strip():
                    conn.execute(stmt)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        return conn

    def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(conn)`` on the store's thread; map sqlite errors."""
        if self._closed:
            raise StoreUnavailable(f"embedded store {self.path} is closed")
        self._round_trips += 1
        return self._pool.apply(self._guarded, (fn,))

    def _guarded(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        with self._lock:
            if self._closed:
                raise StoreUnavailable(f"embedded store {self.path} is closed")
            try:
                conn = self._conn if self._conn is not None else self._open()
            except sqlite3.Error as exc:
                raise StoreUnavailable(
                    f"embedded store {self.path} cannot be opened: {exc}"
                ) from None
            try:
                return fn(conn)
            except sqlite3.Error as exc:
                self._recover(conn, exc)
                raise StoreUnavailable(f"embedded store {self.path} failed: {exc}") from None
            except BaseException:
                if conn.in_transaction:
                    conn.rollback()
                raise

    def _recover(self, conn: sqlite3.Connection, exc: sqlite3.Error) -> None:
        with contextlib.suppress(sqlite3.Error):
            if conn.in_transaction:
                conn.rollback()
        if _fatal(exc):
            with contextlib.suppress(sqlite3.Error):
                conn.close()
            self._conn = None

    def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(conn)`` in one write transaction on the store's thread."""
        return self._call(functools.partial(_in_transaction, fn))

    # -- messages and inboxes ---------------------------------------------------

    def _store_checked(
        self, requests: list[StoreRequest], now: float
    ) -> list[StoreResult | PushError]:
        return self._batcher.submit(requests, now)

    def _write_batch(self, calls: list[Call]) -> None:
        """Write the requests of concurrent callers in one transaction (one fsync)."""
        items = [(r, c.now) for c in calls for r in c.requests]
        try:
            outcomes: list[Outcome] = self._call(functools.partial(self._commit_batch, items))
        except StoreUnavailable as exc:
            outcomes = [exc] * len(items)
        start = 0
        for call in calls:
            call.outcomes = outcomes[start : start + len(call.requests)]
            start += len(call.requests)

    def _commit_batch(self, items: Sequence[Item], conn: sqlite3.Connection) -> list[Outcome]:
        """Runs on the store's thread. Every request at once; if that fails, each
        request in a savepoint of its own, so one failing request does not fail
        the others. Errors that make the connection suspect fail the batch."""

        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute("SAVEPOINT batch")
            try:
                outcomes = _store_requests(conn, items)
            except sqlite3.Error as exc:
                if _fatal(exc):
                    raise
                conn.execute("ROLLBACK TO batch")
                outcomes = []
                for item in items:
                    conn.execute("SAVEPOINT one")
                    try:
                        outcomes += _store_requests(conn, [item])
                    except sqlite3.Error as one_exc:
                        if _fatal(one_exc):
                            raise
                        outcomes.append(
                            StoreUnavailable(f"embedded store {self.path} failed: {one_exc}")
                        )
                        conn.execute("ROLLBACK TO one")
                    conn.execute("RELEASE one")
            conn.execute("RELEASE batch")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.rollback()
            raise
        return outcomes

    def read_inbox(self, user_id: str, after_seq: int, limit: int, now: float) -> InboxPage:
        # Never blocked: see the module notes.
        if limit <= 0:
            return InboxPage(())
        rows = self._call(
            lambda conn: conn.execute(
                f"SELECT {_ENTRY_COLUMNS} FROM inbox i JOIN messages m ON m.id = i.message_id"
                " WHERE i.user_id = ? AND i.seq > ? AND i.expires_at > ?"
                " ORDER BY i.seq LIMIT ?",
                (user_id, after_seq, now, limit + 1),
            ).fetchall()
        )
        return InboxPage(tuple(_entry(r) for r in rows[:limit]), None, len(rows) > limit)

    def user_starts(self, user_ids: Sequence[str]) -> dict[str, UserStart]:
        users = list(dict.fromkeys(user_ids))
        if not users:
            return {}
        # One row for all the users (a row each is a GIL hand-off each: module notes).
        (doc,) = self._call(
            lambda conn: conn.execute(
                "SELECT json_group_array(json_array(j.value, COALESCE(c.seq, 0),"
                " COALESCE(a.acked_seq, 0))) FROM json_each(?) j"
                " LEFT JOIN counters c ON c.user_id = j.value"
                " LEFT JOIN acks a ON a.user_id = j.value",
                (json.dumps(users),),
            ).fetchone()
        )
        return {u: UserStart(int(latest), int(acked)) for u, latest, acked in json.loads(doc)}

    def ack_many(self, acks: Mapping[str, int]) -> None:
        if not acks:
            return
        seqs = json.dumps({u: max(int(s), 0) for u, s in acks.items()})
        self._write(
            lambda conn: conn.execute(
                "INSERT INTO acks (user_id, acked_seq) SELECT key, value FROM json_each(?)"
                " WHERE true ON CONFLICT (user_id) DO UPDATE"
                " SET acked_seq = max(acked_seq, excluded.acked_seq)",
                (seqs,),
            )
        )

    def mark_delivered(self, receipts: Sequence[DeliveredMark]) -> None:
        if not receipts:
            return
        pairs = [(m, u) for m, u, _ in receipts]  # a mark lives in its entry: no expiry of its own

        def mark(conn: sqlite3.Connection) -> None:
            for sql, params in values_statements(conn, "VALUES ", pairs):
                # The pairs as a subquery of their own: so the index is searched
                # (with a bare VALUES list, SQLite 3.40 scans the whole table).
                conn.execute(
                    "UPDATE inbox SET delivered = 1 WHERE (message_id, user_id) IN"
                    " (SELECT column1, column2 FROM (" + sql + "))",
                    params,
                )

        self._write(mark)

    def message_status(self, message_id: str, now: float) -> list[RecipientStatus]:
        rows = self._call(
            lambda conn: conn.execute(
                "SELECT i.user_id, i.seq, i.delivered, COALESCE(a.acked_seq, 0) >= i.seq"
                " FROM inbox i LEFT JOIN acks a ON a.user_id = i.user_id"
                " WHERE i.message_id = ? AND i.expires_at > ? ORDER BY i.user_id",
                (message_id, now),
            ).fetchall()
        )
        if not rows:
            raise NotFound(f"message {message_id} is unknown or has expired")
        return [RecipientStatus(u, int(s), bool(d), bool(a)) for u, s, d, a in rows]

    # -- housekeeping -------------------------------------------------------------

    def probe(self) -> None:
        self._write(
            lambda conn: conn.execute(
                "INSERT INTO probe (id, at) VALUES (1, ?)"
                " ON CONFLICT (id) DO UPDATE SET at = excluded.at",
                (time.time(),),
            )
        )

    def sweep(self, now: float, live_writers: Collection[str] | None = None) -> int:
        return self._write(functools.partial(_sweep, now))

    def close(self) -> None:
        if self._closed:
            return

        def shut() -> None:
            with self._lock:
                self._closed = True
                conn, self._conn = self._conn, None
                if conn is not None:
                    conn.close()

        try:
            self._pool.apply(shut)
        finally:
            self._closed = True
            self._pool.kill()

    def backup(self, target: str | pathlib.Path) -> None:
        """Copy the whole database into ``target``, a new SQLite file, with SQLite's
        online backup API on the store's thread. It is copied in one step, inside one
        read transaction: a consistent snapshot of every committed push, taken while
        this node (or one in another process, on the same file) goes on writing,
        which WAL mode does not block. Raises StoreUnavailable if the copy fails."""

        def copy(conn: sqlite3.Connection) -> None:
            try:
                dest = sqlite3.connect(str(target), isolation_level=None)
            except sqlite3.Error as exc:
                raise StoreUnavailable(f"cannot create the backup {target}: {exc}") from None
            try:
                conn.backup(dest)  # pages=-1: everything in one step, one snapshot
            except sqlite3.Error as exc:
                raise StoreUnavailable(f"backup to {target} failed: {exc}") from None
            finally:
                dest.close()

        self._call(copy)


# -- what runs on the store's thread ------------------------------------------------


def _in_transaction(fn: Callable[[sqlite3.Connection], T], conn: sqlite3.Connection) -> T:
    """Run ``fn(conn)`` in one write transaction; roll back on any error."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = fn(conn)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.rollback()
        raise
    return result


def _store_requests(conn: sqlite3.Connection, items: Sequence[Item]) -> list[Outcome]:
    """Store requests inside the caller's transaction, in a handful of statements
    whatever their number (see the module notes). Seqs follow the list order.

    Requests whose idempotency key was seen get the first push's result; a
    later request of the list with the key of an earlier one follows it.
    """
    outcomes: list[Outcome | None] = [None] * len(items)

    # Keys stored by earlier transactions, within each request's window.
    keyed = [i for i, (r, _) in enumerate(items) if r.idempotency_key]
    if keyed:
        probe = [[items[i][0].idempotency_key, items[i][1] - IDEMPOTENCY_WINDOW] for i in keyed]
        found = conn.execute(
            "SELECT j.key, i.message_id FROM json_each(?) j JOIN idempotency i"
            " ON i.key = json_extract(j.value, '$[0]')"
            " AND i.created_at > json_extract(j.value, '$[1]')",
            (json.dumps(probe),),
        ).fetchall()
        first_ids = {keyed[pos]: mid for pos, mid in found}
        if first_ids:
            seen = _seqs_of(conn, first_ids.values())
            for i, mid in first_ids.items():
                users = items[i][0].user_ids
                outcomes[i] = StoreResult(
                    mid, tuple(seen.get(mid, {}).get(u, 0) for u in users), duplicate=True
                )

    # Keys repeated within the list follow their first request.
    leaders: dict[str, int] = {}
    followers: dict[int, int] = {}
    for i in keyed:
        key = items[i][0].idempotency_key
        if outcomes[i] is None:
            if key in leaders:
                followers[i] = leaders[key]
            else:
                leaders[key] = i

    # Message ids already stored, or repeated in the list, are refused.
    todo = [i for i in range(len(items)) if outcomes[i] is None and i not in followers]
    if todo:
        ids = [items[i][0].message.id for i in todo]
        taken = {
            row[0]
            for row in conn.execute(
                "SELECT id FROM messages WHERE id IN (SELECT value FROM json_each(?))",
                (json.dumps(ids),),
            )
        }
        for i in todo:
            mid = items[i][0].message.id
            if mid in taken:
                outcomes[i] = InvalidArgument(f"message id {mid} is already stored")
            taken.add(mid)
        todo = [i for i in todo if outcomes[i] is None]

    if todo:
        _insert_bodies(conn, [items[i][0].message for i in todo])
        # Allocate every recipient's seqs at once: each user's counter goes up
        # by its number of entries, which then take the seqs in list order.
        counts: dict[str, int] = {}
        for i in todo:
            for u in items[i][0].user_ids:
                counts[u] = counts.get(u, 0) + 1
        for sql, params in values_statements(
            conn, "INSERT INTO counters (user_id, seq) VALUES ", list(counts.items())
        ):
            conn.execute(
                sql + " ON CONFLICT (user_id) DO UPDATE SET seq = seq + excluded.seq", params
            )
        # The counters as they are now, in one row: a row each (a RETURNING) would
        # be a call into sqlite3 each, and each hands the GIL back and forth.
        (tops,) = conn.execute(
            "SELECT json_group_object(user_id, seq) FROM counters"
            " WHERE user_id IN (SELECT value FROM json_each(?))",
            (json.dumps(list(counts)),),
        ).fetchone()
        next_seq = {u: int(top) - counts[u] + 1 for u, top in json.loads(tops).items()}
        entries: list[tuple[str, int, str, float]] = []
        for i in todo:
            request = items[i][0]
            exp = check_request(request)
            seqs = []
            for u in request.user_ids:
                seqs.append(next_seq[u])
                entries.append((u, next_seq[u], request.message.id, exp))
                next_seq[u] += 1
            outcomes[i] = StoreResult(request.message.id, tuple(seqs))
        for sql, params in values_statements(
            conn, "INSERT INTO inbox (user_id, seq, message_id, expires_at) VALUES ", entries
        ):
            conn.execute(sql, params)
        keys = [
            [items[i][0].idempotency_key, items[i][0].message.id, items[i][1]]
            for i in todo
            if items[i][0].idempotency_key
        ]
        if keys:
            conn.execute(
                "INSERT INTO idempotency (key, message_id, created_at)"
                " SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'),"
                " json_extract(value, '$[2]') FROM json_each(?) WHERE true"
                " ON CONFLICT (key) DO UPDATE SET message_id = excluded.message_id,"
                " created_at = excluded.created_at",
                (json.dumps(keys),),
            )

    for i, leader in followers.items():
        outcomes[i] = _follow(outcomes[leader], items[leader][0], items[i][0])
    assert all(o is not None for o in outcomes)
    return [o for o in outcomes if o is not None]


def _follow(first: Outcome | None, leader: StoreRequest, request: StoreRequest) -> Outcome:
    """The outcome of a request whose key an earlier request of the batch used:
    the first one's result as a duplicate, or its error."""
    assert first is not None
    if isinstance(first, StoreResult):
        seqs = dict(zip(leader.user_ids, first.seqs, strict=True))
        return StoreResult(
            first.message_id, tuple(seqs.get(u, 0) for u in request.user_ids), duplicate=True
        )
    return first


def _insert_bodies(conn: sqlite3.Connection, messages: Sequence[Message]) -> None:
    """Insert message bodies, as many per statement as SQLite takes."""
    rows = [(m.id, m.payload, m.content_type, m.created_at, m.expires_at) for m in messages]
    for sql, params in values_statements(
        conn,
        "INSERT INTO messages (id, payload, content_type, created_at, expires_at) VALUES ",
        rows,
    ):
        conn.execute(sql, params)


def _sweep(now: float, conn: sqlite3.Connection) -> int:
    removed = 0
    for sql, args in (
        # Bodies first, while the expired inbox rows still say which messages
        # they referenced: only those are looked at, so the sweep costs what
        # expired, not what is stored.
        (
            "DELETE FROM messages WHERE expires_at <= ?1 OR (id IN"
            " (SELECT message_id FROM inbox WHERE expires_at <= ?1)"
            " AND NOT EXISTS (SELECT 1 FROM inbox i"
            " WHERE i.message_id = messages.id AND i.expires_at > ?1))",
            (now,),
        ),
        ("DELETE FROM inbox WHERE expires_at <= ?", (now,)),
        ("DELETE FROM idempotency WHERE created_at <= ?", (now - IDEMPOTENCY_WINDOW,)),
    ):
        removed += conn.execute(sql, args).rowcount
    return removed
