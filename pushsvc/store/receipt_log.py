"""The receipt log: delivered and acked events, durable and ordered, for StreamReceipts.

Cursor design
-------------
Every node appends its events under its own *source* (its node id) with a
counter ``n`` of its own: one writer per source, appending in batches (one per
flush of ``receipts.Receipts``). A batch is written, then *committed*: the
source's mark ``committed`` is raised to the batch's last ``n``. Readers read a
source only up to its committed mark, so on MongoDB without transactions (where
an unordered bulk insert may become visible in any order) a reader never sees
event ``n`` before every earlier event of that source it will ever see. A
stream's cursor is therefore a vector: for each source, the last ``n`` it has
seen. Resuming reads, per source, the events above the cursor's entry: nothing
recorded after the cursor is missed, and nothing at or before it comes again.

- ``n`` is the time of the batch in microseconds, or one above the source's
  last ``n`` when that is later: it never goes back, even for a node that comes
  back after its records were swept, and old events are found by ``n`` alone.
- A batch that failed half-way leaves its ``n`` values used: the events it did
  write become visible with the next commit (they are below its mark), and
  ``ReceiptBatch.prev`` of the next batch says where the gap starts, so a node
  that was handed the batch reads the gap from the log.
- Each (kind, message, recipient) is recorded once: its key is unique (the
  document id on MongoDB), so a message delivered to two devices, or an ack
  range two nodes both report, yields one event. The key lives as long as the
  event, the retention window.

Retention: events older than ``retention`` seconds are swept; each source keeps
``swept``, the highest ``n`` removed, so a cursor below it is known to have
missed events. Sources idle for twice the retention are forgotten.

The log also resolves what the inbox knows, in one query per batch: the seq of
a delivered (message, recipient), and the messages an ack range covers. It
reads the inbox's ``user_id``, ``seq`` and ``message_id`` for that (on MongoDB
also the entry's write attempt ``w`` and its body's ``w`` and ``pending``, to
count only entries of committed pushes, as the inbox's own readers do).
"""

from __future__ import annotations

import json
import logging
import sqlite3
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, NamedTuple

from pymongo import ASCENDING, DESCENDING, UpdateOne
from pymongo.collection import Collection
from pymongo.errors import BulkWriteError

from pushsvc.store.commit_records import find_settled
from pushsvc.store.mongo_database import (
    DUPLICATE_KEY,
    Doc,
    MongoDatabase,
    guarded,
    retry_duplicate,
)
from pushsvc.store.sqlite_side import SideDatabase, values_statements

log = logging.getLogger(__name__)

RECEIPTS_DB = "receipts.db"  # the embedded store's receipt log, beside pushsvc.db
LOOKUP_CHUNK = 200  # (message, user) pairs or ack ranges per inbox query


class Kind(IntEnum):
    """What happened (the numbers of ``pushsvc.v1.ReceiptKind``)."""

    DELIVERED = 1
    ACKED = 2


class Receipt(NamedTuple):
    """An event to record (tuples: a flush makes thousands)."""

    kind: Kind
    message_id: str
    user_id: str
    seq: int
    owner: str  # owners.owner_of(message_id)
    at: float

    @property
    def key(self) -> str:
        return f"{'d' if self.kind is Kind.DELIVERED else 'a'}:{self.message_id}:{self.user_id}"


class ReceiptEvent(NamedTuple):
    """A recorded event: ``n`` is its place in its source's counter."""

    source: str
    n: int
    kind: Kind
    message_id: str
    user_id: str
    seq: int
    owner: str
    at: float


@dataclass(frozen=True, slots=True)
class ReceiptBatch:
    """Every event of one source with ``n`` in (``prev``, ``upto``], all committed.

    After an append that failed half-way, the next batch's ``prev`` is above the
    committed mark before it: the events between (those the failed append did
    write) are in the log only, and a reader that was at that mark reads them
    there.
    """

    source: str
    prev: int
    upto: int
    events: tuple[ReceiptEvent, ...]


@dataclass(frozen=True, slots=True)
class ReceiptFilter:
    """Which events a stream wants: of these recipients, or of this owner's messages."""

    user_ids: frozenset[str] = field(default_factory=frozenset)
    owner: str = ""

    def matches(self, event: ReceiptEvent) -> bool:
        if self.user_ids:
            return event.user_id in self.user_ids
        return event.owner == self.owner


@dataclass(frozen=True, slots=True)
class SourceMark:
    committed: int  # everything up to it is readable
    swept: int  # everything up to it is gone


class ReceiptLog(ABC):
    """The log, written by this node as ``source``, read for every source."""

    def __init__(self, source: str, retention: float) -> None:
        self.source = source
        self.retention = retention
        self._last: int | None = None  # the last n handed out (None: not read yet)

    def prepare(self) -> None:
        """Set the log up and read where this source stands, ahead of the first
        append (which does it otherwise): at a node's start, while the database is
        quiet -- FerretDB can hang on an index creation that meets a busy pool.
        Raises ``StoreUnavailable``; the first append then tries again."""
        self._position()

    def _position(self) -> int:
        """The last n handed out, read from the log the first time."""
        if self._last is None:
            self._last = self._stored_max()
        return self._last

    def append(self, receipts: Sequence[Receipt], now: float) -> ReceiptBatch:
        """Record and commit ``receipts`` (durable when it returns); the batch holds
        the events actually added (repeats of recorded events are left out).
        Raises ``StoreUnavailable``; the events may then be recorded in part, and
        appending them again records the rest."""
        prev = self._position()
        # n is the time in microseconds, or one above the last if that is later.
        first = max(prev + 1, int(now * 1_000_000))
        events = [ReceiptEvent(self.source, first + i, *r) for i, r in enumerate(receipts)]
        self._last = first + len(events) - 1 if events else prev
        added = self._write(events, [r.key for r in receipts]) if events else []
        return ReceiptBatch(self.source, prev, self._last, tuple(added))

    @abstractmethod
    def _stored_max(self) -> int:
        """The highest n this source has in the log or in its mark (0 if none)."""

    @abstractmethod
    def _write(self, events: list[ReceiptEvent], keys: list[str]) -> list[ReceiptEvent]:
        """Insert the events (skipping taken keys), then raise the committed mark to
        the last n; returns the events inserted."""

    @abstractmethod
    def marks(self) -> dict[str, SourceMark]:
        """Each known source's committed and swept marks."""

    @abstractmethod
    def read(
        self, source: str, after: int, upto: int, limit: int, flt: ReceiptFilter | None
    ) -> list[ReceiptEvent]:
        """Up to ``limit`` events of ``source`` with n in (after, upto], ascending,
        matching ``flt`` (all when None)."""

    @abstractmethod
    def delivered_seqs(
        self, pairs: Sequence[tuple[str, str]], now: float
    ) -> dict[tuple[str, str], int]:
        """The inbox seq of each (message id, user id) still stored."""

    @abstractmethod
    def acked_messages(
        self, ranges: Mapping[str, tuple[int, int]], now: float
    ) -> list[tuple[str, int, str]]:
        """(user, seq, message id) of each stored entry with seq in (a, b] for
        ``ranges[user] = (a, b)``, by user then seq."""

    @abstractmethod
    def sweep(self, now: float) -> int:
        """Remove events older than the retention; forget sources idle for twice it."""

    @abstractmethod
    def close(self) -> None:
        """Release the connection."""


def _chunks(items: Sequence[Any], size: int = LOOKUP_CHUNK) -> Iterable[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _by_message(pairs: Sequence[tuple[str, str]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for message_id, user_id in pairs:
        out.setdefault(message_id, []).append(user_id)
    return out


# -- MongoDB ------------------------------------------------------------------------------


def _event_of(d: Doc) -> ReceiptEvent:
    return ReceiptEvent(
        d["source"],
        int(d["n"]),
        Kind(int(d["kind"])),
        d["message_id"],
        d["user_id"],
        int(d["seq"]),
        d.get("owner", ""),
        float(d["at"]),
    )


def _mongo_filter(flt: ReceiptFilter | None) -> Doc:
    if flt is None:
        return {}
    if flt.user_ids:
        return {"user_id": {"$in": sorted(flt.user_ids)}}
    return {"owner": flt.owner}


class MongoReceiptLog(ReceiptLog):
    """Collections ``receipts`` (``_id`` = the event's key) and ``receipt_sources``."""

    def __init__(self, database: MongoDatabase, source: str, retention: float) -> None:
        super().__init__(source, retention)
        self.database = database
        self._events: Collection[Doc] = database.collection("receipts")
        self._sources: Collection[Doc] = database.collection("receipt_sources")
        self._inbox: Collection[Doc] = database.collection("inbox")
        self._messages: Collection[Doc] = database.collection("messages")
        self._ready = False  # indexes are made by the first call (a store down at start
        self._closed = False  # must not hold the node's start-up up)
        database.attach()

    def _ensure_ready(self) -> None:
        if not self._ready:
            self.database.detect()
            self.database.index(self._events, [("source", ASCENDING), ("n", ASCENDING)])
            self._ready = True

    @guarded
    def _stored_max(self) -> int:
        top = self._events.find_one({"source": self.source}, {"n": 1}, sort=[("n", DESCENDING)])
        mark = self._sources.find_one({"_id": self.source}, {"committed": 1})
        return max(int(top["n"]) if top else 0, int(mark["committed"]) if mark else 0)

    @guarded
    def _write(self, events: list[ReceiptEvent], keys: list[str]) -> list[ReceiptEvent]:
        docs = [
            {
                "_id": key,
                "source": e.source,
                "n": e.n,
                "kind": int(e.kind),
                "message_id": e.message_id,
                "user_id": e.user_id,
                "seq": e.seq,
                "owner": e.owner,
                "at": e.at,
            }
            for e, key in zip(events, keys, strict=True)
        ]
        taken: set[int] = set()
        try:
            self._events.insert_many(docs, ordered=False)
        except BulkWriteError as exc:
            errors = exc.details.get("writeErrors", [])
            if not errors or any(e.get("code") != DUPLICATE_KEY for e in errors):
                raise
            taken = {int(e["index"]) for e in errors}
        upto = events[-1].n
        retry_duplicate(
            lambda: self._sources.update_one(
                {"_id": self.source},
                {"$set": {"committed": upto, "at": events[-1].at}, "$setOnInsert": {"swept": 0}},
                upsert=True,
            )
        )
        return [e for i, e in enumerate(events) if i not in taken]

    @guarded
    def marks(self) -> dict[str, SourceMark]:
        return {
            d["_id"]: SourceMark(int(d.get("committed", 0)), int(d.get("swept", 0)))
            for d in self._sources.find({}, {"committed": 1, "swept": 1})
        }

    @guarded
    def read(
        self, source: str, after: int, upto: int, limit: int, flt: ReceiptFilter | None
    ) -> list[ReceiptEvent]:
        if upto <= after or limit <= 0:
            return []
        query = {"source": source, "n": {"$gt": after, "$lte": upto}, **_mongo_filter(flt)}
        return [
            _event_of(d) for d in self._events.find(query, sort=[("n", ASCENDING)], limit=limit)
        ]

    @guarded
    def delivered_seqs(
        self, pairs: Sequence[tuple[str, str]], now: float
    ) -> dict[tuple[str, str], int]:
        out: dict[tuple[str, str], int] = {}
        by_message = list(_by_message(pairs).items())
        for chunk in _chunks(by_message):
            query = {
                "$or": [{"message_id": m, "user_id": {"$in": us}} for m, us in chunk],
                "exp": {"$gt": now},
            }
            # One entry per pair, as a rule: all in the first batch, no getMore.
            size = sum(len(us) for _, us in chunk) + 1
            fields = {"message_id": 1, "user_id": 1, "seq": 1, "w": 1}
            docs = list(self._inbox.find(query, fields, batch_size=size))
            for d in self._committed(docs):
                out[(d["message_id"], d["user_id"])] = int(d["seq"])
        return out

    @guarded
    def acked_messages(
        self, ranges: Mapping[str, tuple[int, int]], now: float
    ) -> list[tuple[str, int, str]]:
        out: list[tuple[str, int, str]] = []
        items = [(u, a, b) for u, (a, b) in ranges.items() if b > a]
        for chunk in _chunks(items):
            query = {
                "$or": [{"user_id": u, "seq": {"$gt": a, "$lte": b}} for u, a, b in chunk],
                "exp": {"$gt": now},
            }
            docs = list(self._inbox.find(query, {"user_id": 1, "seq": 1, "message_id": 1, "w": 1}))
            out.extend(
                (d["user_id"], int(d["seq"]), d["message_id"]) for d in self._committed(docs)
            )
        out.sort(key=lambda t: (t[0], t[1]))
        return out

    def _committed(self, entries: list[Doc]) -> list[Doc]:
        """The entries whose push committed: an entry belongs to the body of its
        message id written by the same attempt (``w``), once that body is no longer
        pending; the others are what failed or abandoned pushes left (see
        ``mongo.MongoInbox``), never a message a caller was told about."""
        if not entries:
            return []
        bodies = find_settled(
            self._messages,
            (e["message_id"] for e in entries),
            {"w": 1, "pending": 1},
            (e.get("w") for e in entries),
        )
        out = []
        for e in entries:
            body = bodies.get(e["message_id"])
            if body is not None and body.get("w") == e.get("w") and not body.get("pending", True):
                out.append(e)
        return out

    @guarded
    def sweep(self, now: float) -> int:
        cutoff = int((now - self.retention) * 1_000_000)  # n is a time in microseconds
        removed = 0
        ops = []
        for d in self._sources.find({}, {"swept": 1, "at": 1}):
            source = d["_id"]
            last_old = self._events.find_one(
                {"source": source, "n": {"$lt": cutoff}}, {"n": 1}, sort=[("n", DESCENDING)]
            )
            if last_old is not None:
                boundary = int(last_old["n"])
                removed += self._events.delete_many(
                    {"source": source, "n": {"$lte": boundary}}
                ).deleted_count
                ops.append(UpdateOne({"_id": source}, {"$max": {"swept": boundary}}))
            elif (
                float(d.get("at", 0.0)) < now - 2 * self.retention
                and source != self.source
                and self._events.find_one({"source": source}, {"_id": 1}) is None
            ):
                removed += self._sources.delete_one({"_id": source}).deleted_count
        for part in self.database.update_batches(ops):
            self._sources.bulk_write(part, ordered=False)
        return removed

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.database.detach()


# -- SQLite (the embedded store's file) ---------------------------------------------------

_SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS receipt_events (
    source     TEXT NOT NULL,
    n          INTEGER NOT NULL,
    key        TEXT NOT NULL UNIQUE,
    kind       INTEGER NOT NULL,
    message_id TEXT NOT NULL,
    user_id    TEXT NOT NULL,
    seq        INTEGER NOT NULL,
    owner      TEXT NOT NULL,
    at         REAL NOT NULL,
    PRIMARY KEY (source, n)
);
CREATE TABLE IF NOT EXISTS receipt_sources (
    source    TEXT PRIMARY KEY,
    committed INTEGER NOT NULL,
    swept     INTEGER NOT NULL DEFAULT 0,
    at        REAL NOT NULL
);
"""

_EVENT_COLUMNS = "source, n, kind, message_id, user_id, seq, owner, at"


def _item(i: int, table: str = "") -> str:
    """Element ``i`` of the JSON array in ``json_each``'s value column."""
    return f"json_extract({table + '.' if table else ''}value, '$[{i}]')"


def _event_row(row: tuple[Any, ...]) -> ReceiptEvent:
    source, n, kind, message_id, user_id, seq, owner, at = row
    return ReceiptEvent(source, int(n), Kind(int(kind)), message_id, user_id, int(seq), owner, at)


class SqliteReceiptLog(ReceiptLog):
    """Tables ``receipt_events`` and ``receipt_sources``, in a database from which the
    embedded inbox's ``inbox`` table can be read (``receipts.db`` with ``pushsvc.db``
    attached, see ``sqlite_side``).

    A batch and its mark are one transaction here, so every event is visible
    with its commit; the marks work as on MongoDB all the same.
    """

    def __init__(self, database: SideDatabase, source: str, retention: float) -> None:
        super().__init__(source, retention)
        self.database = database
        database.attach()
        database.run(lambda conn: conn.executescript(_SQLITE_SCHEMA))

    def _stored_max(self) -> int:
        def top(conn: Any) -> int:
            row = conn.execute(
                "SELECT max(coalesce((SELECT max(n) FROM receipt_events WHERE source = ?1), 0),"
                " coalesce((SELECT committed FROM receipt_sources WHERE source = ?1), 0))",
                (self.source,),
            ).fetchone()
            return int(row[0])

        return self.database.run(top)

    def _write(self, events: list[ReceiptEvent], keys: list[str]) -> list[ReceiptEvent]:
        first, last = events[0].n, events[-1].n

        def write(conn: sqlite3.Connection) -> set[int] | None:
            before = conn.total_changes
            rows = [
                (self.source, e.n, key, int(e.kind), e.message_id, e.user_id, e.seq, e.owner, e.at)
                for e, key in zip(events, keys, strict=True)
            ]
            for sql, params in values_statements(
                conn,
                "INSERT OR IGNORE INTO receipt_events"
                " (source, n, key, kind, message_id, user_id, seq, owner, at) VALUES ",
                rows,
            ):
                conn.execute(sql, params)
            if conn.total_changes - before == len(rows):
                everything = None  # no repeats: every event was inserted
            else:
                everything = {
                    int(r[0])
                    for r in conn.execute(
                        "SELECT n FROM receipt_events WHERE source = ? AND n BETWEEN ? AND ?",
                        (self.source, first, last),
                    ).fetchall()
                }
            conn.execute(
                "INSERT INTO receipt_sources (source, committed, at) VALUES (?, ?, ?)"
                " ON CONFLICT (source) DO UPDATE SET committed = excluded.committed,"
                " at = excluded.at",
                (self.source, last, events[-1].at),
            )
            return everything

        inserted = self.database.run(write, write=True)
        return events if inserted is None else [e for e in events if e.n in inserted]

    def marks(self) -> dict[str, SourceMark]:
        rows = self.database.run(
            lambda conn: conn.execute(
                "SELECT source, committed, swept FROM receipt_sources"
            ).fetchall()
        )
        return {s: SourceMark(int(c), int(w)) for s, c, w in rows}

    def read(
        self, source: str, after: int, upto: int, limit: int, flt: ReceiptFilter | None
    ) -> list[ReceiptEvent]:
        if upto <= after or limit <= 0:
            return []
        where = "source = ? AND n > ? AND n <= ?"
        args: list[Any] = [source, after, upto]
        if flt is not None and flt.user_ids:
            where += " AND user_id IN (SELECT value FROM json_each(?))"
            args.append(json.dumps(sorted(flt.user_ids)))
        elif flt is not None:
            where += " AND owner = ?"
            args.append(flt.owner)
        args.append(limit)
        rows = self.database.run(
            lambda conn: conn.execute(
                f"SELECT {_EVENT_COLUMNS} FROM receipt_events WHERE {where} ORDER BY n LIMIT ?",
                args,
            ).fetchall()
        )
        return [_event_row(r) for r in rows]

    def delivered_seqs(
        self, pairs: Sequence[tuple[str, str]], now: float
    ) -> dict[tuple[str, str], int]:
        if not pairs:
            return {}

        def lookup(conn: sqlite3.Connection) -> list[Any]:
            found: list[Any] = []
            for sql, params in values_statements(
                conn, "WITH p (m, u) AS (VALUES ", [tuple(p) for p in pairs]
            ):
                found += conn.execute(
                    sql + ") SELECT i.message_id, i.user_id, i.seq FROM p JOIN inbox i"
                    " ON i.message_id = p.m AND i.user_id = p.u WHERE i.expires_at > ?",
                    [*params, now],
                ).fetchall()
            return found

        return {(m, u): int(s) for m, u, s in self.database.run(lookup)}

    def acked_messages(
        self, ranges: Mapping[str, tuple[int, int]], now: float
    ) -> list[tuple[str, int, str]]:
        items = [[u, a, b] for u, (a, b) in ranges.items() if b > a]
        if not items:
            return []
        rows = self.database.run(
            lambda conn: conn.execute(
                "SELECT i.user_id, i.seq, i.message_id FROM json_each(?) j JOIN inbox i"
                f" ON i.user_id = {_item(0, 'j')}"
                f" AND i.seq > {_item(1, 'j')} AND i.seq <= {_item(2, 'j')}"
                " WHERE i.expires_at > ? ORDER BY i.user_id, i.seq",
                (json.dumps(items), now),
            ).fetchall()
        )
        return [(u, int(s), m) for u, s, m in rows]

    def sweep(self, now: float) -> int:
        cutoff = int((now - self.retention) * 1_000_000)  # n is a time in microseconds

        def sweep(conn: Any) -> int:
            removed = 0
            for (source,) in conn.execute("SELECT source FROM receipt_sources").fetchall():
                row = conn.execute(
                    "SELECT max(n) FROM receipt_events WHERE source = ? AND n < ?",
                    (source, cutoff),
                ).fetchone()
                if row[0] is not None:
                    removed += conn.execute(
                        "DELETE FROM receipt_events WHERE source = ? AND n <= ?", (source, row[0])
                    ).rowcount
                    conn.execute(
                        "UPDATE receipt_sources SET swept = max(swept, ?) WHERE source = ?",
                        (row[0], source),
                    )
            removed += conn.execute(
                "DELETE FROM receipt_sources WHERE at < ? AND source != ? AND NOT EXISTS"
                " (SELECT 1 FROM receipt_events e WHERE e.source = receipt_sources.source)",
                (now - 2 * self.retention, self.source),
            ).rowcount
            return int(removed)

        return self.database.run(sweep, write=True)

    def close(self) -> None:
        self.database.detach()
