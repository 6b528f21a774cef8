"""The fleet's inbox: MongoDB (>= 5.0), or FerretDB 1.24 for the tests.

Only what both servers support is used: no change streams, no multi-document
transactions, no aggregation-pipeline updates, no partial indexes.

Collections (every query has an index):

- ``messages``: ``{_id: message id, payload, content_type, created_at, exp,
  expires_at, pending}`` -- the body, once per message. ``pending`` is true
  until every inbox entry of the message is written; readers ignore pending
  bodies, so a push that failed half-way (or whose node died) is invisible.
- ``inbox``: ``{user_id, seq, message_id, i, exp, expires_at, delivered}``,
  unique on ``(user_id, seq)``; ``i`` is the recipient's position in the push.
- ``counters``: ``{_id: user id, seq}``; ``acks``: ``{_id: user id, acked_seq}``.
- ``idempotency``: ``{_id: key, message_id, users, seqs, created_at, exp,
  expires_at, claimed}``; ``seqs`` is null while the first push is in flight.
- ``probe``: one document, rewritten by ``probe`` (the readiness check).

Expiry: ``exp`` is the exact unix time (a double, what every query compares);
``expires_at`` is the same instant as a BSON date rounded up to the
millisecond, for TTL indexes. FerretDB refuses TTL indexes (code 238): then
``ttl_indexes`` is False and the node's sweeper does all the removing. ``sweep``
is correct either way, and still needed with TTL indexes (dead pushes).

Atomicity: MongoDB applies ``$inc``/``$max`` atomically. FerretDB 1.24 on
SQLite does not (``findAndModify`` and ``update`` are read-modify-write, so
concurrent increments can be lost), but its unique indexes are enforced. So the
unique ``(user_id, seq)`` inbox index is the final arbiter of seq allocation: an
entry whose seq is taken is re-allocated, and on such servers ``user_starts``
double-checks what it reads.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import pymongo
from gevent import monkey
from gevent.pool import Pool
from pymongo import ReturnDocument, UpdateMany, UpdateOne
from pymongo.collection import Collection
from pymongo.errors import (
    BulkWriteError,
    ConnectionFailure,
    DuplicateKeyError,
    PyMongoError,
)

from pushsvc.errors import InvalidArgument, NotFound, PushError, StoreUnavailable
from pushsvc.messages import Message
from pushsvc.store.inbox import (
    IDEMPOTENCY_WINDOW,
    InboxEntry,
    InboxPage,
    InboxStore,
    RecipientStatus,
    StoreRequest,
    StoreResult,
    UserStart,
    check_request,
)
from pushsvc.store.mongo_database import (
    DUPLICATE_KEY as _DUPLICATE_KEY,
)
from pushsvc.store.mongo_database import (
    Doc,
    MongoDatabase,
    guarded,
    retry_duplicate,
)
from pushsvc.store.mongo_database import (
    bson_date as _date,
)
from pushsvc.store.mongo_database import (
    expired as _expired,
)
from pushsvc.store.mongo_database import (
    short as _short,
)

log = logging.getLogger(__name__)

COLLECTIONS = ("messages", "inbox", "counters", "acks", "idempotency", "probe")
# A push with the same idempotency key still in flight: wait this long for it.
_CLAIM_WAIT = 5.0
# A claim whose push has not finished after this long was abandoned (node died).
_CLAIM_STALE = 60.0
# A body still pending this long after its creation belongs to a push that died.
_PENDING_GRACE = 300.0
_ALLOC_ATTEMPTS = 50
_ALLOC_CONCURRENCY = 16


def _gevent_patched() -> bool:
    return bool(monkey.is_module_patched("socket"))


class MongoInbox(InboxStore):
    """Messages, inboxes, acks and receipts in MongoDB: ``MongoInbox(database)``."""

    def __init__(self, database: MongoDatabase) -> None:
        self.database = database
        self._db = database.db
        self._messages: Collection[Doc] = self._db["messages"]
        self._inbox: Collection[Doc] = self._db["inbox"]
        self._counters: Collection[Doc] = self._db["counters"]
        self._acks: Collection[Doc] = self._db["acks"]
        self._idempotency: Collection[Doc] = self._db["idempotency"]
        self._probe: Collection[Doc] = self._db["probe"]
        #: True once expired documents are removed by TTL indexes (MongoDB);
        #: False on FerretDB, where only ``sweep`` removes them.
        self.ttl_indexes = False
        self._ready = False
        self._closed = False
        # (key, message id) of claims this process could not release after a failure.
        self._abandoned: set[tuple[str, str]] = set()
        # Per-user locks, used only where single-document updates are not atomic.
        self._locks: dict[str, tuple[Any, list[int]]] = {}
        self._locks_guard = threading.Lock()
        database.attach()
        try:
            self._setup()
        except ConnectionFailure as exc:
            # Not fatal: the first call that reaches the server finishes setup.
            log.warning("message store unreachable at start-up: %s", _short(exc))

    @property
    def atomic_updates(self) -> bool:
        """False on servers whose single-document updates are not atomic (FerretDB)."""
        return not self.database.ferretdb

    @property
    def round_trips(self) -> int:
        """Commands this inbox has sent to the database."""
        return self.database.commands_sent(COLLECTIONS)

    # -- setup -----------------------------------------------------------------

    def _ensure_ready(self) -> None:
        if not self._ready:
            self._setup()

    def _setup(self) -> None:
        self.database.detect()
        self._inbox.create_index([("user_id", 1), ("seq", 1)], unique=True)
        self._inbox.create_index([("message_id", 1)])
        self._messages.create_index([("pending", 1)])
        ttl = True
        for coll in (self._messages, self._inbox, self._idempotency):
            ttl = self.database.expiry_index(coll) and ttl
        self.ttl_indexes = ttl
        self._ready = True

    @contextlib.contextmanager
    def _serial(self, user_id: str) -> Iterator[None]:
        """Serialise this process's read-modify-writes of one user's documents.

        Only where the server does not apply ``$inc``/``$max`` atomically
        (FerretDB): there concurrent updates of one document can be lost.
        Other processes can still race; the unique inbox index catches that
        for seqs. ``threading.Lock`` is looked up at call time, so it is
        gevent's lock once gevent has monkey-patched.
        """
        if self.atomic_updates:
            yield
            return
        with self._locks_guard:
            entry = self._locks.get(user_id)
            if entry is None:
                entry = self._locks[user_id] = (threading.Lock(), [0])
            entry[1][0] += 1
        try:
            with entry[0]:
                yield
        finally:
            with self._locks_guard:
                entry[1][0] -= 1
                if not entry[1][0]:
                    del self._locks[user_id]

    # -- messages and inboxes -------------------------------------------------

    def store_messages(
        self, requests: Sequence[StoreRequest], now: float
    ) -> list[StoreResult | PushError]:
        outcomes: list[StoreResult | PushError] = []
        for request in requests:
            try:
                outcomes.append(self._store_one(request, now))
            except PushError as exc:
                outcomes.append(exc)
        return outcomes

    @guarded
    def _store_one(self, request: StoreRequest, now: float) -> StoreResult:
        exp = check_request(request)
        message, idempotency_key = request.message, request.idempotency_key
        users = list(request.user_ids)
        distinct = list(dict.fromkeys(users))

        if idempotency_key:
            first = self._claim(idempotency_key, message.id, distinct, users, now)
            if first is not None:
                return first
        seqs: dict[str, int] = {}
        try:
            self._insert_body(message, exp)
            self._append(message.id, distinct, exp, seqs)
            # The switch that makes the message visible: one document, atomic.
            self._messages.update_one({"_id": message.id}, {"$set": {"pending": False}})
        except InvalidArgument:
            self._release(idempotency_key, message.id)
            raise
        except BaseException:
            self._discard(message.id, idempotency_key, seqs)
            raise
        if idempotency_key:
            try:
                self._idempotency.update_one(
                    {"_id": idempotency_key, "message_id": message.id},
                    {"$set": {"seqs": [seqs[u] for u in distinct]}},
                )
            except PyMongoError as exc:
                # Stored and visible: a repeat finds the seqs in the inbox instead.
                log.warning("could not record the seqs of idempotency key: %s", _short(exc))
        return StoreResult(message.id, tuple(seqs[u] for u in users))

    def _insert_body(self, message: Message, exp: float) -> None:
        doc = {
            "_id": message.id,
            "payload": message.payload,
            "content_type": message.content_type,
            "created_at": message.created_at,
            "exp": exp,
            "expires_at": _date(exp),
            "pending": True,
        }
        for attempt in range(2):
            try:
                self._messages.insert_one(doc)
                return
            except DuplicateKeyError:
                old = self._messages.find_one({"_id": message.id}, {"pending": 1})
                if old is not None and (not old.get("pending") or attempt):
                    raise InvalidArgument(f"message id {message.id} is already stored") from None
                if old is not None:  # left over by an earlier, failed try of this message
                    self._discard(message.id, "", {})
        raise InvalidArgument(f"message id {message.id} is already stored")

    def _claim(
        self, key: str, message_id: str, distinct: list[str], users: list[str], now: float
    ) -> StoreResult | None:
        """Take the idempotency key for this push, or return the first push's result."""
        deadline = time.monotonic() + _CLAIM_WAIT
        while True:
            if time.monotonic() > deadline:
                raise StoreUnavailable(
                    f"a push with idempotency key {key!r} is still being stored; retry later"
                )
            try:
                self._idempotency.insert_one(
                    {
                        "_id": key,
                        "message_id": message_id,
                        "users": distinct,
                        "seqs": None,
                        "created_at": now,
                        "exp": now + IDEMPOTENCY_WINDOW,
                        "expires_at": _date(now + IDEMPOTENCY_WINDOW),
                        "claimed": time.time(),
                    }
                )
                return None
            except DuplicateKeyError:
                pass
            doc = self._idempotency.find_one({"_id": key})
            if doc is None:
                continue  # removed meanwhile: try again
            if doc["exp"] <= now:  # outside the window: forget it
                self._idempotency.delete_one({"_id": key, "message_id": doc["message_id"]})
                continue
            first_id: str = doc["message_id"]
            if doc.get("seqs") is not None:
                seen = dict(zip(doc["users"], doc["seqs"], strict=True))
                return StoreResult(first_id, tuple(seen.get(u, 0) for u in users), True)
            body = self._messages.find_one({"_id": first_id}, {"pending": 1})
            if body is not None and not body.get("pending"):
                # Committed, but the key was not updated yet (or that write failed).
                seen = {
                    e["user_id"]: e["seq"]
                    for e in self._inbox.find({"message_id": first_id}, {"user_id": 1, "seq": 1})
                }
                return StoreResult(first_id, tuple(seen.get(u, 0) for u in users), True)
            abandoned = (key, first_id) in self._abandoned or (
                time.time() - float(doc.get("claimed", 0.0)) > _CLAIM_STALE
            )
            # The first push never finished (its node died): take the key over.
            if abandoned and self._discard(first_id, "", {}):
                self._idempotency.delete_one({"_id": key, "message_id": first_id})
                self._abandoned.discard((key, first_id))
                continue
            time.sleep(0.05)

    def _append(self, message_id: str, users: list[str], exp: float, seqs: dict[str, int]) -> None:
        """Allocate each user's next seq and insert the inbox entries.

        ``seqs`` is filled in as seqs are allocated, so a failure can undo them.
        """
        position = {u: i for i, u in enumerate(users)}
        todo = users
        for _ in range(_ALLOC_ATTEMPTS):
            self._allocate(todo, seqs)
            docs = [
                {
                    "user_id": u,
                    "seq": seqs[u],
                    "message_id": message_id,
                    "i": position[u],
                    "exp": exp,
                    "expires_at": _date(exp),
                    "delivered": False,
                }
                for u in todo
            ]
            try:
                self._inbox.insert_many(docs, ordered=False)
                return
            except BulkWriteError as exc:
                errors = exc.details.get("writeErrors", [])
                if not errors or any(e.get("code") != _DUPLICATE_KEY for e in errors):
                    raise
                # Seqs already taken: only on servers without atomic $inc.
                todo = [todo[e["index"]] for e in errors]
                for u in todo:
                    self._raise_counter(u)
        raise StoreUnavailable("could not allocate a free seq; the counters are contended")

    def _allocate(self, users: list[str], seqs: dict[str, int]) -> None:
        if len(users) > 1 and _gevent_patched():
            # Round trips overlap; pymongo is cooperative once gevent has patched.
            # Every allocation finishes (or fails) before this returns, so none
            # is left running after the caller rolls a failed push back.
            errors: list[Exception] = []

            def one(user_id: str) -> None:
                try:
                    seqs[user_id] = self._next_seq(user_id)
                except Exception as exc:
                    errors.append(exc)

            Pool(min(_ALLOC_CONCURRENCY, len(users))).map(one, users)
            if errors:
                raise errors[0]
        else:
            for u in users:
                seqs[u] = self._next_seq(u)

    def _next_seq(self, user_id: str) -> int:
        for attempt in range(3):
            try:
                with self._serial(user_id):
                    doc = self._counters.find_one_and_update(
                        {"_id": user_id},
                        {"$inc": {"seq": 1}},
                        upsert=True,
                        return_document=ReturnDocument.AFTER,
                    )
                assert doc is not None  # upserted
                return int(doc["seq"])
            except DuplicateKeyError:  # two first-ever upserts raced
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _raise_counter(self, user_id: str) -> None:
        """Lift the counter above every seq in the user's inbox."""
        with self._serial(user_id):
            top = self._top_seq(user_id)
            self._counters.update_one({"_id": user_id}, {"$max": {"seq": top}}, upsert=True)

    def _top_seq(self, user_id: str) -> int:
        doc = self._inbox.find_one(
            {"user_id": user_id}, {"seq": 1}, sort=[("user_id", 1), ("seq", -1)]
        )
        return int(doc["seq"]) if doc else 0

    def _release(self, key: str, message_id: str) -> None:
        """Give back an idempotency key this push claimed. Never raises."""
        if not key:
            return
        try:
            self._idempotency.delete_one({"_id": key, "message_id": message_id})
        except PyMongoError as exc:
            self._abandoned.add((key, message_id))
            log.warning("could not release an idempotency key: %s", _short(exc))

    def _discard(self, message_id: str, key: str, seqs: dict[str, int]) -> bool:
        """Best effort: remove what a push that failed before its commit wrote.

        Returns whether the message is gone. Never raises. Whatever cannot be
        removed now stays invisible (its body is pending) until a later push of
        the same key, or ``sweep``, removes it.
        """
        try:
            # Bounded, so a push failing in an outage still fails fast.
            with pymongo.timeout(self.database.cleanup_timeout):
                self._messages.delete_one({"_id": message_id, "pending": True})
                if self._messages.find_one({"_id": message_id}, {"_id": 1}) is not None:
                    return False  # the commit went through after all: the message is stored
                self._inbox.delete_many({"message_id": message_id})
                if seqs:
                    # Give a seq back only if nobody allocated after it; else leave a gap.
                    self._counters.bulk_write(
                        [
                            UpdateOne({"_id": u, "seq": s}, {"$inc": {"seq": -1}})
                            for u, s in seqs.items()
                        ],
                        ordered=False,
                    )
        except PyMongoError as exc:
            log.warning("could not remove failed message %s: %s", message_id, _short(exc))
            if key:
                self._abandoned.add((key, message_id))
            return False
        self._release(key, message_id)
        return True

    def _bodies(self, message_ids: Iterable[str], now: float) -> dict[str, Message]:
        ids = list(dict.fromkeys(message_ids))
        if not ids:
            return {}
        out: dict[str, Message] = {}
        for d in self._messages.find({"_id": {"$in": ids}, "pending": False, "exp": {"$gt": now}}):
            out[d["_id"]] = Message(
                d["_id"], bytes(d["payload"]), d["content_type"], d["created_at"], d["exp"]
            )
        return out

    def _entries(self, docs: list[Doc], now: float) -> list[InboxEntry]:
        bodies = self._bodies((d["message_id"] for d in docs), now)
        return [
            InboxEntry(d["user_id"], int(d["seq"]), bodies[d["message_id"]])
            for d in docs
            if d["message_id"] in bodies
        ]

    @guarded
    def read_inbox(self, user_id: str, after_seq: int, limit: int, now: float) -> InboxPage:
        if limit <= 0:
            return InboxPage(())
        docs = list(
            self._inbox.find(
                {"user_id": user_id, "seq": {"$gt": after_seq}, "exp": {"$gt": now}},
                {"user_id": 1, "seq": 1, "message_id": 1},
                sort=[("user_id", 1), ("seq", 1)],
                limit=limit + 1,
            )
        )
        more = len(docs) > limit
        return InboxPage(tuple(self._entries(docs[:limit], now)), None, more)

    @guarded
    def user_starts(self, user_ids: Sequence[str]) -> dict[str, UserStart]:
        users = list(dict.fromkeys(user_ids))
        if not users:
            return {}
        latest = {
            d["_id"]: int(d["seq"])
            for d in self._counters.find({"_id": {"$in": users}}, {"seq": 1})
        }
        acked = {
            d["_id"]: int(d["acked_seq"])
            for d in self._acks.find({"_id": {"$in": users}}, {"acked_seq": 1})
        }
        if not self.atomic_updates:  # a lost update may have lowered a counter
            for u in users:
                latest[u] = max(latest.get(u, 0), self._top_seq(u))
        return {u: UserStart(latest.get(u, 0), acked.get(u, 0)) for u in users}

    @guarded
    def ack_many(self, acks: Mapping[str, int]) -> None:
        ops = [
            UpdateOne({"_id": u}, {"$max": {"acked_seq": max(int(s), 0)}}, upsert=True)
            for u, s in acks.items()
        ]
        if ops:
            retry_duplicate(lambda: self._acks.bulk_write(ops, ordered=False))

    @guarded
    def mark_delivered(self, receipts: Sequence[tuple[str, str]]) -> None:
        by_message: dict[str, list[str]] = {}
        for message_id, user_id in receipts:
            by_message.setdefault(message_id, []).append(user_id)
        if not by_message:
            return
        self._inbox.bulk_write(
            [
                UpdateMany({"message_id": m, "user_id": {"$in": us}}, {"$set": {"delivered": True}})
                for m, us in by_message.items()
            ],
            ordered=False,
        )

    @guarded
    def message_status(self, message_id: str, now: float) -> list[RecipientStatus]:
        body = self._messages.find_one({"_id": message_id}, {"pending": 1, "exp": 1})
        if body is None or body.get("pending") or body["exp"] <= now:
            raise NotFound(f"message {message_id} is unknown or has expired")
        entries = sorted(
            self._inbox.find(
                {"message_id": message_id}, {"user_id": 1, "seq": 1, "delivered": 1, "i": 1}
            ),
            key=lambda e: (e.get("i", 0), e["user_id"]),
        )
        users = [e["user_id"] for e in entries]
        acked = (
            {d["_id"]: int(d["acked_seq"]) for d in self._acks.find({"_id": {"$in": users}})}
            if users
            else {}
        )
        return [
            RecipientStatus(
                e["user_id"],
                int(e["seq"]),
                bool(e.get("delivered")),
                int(e["seq"]) <= acked.get(e["user_id"], 0),
            )
            for e in entries
        ]

    # -- housekeeping ------------------------------------------------------------

    @guarded
    def sweep(self, now: float) -> int:
        removed = 0
        # Bodies of pushes that died half-way, with whatever entries they wrote.
        dead = [
            d["_id"]
            for d in self._messages.find(
                {"pending": True, "created_at": {"$lte": now - _PENDING_GRACE}}, {"_id": 1}
            )
        ]
        if dead:
            removed += self._inbox.delete_many({"message_id": {"$in": dead}}).deleted_count
            removed += self._messages.delete_many(
                {"_id": {"$in": dead}, "pending": True}
            ).deleted_count
        removed += self._inbox.delete_many(_expired(now)).deleted_count
        removed += self._messages.delete_many(_expired(now)).deleted_count
        removed += self._idempotency.delete_many(_expired(now)).deleted_count
        return removed

    @guarded
    def probe(self) -> None:
        retry_duplicate(
            lambda: self._probe.update_one(
                {"_id": "probe"}, {"$set": {"at": time.time()}}, upsert=True
            )
        )

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.database.detach()
