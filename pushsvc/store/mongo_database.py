"""One MongoDB (or FerretDB) database shared by the fleet's stores.

``MongoInbox`` and ``MongoRegistry`` take the same ``MongoDatabase``: one
``MongoClient`` (one connection pool), the durability write concern, the
detection of what the server lacks, the mapping of driver errors to
``StoreUnavailable`` and a count of the commands sent.

What FerretDB 1.24 (SQLite backend) lacks, detected once by ``buildInfo``:

- TTL indexes: ``createIndexes`` with ``expireAfterSeconds`` answers code 238;
  the index is created plain and the node's sweeper removes expired documents.
- Atomic single-document updates: ``$inc``, ``$max`` and ``findAndModify`` are
  read-modify-write, so concurrent updates of one document can be lost. Unique
  indexes are enforced, so the stores arbitrate races by inserting under a
  unique key, never by an update's result (``ferretdb`` says which server it is).
- Update commands of many statements: each statement of an ``update`` command
  that finds a document keeps its query, and one connection of FerretDB's
  backend pool, until the whole command ends, and takes one more connection to
  write. When the statements of the commands in progress hold every connection
  of that pool (100 on SQLite, 50 on PostgreSQL by default), each waits for
  another and FerretDB answers nobody again, with no error (measured with
  1.24.2: one command of 64 statements on PostgreSQL, 200 on SQLite; or a
  fleet's reconnect storm of 50-statement presence updates). So on FerretDB
  ``update_batches`` cuts update commands into ``FERRETDB_UPDATE_STATEMENTS``
  statements, and a fleet's connections to it times that stays under its pool
  (docs/operations.md). One statement that matches many documents
  (``UpdateMany`` with ``$in``) holds one connection and is fine.
- Large write commands: documents are updated one at a time (5-10 ms each on
  a busy machine), so one command that updates a thousand documents outlasts
  the socket timeout. ``batches`` cuts writes into pieces of at most
  ``FERRETDB_BATCH`` documents there; on MongoDB it leaves them whole, one
  command each. These two are the one place that knows this.

Expiry: ``exp`` is the exact unix time (a double, what every query compares);
``expires_at`` is the same instant as a BSON date rounded up to the
millisecond, for TTL indexes.
"""

from __future__ import annotations

import functools
import logging
import math
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Concatenate, ParamSpec, Protocol, TypeVar

import gevent.lock
import pymongo
from pymongo import monitoring
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import (
    BulkWriteError,
    ConnectionFailure,
    DuplicateKeyError,
    OperationFailure,
    PyMongoError,
)
from pymongo.write_concern import WriteConcern

from pushsvc.errors import StoreUnavailable

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")
Doc = dict[str, Any]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MAX_TS = 253_402_300_799.0  # 9999-12-31T23:59:59Z, the last instant a datetime holds
NOT_IMPLEMENTED = 238
DUPLICATE_KEY = 11000
_INDEX_CONFLICT_CODES = (85, 86)  # IndexOptionsConflict, IndexKeySpecsConflict
#: Documents one write command may update on FerretDB (see the module notes).
FERRETDB_BATCH = 50
#: Statements one update command may carry on FerretDB (see the module notes).
FERRETDB_UPDATE_STATEMENTS = 8


def bson_date(ts: float) -> datetime:
    """``ts`` as a BSON-storable date, rounded up to the millisecond.

    Monotonic, so ``exp <= now`` implies ``bson_date(exp) <= bson_date(now)``: a
    query on the indexed date finds every document the exact ``exp`` test selects.
    """
    ms = math.ceil(min(max(ts, 0.0), _MAX_TS) * 1000)
    return _EPOCH + timedelta(milliseconds=ms)


def expired(now: float) -> Doc:
    """Filter for documents whose expiry is at or before ``now``."""
    return {"expires_at": {"$lte": bson_date(now)}, "exp": {"$lte": now}}


def short(exc: BaseException) -> str:
    """The first line of an error, bounded: what a log line or an error message shows."""
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def only_duplicate_keys(exc: BulkWriteError) -> bool:
    """Whether every error of a bulk write is a duplicate key (and there is one)."""
    errors = exc.details.get("writeErrors", [])
    return bool(errors) and all(e.get("code") == DUPLICATE_KEY for e in errors)


def retry_duplicate(write: Callable[[], T], attempts: int = 3) -> T:
    """Run an upserting write again when a concurrent upsert won the insert.

    Two first-ever upserts of one ``_id`` can race: the loser gets a duplicate
    key error, and its retry finds the document and updates it.
    """
    for attempt in range(attempts):
        try:
            return write()
        except DuplicateKeyError:
            if attempt == attempts - 1:
                raise
        except BulkWriteError as exc:
            if attempt == attempts - 1 or not only_duplicate_keys(exc):
                raise
    raise AssertionError("unreachable")


class _CommandCounter(monitoring.CommandListener):
    """Counts the commands the client sends, by the collection they name."""

    def __init__(self) -> None:
        self.by_collection: Counter[str] = Counter()
        self._lock = threading.Lock()

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        target = event.command.get(event.command_name)
        if event.command_name == "getMore":
            target = event.command.get("collection")
        name = target if isinstance(target, str) else ""
        with self._lock:
            self.by_collection[name] += 1

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass

    def count(self, collections: Iterable[str] | None = None) -> int:
        with self._lock:
            if collections is None:
                return sum(self.by_collection.values())
            return sum(self.by_collection[c] for c in collections)


class MongoDatabase:
    """A connection to one database, shared by the stores that use it.

    Cheap to create: nothing is sent until a store uses it. Each store calls
    ``attach`` when it is created and ``detach`` when it is closed; the client
    is closed when the last one detaches (or by ``close``).
    """

    def __init__(
        self,
        uri: str,
        name: str = "pushsvc",
        *,
        server_selection_timeout: float = 3.0,
        socket_timeout: float = 10.0,
    ) -> None:
        timeout_ms = max(1, int(server_selection_timeout * 1000))
        #: How long a failed push may spend removing what it wrote.
        self.cleanup_timeout = max(0.2, server_selection_timeout / 2)
        self._counter = _CommandCounter()
        self.client: pymongo.MongoClient[Doc] = pymongo.MongoClient(
            uri,
            serverSelectionTimeoutMS=timeout_ms,
            connectTimeoutMS=timeout_ms,
            socketTimeoutMS=max(1, int(socket_timeout * 1000)),
            appname="pushsvc",
            event_listeners=[self._counter],
        )
        self.name = name
        # OK means durable: acknowledged by a majority, in the journal.
        self.db: Database[Doc] = self.client.get_database(
            name, write_concern=WriteConcern(w="majority", j=True)
        )
        #: True on FerretDB: no TTL indexes, no atomic single-document updates.
        self.ferretdb = False
        self._detected = False
        self._holders = 0
        self._closed = False
        #: Held while one store sets itself up (indexes): callers that arrive
        #: meanwhile wait and find it done, instead of each sending the same
        #: createIndexes (dozens at once after an outage, which FerretDB 1.24 was
        #: seen to deadlock on: its metadata lock against its connection pool).
        self.setup_lock = gevent.lock.RLock()

    def collection(self, name: str) -> Collection[Doc]:
        return self.db[name]

    def commands_sent(self, collections: Iterable[str] | None = None) -> int:
        """Commands sent so far (to the named collections, or in all)."""
        return self._counter.count(collections)

    @property
    def round_trips(self) -> int:
        """Every command sent on this connection, whichever store sent it."""
        return self._counter.count()

    def detect(self) -> None:
        """Ask the server what it is (once it answers)."""
        if self._detected:
            return
        info = self.client.admin.command("buildInfo")
        self.ferretdb = "ferretdbVersion" in info
        self._detected = True

    def batches(self, items: Sequence[T], most: int | None = None) -> list[Sequence[T]]:
        """``items`` in pieces, each for one write command (or statement): whole
        on MongoDB, or ``most`` at a time; on FerretDB, ``FERRETDB_BATCH`` at a
        time, or fewer (see the module notes)."""
        if not items:
            return []
        size = len(items) if most is None else max(1, most)
        if self.ferretdb:
            size = min(size, FERRETDB_BATCH)
        return [items[i : i + size] for i in range(0, len(items), size)]

    def update_batches(self, statements: Sequence[T]) -> list[Sequence[T]]:
        """Update statements in pieces, each for one command: whole on MongoDB; on
        FerretDB, ``FERRETDB_UPDATE_STATEMENTS`` at a time (see the module notes)."""
        if not statements:
            return []
        size = FERRETDB_UPDATE_STATEMENTS if self.ferretdb else len(statements)
        return [statements[i : i + size] for i in range(0, len(statements), size)]

    def index(self, coll: Collection[Doc], keys: list[tuple[str, int]], **options: Any) -> None:
        """Create the index unless one on the same keys is there. Reading the list
        first matters on FerretDB 1.24: a createIndexes that arrives while its
        connection pool is busy with reads deadlocks it (its metadata lock against
        its pool, seen when a node restarted under a fleet's load), and a restarted
        node finds its indexes there."""
        if self._existing(coll, keys) is None:
            coll.create_index(keys, **options)

    def _existing(self, coll: Collection[Doc], keys: list[tuple[str, int]]) -> Doc | None:
        for info in coll.index_information().values():
            have = [(k, int(v) if isinstance(v, int | float) else v) for k, v in info["key"]]
            if have == keys:
                return dict(info)
        return None

    def expiry_index(self, coll: Collection[Doc]) -> bool:
        """Index ``expires_at``, as a TTL index if the server has them."""
        found = self._existing(coll, [("expires_at", 1)])
        if found is not None:
            if "expireAfterSeconds" not in found and not self.ferretdb:
                log.warning("%s.expires_at is not a TTL index", coll.name)
            return "expireAfterSeconds" in found
        try:
            coll.create_index([("expires_at", 1)], expireAfterSeconds=0)
            return True
        except OperationFailure as exc:
            if exc.code == NOT_IMPLEMENTED:  # FerretDB: no TTL indexes
                coll.create_index([("expires_at", 1)])
                return False
            if exc.code in _INDEX_CONFLICT_CODES:  # a plain index is already there
                log.warning("%s.expires_at is not a TTL index: %s", coll.name, short(exc))
                return False
            raise

    def attach(self) -> None:
        self._holders += 1

    def detach(self) -> None:
        self._holders -= 1
        if self._holders <= 0:
            self.close()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.client.close()


class _UsesDatabase(Protocol):
    database: MongoDatabase
    _ready: bool

    def _ensure_ready(self) -> None: ...


def ensure_ready(store: _UsesDatabase) -> None:
    """Set ``store`` up unless it is: one caller at a time per database."""
    if not store._ready:
        with store.database.setup_lock:
            store._ensure_ready()


S = TypeVar("S", bound=_UsesDatabase)


def store_error(exc: PyMongoError) -> StoreUnavailable:
    """What a driver error means to a caller."""
    if isinstance(exc, ConnectionFailure):  # incl. AutoReconnect, timeouts
        return StoreUnavailable(f"the message store is unreachable: {short(exc)}")
    return StoreUnavailable(f"the message store failed: {short(exc)}")


def guarded(fn: Callable[Concatenate[S, P], T]) -> Callable[Concatenate[S, P], T]:
    """Run a store method once the store is set up, mapping driver errors to
    ``StoreUnavailable`` (what every store method raises when the server cannot
    be reached or fails)."""

    @functools.wraps(fn)
    def wrapper(self: S, /, *args: P.args, **kwargs: P.kwargs) -> T:
        try:
            ensure_ready(self)
            return fn(self, *args, **kwargs)
        except PyMongoError as exc:
            raise store_error(exc) from exc

    return wrapper
