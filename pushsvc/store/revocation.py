"""The token revocation list: token ids (``jti``) refused until they expire.

Stored so that it is the fleet's (MongoDB: every node reads it) and survives
restarts (SQLite beside the embedded inbox, written durably). Each entry keeps
when it was recorded, so nodes can read what changed since they last looked.
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

from pymongo import ASCENDING
from pymongo.collection import Collection

from pushsvc.store.mongo_database import (
    Doc,
    MongoDatabase,
    bson_date,
    expired,
    guarded,
    retry_duplicate,
)
from pushsvc.store.sqlite_side import SideDatabase

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Revocation:
    jti: str
    expires_at: float  # forgotten after this (the token is expired by then anyway)
    reason: str = ""
    at: float = 0.0  # when it was recorded


class RevocationStore(ABC):
    @abstractmethod
    def add(self, revocation: Revocation) -> None:
        """Record (or extend) a revocation, durably. Raises ``StoreUnavailable``."""

    @abstractmethod
    def since(self, at: float, now: float) -> list[Revocation]:
        """Unexpired revocations recorded at or after ``at``."""

    @abstractmethod
    def sweep(self, now: float) -> int:
        """Remove expired revocations."""

    @abstractmethod
    def close(self) -> None:
        """Release the connection."""


class MongoRevocationStore(RevocationStore):
    """Collection ``revocations``: ``{_id: jti, exp, expires_at, reason, at}``."""

    def __init__(self, database: MongoDatabase) -> None:
        self.database = database
        self._coll: Collection[Doc] = database.collection("revocations")
        self._ready = False  # indexes are made by the first call (a store down at start
        self._closed = False  # must not hold the node's start-up up)
        database.attach()

    def _ensure_ready(self) -> None:
        if not self._ready:
            self.database.detect()
            self.database.index(self._coll, [("at", ASCENDING)])
            self.database.expiry_index(self._coll)
            self._ready = True

    @guarded
    def add(self, revocation: Revocation) -> None:
        retry_duplicate(
            lambda: self._coll.update_one(
                {"_id": revocation.jti},
                {
                    "$max": {
                        "exp": revocation.expires_at,
                        "expires_at": bson_date(revocation.expires_at),
                    },
                    "$set": {"reason": revocation.reason, "at": revocation.at or time.time()},
                },
                upsert=True,
            )
        )

    @guarded
    def since(self, at: float, now: float) -> list[Revocation]:
        return [
            Revocation(d["_id"], float(d["exp"]), d.get("reason", ""), float(d["at"]))
            for d in self._coll.find({"at": {"$gte": at}, "exp": {"$gt": now}})
        ]

    @guarded
    def sweep(self, now: float) -> int:
        return int(self._coll.delete_many(expired(now)).deleted_count)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.database.detach()


_SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS revocations (
    jti        TEXT PRIMARY KEY,
    expires_at REAL NOT NULL,
    reason     TEXT NOT NULL,
    at         REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS revocations_at ON revocations (at);
"""


class SqliteRevocationStore(RevocationStore):
    """Table ``revocations`` beside the embedded inbox."""

    def __init__(self, database: SideDatabase) -> None:
        self.database = database
        database.attach()
        database.run(lambda conn: conn.executescript(_SQLITE_SCHEMA))

    def add(self, revocation: Revocation) -> None:
        self.database.run(
            lambda conn: conn.execute(
                "INSERT INTO revocations (jti, expires_at, reason, at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (jti) DO UPDATE SET"
                " expires_at = max(expires_at, excluded.expires_at),"
                " reason = excluded.reason, at = excluded.at",
                (
                    revocation.jti,
                    revocation.expires_at,
                    revocation.reason,
                    revocation.at or time.time(),
                ),
            ),
            write=True,
            durable=True,
        )

    def since(self, at: float, now: float) -> list[Revocation]:
        rows: list[Any] = self.database.run(
            lambda conn: conn.execute(
                "SELECT jti, expires_at, reason, at FROM revocations"
                " WHERE at >= ? AND expires_at > ?",
                (at, now),
            ).fetchall()
        )
        return [Revocation(j, float(e), r, float(a)) for j, e, r, a in rows]

    def sweep(self, now: float) -> int:
        return int(
            self.database.run(
                lambda conn: (
                    conn.execute("DELETE FROM revocations WHERE expires_at <= ?", (now,)).rowcount
                ),
                write=True,
            )
        )

    def close(self) -> None:
        self.database.detach()
