"""The fleet's inbox: MongoDB (>= 5.0), or FerretDB 1.24 for the tests.

Only what both servers support is used: no change streams, no multi-document
transactions, no aggregation-pipeline updates, no partial indexes, and no
single-document update whose atomicity matters on FerretDB (its ``$inc``,
``$max`` and ``findAndModify`` read, modify and write back, so concurrent
updates of one document can be lost; its unique indexes are enforced).

Collections
-----------
- ``messages``: ``{_id: message id, w, payload, content_type, created_at, exp,
  expires_at, t, pending}`` -- the body, once per message. ``w`` names the
  write attempt (one name for all the bodies of a batch, so the commit is one
  statement); ``t`` is when it was written (the writer's ``now``);
  ``pending`` is true until the push commits.
- ``inbox``: ``{user_id, seq, message_id, w, i, exp, expires_at, delivered}``,
  unique on ``(user_id, seq)``; an entry belongs to the body with the same
  ``message_id`` *and* ``w``; ``i`` is the recipient's position in the push.
  ``delivered`` is set only for receipts whose message's expiry the node did
  not know (forwarded by a node of an earlier version); the others are:
- ``delivered``: ``{_id: "<message id>/<user id>", exp, expires_at}``, a
  delivery receipt, inserted (a repeat is a duplicate key, ignored) and kept
  until ``MARK_MARGIN`` after its message expires. Inserted rather than set on
  the entry because FerretDB writes every updated document back with a
  statement that scans its whole collection (it pushes ``_id`` down, but not
  to its index): a mark per entry cost a scan of the inbox per delivery, and
  the stored rate on FerretDB went from ~70 to ~110 messages/s without it.
- ``counters``: ``{_id: user id, seq}``, a lower bound of the user's seqs (below).
- ``acks``: ``{_id: user id, acked_seq}``.
- ``idempotency``: ``{_id: key, message_id, w, users, created_at, exp, expires_at}``.
- ``probe``: ``{_id: node id, at}``, rewritten by that node's ``probe`` (the
  readiness check); ``sweep`` removes those not rewritten for a day.

``exp`` is the exact expiry (what every read compares); ``expires_at`` is the
date a TTL index (or, on FerretDB, ``sweep``) removes the document at: the
expiry for idempotency keys; for bodies and entries later (below).

The seq-visibility invariant, and why it holds
----------------------------------------------
A push is written in four steps, each one round trip for the whole batch:

1. Bodies are inserted with ``pending: true``.
2. Each recipient's seq is allocated *by inserting the inbox entry itself*
   under the unique ``(user_id, seq)`` index, with a guessed seq: one above the
   highest of the ``counters`` hint (read for the batch's users first) and what
   this process inserted itself. A duplicate key means the seq is taken: the
   user's top entry is read and the rest of that user's entries go above it.
   Entries are inserted ``ordered=True``, each user's in list order, so a
   user's later push never takes a lower seq than an earlier one. (FerretDB
   keeps ``ordered`` only within its insert batch, 100 documents unless its
   ``--batch-size`` is set below 50, which it must not be: entries go 50 per
   command there, and a reply counting entries inserted past a duplicate key
   fails the batch; ``_insert_in_order``.)
3. ``counters`` is raised with ``$max`` to the seqs just inserted.
4. Bodies are committed: ``pending`` set to false, conditionally on still
   being pending with this attempt's ``w``. (With ``commit_records``, step 1
   also inserts the attempt's document ahead of its bodies, which name it, and
   step 4 inserts the attempt's ``committed`` outcome instead: one insert a
   batch; see ``commit_records``. Everything below holds with the outcome in
   the bodies' place.)

Readers (``read_inbox``) read entries by ``(user_id, seq)`` ascending, then
their bodies: a missing, expired or other-attempt body is a deletion (skipped);
a pending one stops the page (``blocked_at``); a committed one is returned.
A body whose ``pending`` names its attempt is pending until that attempt has
an outcome, committed or a deletion as the outcome says (``commit_records``:
step 4 as one document per batch; read with the bodies, in the same query).

*Chain.* Every guess is at most one above a seq that was already inserted (the
hint only ever names inserted seqs, and so does a top entry), so seq ``s`` is
inserted only after ``s - 1`` was. A reader that finds ``s`` missing below a
present entry therefore sees a seq that was inserted and then removed -- unless
its cursor, which may yield between documents on MongoDB, passed ``s``'s slot
just before ``s`` was inserted. So a page with a hole is read again, bounded by
its last entry: that second query starts after the first one saw the higher
entry, hence after ``s`` was inserted, and sees ``s`` unless it is really gone.
(FerretDB answers a query from one SQLite snapshot; the second read costs
nothing there since holes are rare.)

*Removed seqs are never reused.* A hole is final only if ``s`` can never be
inserted again. Entries are never deleted while they matter: a push that fails
or is abandoned deletes its *body* (a tombstone: the entry stays and reads as a
deletion, and keeps its seq taken); entries are removed only by expiry, an hour
(``ENTRY_RETENTION``) after the later of their expiry and their write. Before
any entry can be skipped -- its push committed, or its body abandoned -- the
user's counter is raised to its seq (step 3 runs before step 4; abandoning
raises first too). So once a reader has moved past a hole below a committed
entry ``t``, the counter is at least ``t``, and every writer whose hint is read
later guesses above ``t``. A writer's hint is at most a lease old when it
inserts (below), far less than the retention, so a stale hint cannot reach a
seq whose entry has already been removed.

*Fresh hints.* The counters are read only for the users this process has no
fresh hint for. A user's hint is fresh for ``HINT_AGE`` (a lease) after a batch
that inserted the user's top seq this process knows (``_known``) began, once
that batch has raised the user's counter (so it exists, and is raised with
``$max``). Such a hint names an inserted seq, and every seq above it was
inserted after that batch began (the chain), so none of them can have been
removed before ``ENTRY_RETENTION`` has passed since -- far more than the hint's
age plus the lease a batch has to commit. A hint gone stale because another
writer took seqs meanwhile costs a duplicate key, as a counter read a moment
too early does -- once: a fresh hint found taken makes the batch read the
counters of its other fresh-hinted users, and later batches read counters for
``HINT_AGE`` (users pushed to through several nodes go back to the counters).

*Nothing moves past a seq in flight.* A pending body blocks readers at its seq
until it commits or is abandoned. Abandonment is durable: the body is deleted.
It happens when the push fails (its writer deletes the body, then gives back
its idempotency key) or, for a writer that died, in ``sweep`` once the body has
been pending for ``PENDING_GRACE`` (300 s, by the ``t`` the writer recorded).
Time never makes a reader skip anything else.

*A writer cannot commit what was abandoned.* On MongoDB the commit and the
sweeper's delete are conditional single-document writes (``pending: true`` and
``w`` in the filter), so exactly one of them applies, and the writer learns
from ``modified_count`` which bodies it still owns. On FerretDB those writes
are read-then-write and could interleave, so time separates them instead: a
writer gives up (abandons its batch, reports ``StoreUnavailable``) rather than
send its commit more than ``LEASE`` (60 s, monotonic) after the batch began,
and the sweeper abandons only bodies written ``PENDING_GRACE`` (300 s) ago.
This assumes the nodes' clocks agree to within a few minutes
(``PENDING_GRACE - LEASE`` less the time a command can spend in flight).
With ``commit_records`` no time is needed: the commit and the abandonment
insert the same ``_id`` (the attempt's outcome), and the unique key lets
exactly one of them in, on FerretDB too. Bodies keep a TTL date of at least
``t + 2 * PENDING_GRACE``, so a dead writer's body is abandoned by a sweep
before any TTL index removes it.

FerretDB's gaps are handled in two places. It has no TTL indexes, so
``sweep`` removes what expired; before it removes entries it raises the
counters over them, reads them back and raises again until they hold, since
FerretDB's ``$max`` can lose an update (a counter lowered that way between
sweeps is still a valid hint: it names an inserted seq, and only costs a
duplicate key). And it updates documents one by one and hangs on large update
commands, so writes go through ``MongoDatabase.batches``, which leaves them
whole on MongoDB and cuts them into 50-document commands on FerretDB.

Round trips: on MongoDB a batch of pushes costs one each for the idempotency
claims (if any request has a key), the counters hint (unless every user's hint
is fresh), the bodies, the entries, the counters raise and the commit --
however many pushes and recipients -- plus two per seq collision. On FerretDB,
the entries, raising the counters of users that have one and the commit take
one command per 50 documents.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections import abc
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import gevent
import pymongo
from pymongo import DeleteOne, UpdateMany, UpdateOne
from pymongo.collection import Collection
from pymongo.errors import BulkWriteError, ConnectionFailure, DuplicateKeyError, PyMongoError

from pushsvc.errors import InvalidArgument, NotFound, PushError, StoreUnavailable
from pushsvc.messages import Message
from pushsvc.store.batching import Call, GroupCommit
from pushsvc.store.commit_records import (
    ABANDONED,
    ATTEMPTS,
    COMMITTED,
    RECORDS_FORMAT,
    attempt_id,
    find_settled,
    is_attempt_id,
    outcome_id,
    read_outcomes,
    settle_format,
)
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
)
from pushsvc.store.mongo_database import (
    DUPLICATE_KEY,
    Doc,
    MongoDatabase,
    bson_date,
    ensure_ready,
    expired,
    guarded,
    only_duplicate_keys,
    retry_duplicate,
    short,
    store_error,
)

log = logging.getLogger(__name__)

COLLECTIONS = (
    "messages",
    "inbox",
    "counters",
    "acks",
    "idempotency",
    "probe",
    "delivered",
    "meta",
)
#: A writer never sends its commit later than this after its batch began.
LEASE = 60.0
#: ``sweep`` abandons a body still pending this long after it was written.
PENDING_GRACE = 300.0
#: ...or this long, when its writer's registration is gone (dead node): the
#: lease plus a margin for clock skew between nodes.
DEAD_WRITER_GRACE = LEASE + 60.0
#: Entries outlive their expiry (and their write) by this long before removal.
ENTRY_RETENTION = 3600.0
#: How long a push waits for another push with the same idempotency key.
CLAIM_WAIT = 5.0
_CLAIM_POLL = 0.05
#: Seq collisions one batch resolves before it gives up.
_COLLISIONS = 200
#: Requests per group commit.
MAX_BATCH = 1000
#: A node's probe document outlives its last probe by this long.
PROBE_RETENTION = 86400.0
#: Seconds receipts and acks wait for the next flush on MongoDB.
RECEIPT_INTERVAL = 1.0
#: Delivery marks one insert command carries (FerretDB inserts a document in well
#: under a millisecond; its slowness is in updates).
MARKS_PER_INSERT = 1000
#: A delivery mark outlives its message's expiry by this long (clocks of nodes and
#: database may differ; ``message_status`` answers only for unexpired messages).
MARK_MARGIN = 300.0
#: Delivery marks of unknown expiry one update statement carries (an ``$or`` of (message, user)
#: pairs, each served by the ``message_id`` index on MongoDB).
MARKS_PER_STATEMENT = 500
#: A seq this process inserted is a hint on its own for this long (module notes).
HINT_AGE = LEASE
#: Counters read back and raised again at most this often (FerretDB).
_COUNTER_REPAIRS = 5

Outcome = StoreResult | PushError
Attempt = tuple[str, str | None]  # (message id, w); w is None for bodies of earlier versions


def _token() -> str:
    """A write attempt's name: unique enough among concurrent attempts of one id."""
    return os.urandom(8).hex()


@dataclass(eq=False, slots=True)
class _Push:
    """One request in a batch, and how far writing it has come."""

    request: StoreRequest
    now: float
    writer: str = ""
    w: str = field(default_factory=_token)
    outcome: Outcome | None = None
    follows: _Push | None = None  # same idempotency key as an earlier request
    claimed: bool = False
    # Its recipients' seqs, once allocated (or, for a duplicate, the first push's).
    seqs: dict[str, int] = field(default_factory=dict)

    @property
    def message(self) -> Message:
        return self.request.message

    @property
    def writing(self) -> bool:
        return self.outcome is None and self.follows is None


class _LeaseExpired(Exception):
    """The batch took too long to commit safely (module notes)."""


class MongoInbox(InboxStore):
    """Messages, inboxes, acks and receipts in MongoDB: ``MongoInbox(database)``."""

    def __init__(
        self,
        database: MongoDatabase,
        *,
        lease: float = LEASE,
        writer: str = "",
        commit_records: bool | None = False,
    ) -> None:
        self.database = database
        self.lease = lease
        #: Commit each batch by its outcome (``commit_records``) rather than by
        #: updating every body: only once every node reads that form. None: as
        #: the database's format says (``store_format``), learnt at setup.
        self._records_setting = commit_records
        self.commit_records = bool(commit_records)
        #: ``<node id>/<run>``: recorded on every body this process writes, so a
        #: later run of the node (``recover``) or the sweeper can tell whose
        #: pending bodies can no longer commit.
        self.writer = writer
        db = database.db
        self._messages: Collection[Doc] = db["messages"]
        self._inbox: Collection[Doc] = db["inbox"]
        self._counters: Collection[Doc] = db["counters"]
        self._acks: Collection[Doc] = db["acks"]
        self._idempotency: Collection[Doc] = db["idempotency"]
        self._probe: Collection[Doc] = db["probe"]
        self._delivered: Collection[Doc] = db["delivered"]
        self._meta: Collection[Doc] = db["meta"]
        #: True once expired documents are removed by TTL indexes (MongoDB);
        #: False on FerretDB, where only ``sweep`` removes them.
        self.ttl_indexes = False
        self._ready = False
        self._closed = False
        # The highest seq this process inserted or saw taken, per user: a
        # guess's lower bound besides the counters (bounded; a guess only).
        self._known: dict[str, int] = {}
        # Users whose ``_known`` seq this process inserted itself, and whose
        # counter exists, with when (monotonic): within ``HINT_AGE`` of that, a
        # batch guesses from ``_known`` alone (module notes: fresh hints).
        self._fresh: dict[str, float] = {}
        # When a fresh hint was last found taken (monotonic): other writers are
        # pushing to these users, so counters are read again for ``HINT_AGE``.
        self._contended_at = -HINT_AGE
        # Write attempts this process failed but could not clean up after (the
        # database was away): safe to take over at once, with no grace.
        self._unfinished: set[Attempt] = set()
        self._batcher = GroupCommit(self._write_batch, MAX_BATCH)
        # Entries per insert command, once a server was found to keep an insert's
        # order only within smaller batches than ``database.batches`` makes.
        self._entries_per_command = 0
        #: Seqs found taken by another writer (each costs two round trips).
        self.collisions = 0
        database.attach()
        try:
            self._setup()
        except ConnectionFailure as exc:
            # Not fatal: the first call that reaches the server finishes setup.
            log.warning("message store unreachable at start-up: %s", short(exc))

    @property
    def read_concurrency(self) -> int:  # type: ignore[override]
        """FerretDB scans and sorts the inbox for every page (about half a second at
        10,000 entries, measured): a few at a time, or the welcomes and the pushes
        that share it wait behind a wall of replays."""
        return 4 if self.database.ferretdb else 32

    #: A flush is up to eight round trips to a shared server (docs/scaling.md): once
    #: a second, not twenty times, bounds them per node whatever the load; a
    #: full batch of receipts still goes at once.
    receipt_interval = RECEIPT_INTERVAL

    @property
    def atomic_updates(self) -> bool:
        """False on servers whose single-document updates are not atomic (FerretDB)."""
        return not self.database.ferretdb

    @property
    def round_trips(self) -> int:
        """Commands this inbox has sent to the database."""
        return self.database.commands_sent(COLLECTIONS)

    def _ensure_ready(self) -> None:
        if not self._ready:
            self._setup()

    def _setup(self) -> None:
        self.database.detect()
        self.database.index(self._inbox, [("user_id", 1), ("seq", 1)], unique=True)
        self.database.index(self._inbox, [("message_id", 1)])
        self.database.index(self._messages, [("pending", 1)])
        ttl = True
        for coll in (self._messages, self._inbox, self._idempotency, self._delivered):
            ttl = self.database.expiry_index(coll) and ttl
        self.ttl_indexes = ttl
        if self._records_setting is None:
            self.commit_records = self.store_format() >= RECORDS_FORMAT
        self._ready = True

    def store_format(self) -> int:
        """The format the database's writers use (``commit_records.settle_format``):
        ``RECORDS_FORMAT`` once every node reads commit records, 1 before."""
        return settle_format(self.database.db, self.writer.rpartition("/")[0])

    # -- writing: group commit ---------------------------------------------------

    def _store_checked(
        self, requests: list[StoreRequest], now: float
    ) -> list[StoreResult | PushError]:
        return self._batcher.submit(requests, now)

    def _write_batch(self, calls: list[Call]) -> None:
        w = _token()  # one attempt name for the batch: its commit is one statement
        pushes = [_Push(r, c.now, self.writer, w) for c in calls for r in c.requests]
        try:
            ensure_ready(self)
            self._write(pushes)
        except PyMongoError as exc:
            error = store_error(exc)
            for p in pushes:
                if p.outcome is None:
                    p.outcome = error
        for p in pushes:
            if p.follows is not None:
                p.outcome = _follow(p.follows, p.request)
        start = 0
        for call in calls:
            n = len(call.requests)
            call.outcomes = [p.outcome for p in pushes[start : start + n] if p.outcome is not None]
            assert len(call.outcomes) == n
            start += n

    def _write(self, pushes: list[_Push]) -> None:
        """The protocol of the module notes, for a batch. Sets every outcome
        (but those of requests that follow another's key)."""
        began = time.monotonic()
        try:
            self._claim_keys(pushes)
        except PyMongoError as exc:
            error = store_error(exc)
            for p in pushes:
                p.outcome = p.outcome or error
                self._release_claim(p)
            return
        writing = [p for p in pushes if p.writing]
        if not writing:
            return
        commit_sent = False
        try:
            self._insert_bodies(writing)
            for p in writing:
                if p.outcome is not None:  # its message id is taken
                    self._release_claim(p)
            writing = [p for p in writing if p.writing]
            if not writing:
                return
            counters = self._insert_entries(writing, began)
            tops = _tops(writing)
            self._raise_counters(tops, counters)
            # Each user's top seq is one this batch inserted (after ``began``),
            # and the user's counter exists now.
            for u in tops:
                if self._known.get(u) == tops[u]:
                    self._fresh[u] = began
            self._check_lease(began)
            commit_sent = True
            self._commit(writing)
        except (PyMongoError, StoreUnavailable, _LeaseExpired) as exc:
            if isinstance(exc, PyMongoError):
                error = store_error(exc)
            elif isinstance(exc, StoreUnavailable):
                error = exc
            else:
                error = StoreUnavailable(str(exc))
            self._fail(writing, error, commit_sent)

    def _check_lease(self, began: float) -> None:
        if time.monotonic() - began > self.lease:
            raise _LeaseExpired(
                f"the message store took over {self.lease:.0f}s to store a batch; retry"
            )

    # -- step 0: idempotency keys -------------------------------------------------

    def _claim_keys(self, pushes: list[_Push]) -> None:
        """Claim each request's idempotency key, or settle the request as a
        duplicate of the push that holds it."""
        first: dict[str, _Push] = {}
        todo: list[_Push] = []
        for p in pushes:
            key = p.request.idempotency_key
            if not key:
                continue
            if key in first:
                p.follows = first[key]
            else:
                first[key] = p
                todo.append(p)
        deadline = time.monotonic() + CLAIM_WAIT
        while todo:
            taken = self._insert_claims(todo)
            for p in todo:
                p.claimed = p not in taken
            todo = self._settle_claims(taken)
            if todo and time.monotonic() > deadline:
                for p in todo:
                    p.outcome = StoreUnavailable(
                        f"a push with idempotency key {p.request.idempotency_key!r}"
                        " is still being stored; retry later"
                    )
                return
            if todo:
                gevent.sleep(_CLAIM_POLL)

    def _insert_claims(self, pushes: list[_Push]) -> set[_Push]:
        """Insert claim documents; returns the pushes whose key was taken."""
        docs = [
            {
                "_id": p.request.idempotency_key,
                "message_id": p.message.id,
                "w": p.w,
                "users": list(p.request.user_ids),
                "created_at": p.now,
                "exp": p.now + IDEMPOTENCY_WINDOW,
                "expires_at": bson_date(p.now + IDEMPOTENCY_WINDOW),
            }
            for p in pushes
        ]
        try:
            self._idempotency.insert_many(docs, ordered=False)
            return set()
        except BulkWriteError as exc:
            if not only_duplicate_keys(exc):
                raise
            return {pushes[e["index"]] for e in exc.details["writeErrors"]}

    def _settle_claims(self, taken: set[_Push]) -> list[_Push]:
        """Decide the pushes whose key another push holds; returns those to claim
        again (the holder was outside the window, or abandoned, or in flight)."""
        if not taken:
            return []
        holders = {
            d["_id"]: d
            for d in self._idempotency.find(
                {"_id": {"$in": [p.request.idempotency_key for p in taken]}}
            )
        }
        bodies = self._find_bodies(
            [d["message_id"] for d in holders.values()],
            {"pending": 1, "w": 1},
            [d.get("w") for d in holders.values()],
        )
        pending = {mid: b for mid, b in bodies.items() if b.get("pending")}
        seen = self._seqs_of(
            [
                (d["message_id"], d.get("w"))
                for d in holders.values()
                if _committed(bodies.get(d["message_id"]), d.get("w"))
            ]
        )
        again: list[_Push] = []
        for p in taken:
            key = p.request.idempotency_key
            doc = holders.get(key)
            if doc is None:  # removed meanwhile
                again.append(p)
                continue
            mid, w = doc["message_id"], doc.get("w")
            if doc["exp"] <= p.now:  # outside the window: forget it
                self._idempotency.delete_one({"_id": key, "w": w})
                again.append(p)
            elif _committed(bodies.get(mid), w):
                p.seqs = seen.get(mid, {})  # the first push's, for requests following this one
                p.outcome = StoreResult(
                    mid, tuple(p.seqs.get(u, 0) for u in p.request.user_ids), duplicate=True
                )
            elif (
                (mid, w) in self._unfinished
                or (w is not None and (attempt_id(w), w) in self._unfinished)
                or p.now - doc.get("created_at", 0) > PENDING_GRACE
            ):
                # The push holding it failed, or its node died: take over (its
                # whole attempt, if it was written as one).
                held = pending.get(mid)
                if held is not None and "record" in held:
                    self._abandon_attempts([(mid, w), (held["record"], w)])
                else:
                    self._abandon_attempts([(mid, w)])
                self._idempotency.delete_one({"_id": key, "w": w})
                again.append(p)
            else:
                again.append(p)  # in flight: wait for it
        return again

    # -- step 1: bodies -------------------------------------------------------------

    def _insert_bodies(self, pushes: list[_Push]) -> None:
        """Insert the bodies, pending. A message id already stored fails its
        request; one left pending by an attempt that failed (or died, past the
        grace) is abandoned; one pending for a push still in flight is refused."""
        ours = {p.w for p in pushes}
        todo = pushes
        by_record = self.commit_records
        bodies = [_body(p, by_record) for p in todo]
        # The attempt's document goes first, in the same command: it exists
        # before any entry of the batch does (``commit_records``).
        head = [_attempt(pushes, bodies)] if by_record else []
        for attempt in range(2):
            try:
                self._messages.insert_many(head + bodies, ordered=False)
                return
            except BulkWriteError as exc:
                if not only_duplicate_keys(exc):
                    raise
                errors = exc.details["writeErrors"]
                if head and any(e["index"] == 0 for e in errors):
                    raise StoreUnavailable("a write attempt's name was taken; retry") from None
                clashed = [todo[e["index"] - len(head)] for e in errors]
                head = []
            old = self._find_bodies(
                [p.message.id for p in clashed], {"pending": 1, "w": 1, "t": 1, "created_at": 1}
            )
            stale: list[Attempt] = []
            for p in clashed:
                doc = old.get(p.message.id)
                if doc is None:
                    continue  # gone meanwhile: try again
                # A body of an attempt (``commit_records``) is abandoned with it.
                other = (doc.get("record", p.message.id), doc.get("w"))
                if not doc.get("pending") or doc.get("w") in ours or attempt:
                    p.outcome = InvalidArgument(f"message id {p.message.id} is already stored")
                elif other in self._unfinished or p.now - _written(doc) > PENDING_GRACE:
                    stale.append(other)
                    if "record" in doc:
                        stale.append((p.message.id, doc.get("w")))
                else:
                    p.outcome = StoreUnavailable(
                        f"message id {p.message.id} is being stored by another push; retry later"
                    )
            self._abandon_attempts(stale)
            todo = [p for p in clashed if p.outcome is None]
            if not todo:
                return
            bodies = [_body(p, by_record) for p in todo]
        for p in todo:  # still clashing after a second try: never go on without a body
            p.outcome = StoreUnavailable(f"message id {p.message.id} could not be stored; retry")

    # -- step 2: entries, allocating seqs ----------------------------------------

    def _insert_entries(self, pushes: list[_Push], began: float) -> dict[str, int]:
        """Insert every recipient's entry, allocating seqs (module notes, step 2).
        Returns what is known of the counters: those read for the hints, and 0
        for the users whose hint was fresh (their counter exists)."""
        users = list(dict.fromkeys(u for p in pushes for u in p.request.user_ids))
        fresh = self._fresh_hints(users, began)
        counters = self._read_counters([u for u in users if u not in fresh])
        hint = {u: max(counters.get(u, 0), self._known.get(u, 0)) for u in users}
        counters.update((u, 0) for u in fresh)
        # Each user's entries, in list order; users in order of first appearance.
        chains: dict[str, list[_Push]] = {u: [] for u in users}
        for p in pushes:
            for u in p.request.user_ids:
                chains[u].append(p)
        todo = [(u, p) for u in users for p in chains[u]]
        nxt: dict[str, int] = {}
        for u, p in todo:
            seq = nxt.get(u, hint[u] + 1)
            p.seqs[u] = seq
            nxt[u] = seq + 1
        unread = set(fresh)  # fresh-hinted users whose counter was not read
        for _ in range(_COLLISIONS):
            done = self._insert_in_order([_entry_doc(u, p) for u, p in todo])
            if done is None:
                self._learn((u, p.seqs[u]) for u, p in todo)
                return counters
            self.collisions += 1
            self._learn((u, p.seqs[u]) for u, p in todo[:done])
            # Its bodies hold their users' readers while it looks for free seqs:
            # on a slow store, give up at the lease rather than hold them longer.
            self._check_lease(began)
            todo = todo[done:]
            user = todo[0][0]
            taken = todo[0][1].seqs[user]
            if user in unread:
                # Another writer took seqs since this process wrote them: the other
                # fresh-hinted users are likely behind too. Read their counters (one
                # round trip, not a collision each), and read counters for a while.
                self._contended_at = time.monotonic()
                firsts: dict[str, int] = {}
                for u, p in todo:
                    if u in unread:
                        firsts.setdefault(u, p.seqs[u])
                unread.clear()
                for u, c in self._read_counters(list(firsts)).items():
                    if c >= firsts[u]:
                        _chain(todo, u, c + 1)
                if todo[0][1].seqs[user] > taken:
                    continue  # moved above the counter: try it
            # todo[0]'s seq is taken: the rest of that user's chain goes above
            # the user's top entry (which is at least the seq taken).
            top = max(self._top(user), taken)
            self._learn([(user, top)])
            _chain(todo, user, top + 1)
        raise StoreUnavailable("could not allocate a free seq: the users' inboxes are contended")

    def _insert_in_order(self, docs: list[Doc]) -> int | None:
        """Insert entries in order, stopping at the first duplicate key. Returns
        how many were inserted before it, or None if all were.

        FerretDB 1.24 honours ``ordered`` only within its insert batch (100
        documents by default): past a duplicate key it goes on with the next
        batch and counts those in ``nInserted``. So on FerretDB entries go one
        command per ``FERRETDB_BATCH``, and a command that reports more inserted
        than precede its first error fails the batch: which of the entries after
        that error were written is unknown, and ``_fail`` makes any that were
        tombstones (the seqs stay taken). Later commands are then cut to what the
        server's batch must have been (a FerretDB run with a small
        ``--batch-size``)."""
        done = 0
        size = self._entries_per_command
        parts = (
            [docs[i : i + size] for i in range(0, len(docs), size)]
            if size
            else self.database.batches(docs)
        )
        for part in parts:
            try:
                self._inbox.insert_many(part, ordered=True)
            except BulkWriteError as exc:
                errors = exc.details.get("writeErrors", [])
                if not errors or errors[0].get("code") != DUPLICATE_KEY:
                    raise
                index = int(errors[0]["index"])
                inserted = int(exc.details.get("nInserted", index))
                if inserted != index:
                    # Its batch ended after ``index``; every later one was written.
                    batch = max(1, min(len(part) - (inserted - index), len(part) // 2))
                    log.warning(
                        "the message store inserted entries past a duplicate key: it keeps"
                        " an insert's order only %d documents at a time (FerretDB's"
                        " --batch-size should be at least 50); inserting %d per command",
                        batch,
                        batch,
                    )
                    self._entries_per_command = batch
                    raise StoreUnavailable(
                        "the message store went on inserting past a duplicate seq; retry"
                    ) from None
                return done + index
            done += len(part)
        return None

    def _fresh_hints(self, users: Sequence[str], began: float) -> set[str]:
        """The users whose hint ``_known`` holds alone (module notes: fresh hints);
        none for a while after another writer was found taking their seqs."""
        if began - self._contended_at < HINT_AGE:
            return set()
        fresh = self._fresh
        return {u for u in users if began - fresh.get(u, -HINT_AGE) < HINT_AGE}

    def _read_counters(self, users: Sequence[str]) -> dict[str, int]:
        """The counters of those users that have one."""
        if not users:
            return {}
        return {
            d["_id"]: int(d["seq"])
            for d in self._counters.find(
                {"_id": {"$in": list(users)}}, {"seq": 1}, batch_size=len(users) + 1
            )
        }

    def _top(self, user_id: str) -> int:
        doc = self._inbox.find_one(
            {"user_id": user_id}, {"seq": 1}, sort=[("user_id", 1), ("seq", -1)]
        )
        return int(doc["seq"]) if doc else 0

    def _learn(self, seqs: Iterable[tuple[str, int]]) -> None:
        if len(self._known) > 100_000:
            self._known.clear()
            self._fresh.clear()
        for u, s in seqs:
            if s > self._known.get(u, 0):
                self._known[u] = s

    # -- step 3: counters ---------------------------------------------------------

    def _raise_counters(
        self,
        targets: Mapping[str, int],
        counters: Mapping[str, int] | None = None,
        *,
        verify: bool = False,
    ) -> None:
        """Raise each user's counter to at least the given (inserted) seq.

        ``counters`` is what was read of them, if anything was: users without
        one get theirs inserted; the others get one ``$max`` statement per
        distinct seq (a fan-out to users new or alike is one or two statements).
        With ``verify``, read the counters back and raise again until they
        hold: FerretDB's ``$max`` can lose an update to a concurrent one.
        """
        held = dict(counters) if counters is not None else self._read_counters(list(targets))
        for _ in range(_COUNTER_REPAIRS):
            todo = {u: s for u, s in targets.items() if held.get(u, 0) < s}
            if not todo:
                return
            raise_ = [u for u in todo if u in held]
            new = [u for u in todo if u not in held]
            if new:
                try:
                    self._counters.insert_many(
                        [{"_id": u, "seq": todo[u]} for u in new], ordered=False
                    )
                except BulkWriteError as exc:  # created meanwhile: raise those instead
                    if not only_duplicate_keys(exc):
                        raise
                    raise_ += [new[e["index"]] for e in exc.details["writeErrors"]]
            for part in self.database.batches(raise_):
                by_seq: dict[int, list[str]] = {}
                for u in part:
                    by_seq.setdefault(todo[u], []).append(u)
                raises = [
                    UpdateMany({"_id": {"$in": us}}, {"$max": {"seq": s}})
                    for s, us in by_seq.items()
                ]
                for ops in self.database.update_batches(raises):
                    self._counters.bulk_write(ops, ordered=False)
            if not verify:
                return
            held = self._read_counters(list(targets))
        raise StoreUnavailable("the seq counters do not hold their updates")

    # -- step 4: commit ---------------------------------------------------------------

    def _commit(self, pushes: list[_Push]) -> None:
        if self.commit_records:
            self._commit_record(pushes)
            return
        modified = 0
        for part in self.database.batches(pushes):
            # One statement: the bodies by _id, still pending, still this attempt's
            # (a batch's pushes share its ``w``). No $or: FerretDB evaluates one per
            # document it scans, four times the cost of the $in.
            modified += self._messages.update_many(
                {"_id": {"$in": [p.message.id for p in part]}, "w": part[0].w, "pending": True},
                {"$set": {"pending": False}},
            ).modified_count
        lost: set[_Push] = set()
        if modified != len(pushes):
            # Some bodies were abandoned under us: which is the body's word.
            bodies = self._find_bodies(
                [p.message.id for p in pushes], {"pending": 1, "w": 1}, {p.w for p in pushes}
            )
            lost = {p for p in pushes if not _committed(bodies.get(p.message.id), p.w)}
        for p in pushes:
            if p in lost:
                p.outcome = StoreUnavailable(
                    f"message {p.message.id} was abandoned before it committed; retry"
                )
                self._release_claim(p)
            else:
                p.outcome = StoreResult(p.message.id, tuple(p.seqs[u] for u in p.request.user_ids))

    def _commit_record(self, pushes: list[_Push]) -> None:
        """Step 4 as one insert: the attempt's outcome, ``committed`` (the batch's
        pushes share its ``w``). If an outcome is there already, it is
        ``abandoned`` (the sweeper took the batch over: none of it is stored) or
        ours (an insert sent twice)."""
        w = pushes[0].w
        try:
            self._messages.insert_one(_outcome(w, COMMITTED, *_kept(pushes)))
            done = True
        except DuplicateKeyError:
            done = read_outcomes(self._messages, [w]).get(w) == COMMITTED
        for p in pushes:
            if done:
                p.outcome = StoreResult(p.message.id, tuple(p.seqs[u] for u in p.request.user_ids))
            else:
                p.outcome = StoreUnavailable(
                    f"message {p.message.id} was abandoned before it committed; retry"
                )
                self._release_claim(p)

    # -- failure: abandon what was written ---------------------------------------------

    def _fail(self, pushes: list[_Push], error: StoreUnavailable, commit_sent: bool) -> None:
        """Abandon a batch that failed before it committed (or did not learn
        whether its commit applied): raise the counters over the entries it
        wrote, delete its pending bodies (the entries stay as tombstones), give
        back its keys. What cannot be done now, ``sweep`` does later."""
        for p in pushes:
            if p.outcome is None:
                p.outcome = error
        attempts = _attempts(pushes, self.commit_records)
        try:
            with pymongo.timeout(self.database.cleanup_timeout):
                bodies = self._abandon_attempts(attempts)
        except PyMongoError as exc:
            # The store's health logs the outage; tidy() finishes this once it is back.
            log.debug("could not abandon %d failed pushes yet: %s", len(pushes), short(exc))
            self._unfinished.update(attempts)
            return
        for p in pushes:
            if commit_sent and _committed(bodies.get(p.message.id), p.w):
                # The commit applied after all: the push is stored.
                p.outcome = StoreResult(p.message.id, tuple(p.seqs[u] for u in p.request.user_ids))
            else:
                self._release_claim(p)

    def _abandon_attempts(
        self, attempts: Sequence[Attempt], *, read_back: bool = True
    ) -> dict[str, Doc]:
        """Abandon write attempts: ``(message id, w)`` for a body of its own, and
        ``(attempt_id(w), w)`` for an attempt settled by its outcome
        (``commit_records``), whose bodies may be listed too. Raises the counters
        over the entries of what is abandoned, then deletes the pending bodies, or
        inserts the attempt's ``abandoned`` outcome (a ``committed`` one already
        there wins) and then deletes its bodies and its attempt document. Returns
        the bodies left under those ids (committed ones, or other attempts'),
        unless ``read_back`` is False."""
        if not attempts:
            return {}
        ws = list(dict.fromkeys(w for a, w in attempts if is_attempt_id(a) and w))
        by_record = set(ws)
        plain = [(m, w) for m, w in attempts if not is_attempt_id(m) and w not in by_record]
        listed = [(m, w) for m, w in attempts if not is_attempt_id(m) and w in by_record]
        # The attempts' documents, outcomes and listed bodies (their expiry): one query.
        found: dict[str, Doc] = {}
        if ws:
            keys = [attempt_id(w) for w in ws] + [outcome_id(w) for w in ws]
            keys += [m for m, _ in listed]
            fields = {"w": 1, "ids": 1, "state": 1, "exp": 1, "expires_at": 1}
            found = {d["_id"]: d for d in self._messages.find({"_id": {"$in": keys}}, fields)}
        states = {w: str(found[outcome_id(w)].get("state")) for w in ws if outcome_id(w) in found}
        bodies: dict[str, list[str]] = {w: [] for w in ws}
        for m, w in listed:
            bodies[w].append(m)
        for w in ws:
            doc = found.get(attempt_id(w))
            if doc is not None:
                bodies[w] += [m for m in doc.get("ids", []) if m not in bodies[w]]
        covered = plain + [(m, w) for w in ws for m in bodies[w]]
        undecided = [w for w in ws if w not in states]
        # Counters first: readers move past these seqs as soon as the bodies go.
        tops: dict[str, int] = {}
        doomed = plain + [(m, w) for w in undecided for m in bodies[w]]
        for seqs in self._seqs_of(doomed).values():
            for u, s in seqs.items():
                tops[u] = max(tops.get(u, 0), s)
        self._raise_counters(tops)
        for part in self.database.batches(plain):
            self._messages.bulk_write(
                [DeleteOne({"_id": m, "w": w, "pending": True}) for m, w in part],
                ordered=False,
            )
        if undecided:
            outcomes = [_outcome(w, ABANDONED, *_kept_by(w, bodies[w], found)) for w in undecided]
            try:
                self._messages.insert_many(outcomes, ordered=False)
                states.update((w, ABANDONED) for w in undecided)
            except BulkWriteError as exc:  # settled meanwhile (by its writer, perhaps)
                if not only_duplicate_keys(exc):
                    raise
                states.update(read_outcomes(self._messages, undecided))
        for w in ws:
            if states.get(w) == ABANDONED:
                for ids in self.database.batches(bodies[w]):
                    self._messages.delete_many({"_id": {"$in": list(ids)}, "pending": w})
        for ids in self.database.batches([attempt_id(w) for w in ws if w in states]):
            self._messages.delete_many({"_id": {"$in": list(ids)}})
        self._unfinished.difference_update(attempts)
        if not read_back:
            return {}
        return self._find_bodies([m for m, _ in covered], {"pending": 1, "w": 1}, ws)

    def _in_flight(self, query: Doc, fields: Doc | None = None) -> list[Doc]:
        """Pending bodies and attempt documents (``commit_records``: settled or
        not) matching ``query``. Either's ``(_id, w)`` is what abandons it."""
        either = {"$or": [{"pending": True}, ATTEMPTS]}
        return list(self._messages.find({"$and": [either, query]}, fields or {"w": 1}))

    @guarded
    def recover(self) -> int:
        """Abandon the pending bodies an earlier run of this node left: that run
        is dead (node ids are unique, and this one is running), so they can never
        commit, and until abandoned they hold their users' replays."""
        node = self.writer.rpartition("/")[0]
        if not node:
            return 0
        attempts = [
            (d["_id"], d.get("w"))
            for d in self._in_flight({"node": node, "by": {"$ne": self.writer}})
        ]
        if attempts:
            self._abandon_attempts(attempts)
        return len(attempts)

    @guarded
    def tidy(self) -> int:
        """Abandon the pushes whose clean-up failed (the store was unreachable when
        they failed): their pending bodies block their users' readers until this
        runs -- or, if this node dies first, until ``sweep``'s grace."""
        attempts = list(self._unfinished)
        if not attempts:
            return 0
        left = self._abandon_attempts(attempts)
        # Their keys go back too, unless a commit applied after all (a batch
        # commits whole: one committed body says its attempt did).
        stored = {w for mid, w in attempts if _committed(left.get(mid), w)}
        failed = list({w for _, w in attempts if w is not None and w not in stored})
        for part in self.database.batches(failed):
            self._idempotency.delete_many({"w": {"$in": list(part)}})
        return len(attempts)

    def _release_claim(self, p: _Push) -> None:
        """Give back the idempotency key a failed push claimed. Never raises."""
        if not p.claimed:
            return
        key = p.request.idempotency_key
        try:
            with pymongo.timeout(self.database.cleanup_timeout):
                self._idempotency.delete_one({"_id": key, "w": p.w})
            p.claimed = False
        except PyMongoError as exc:
            self._unfinished.add((p.message.id, p.w))
            log.debug("could not release an idempotency key yet: %s", short(exc))

    # -- reading ----------------------------------------------------------------------

    @guarded
    def read_inbox(self, user_id: str, after_seq: int, limit: int, now: float) -> InboxPage:
        if limit <= 0:
            return InboxPage(())
        entries: list[InboxEntry] = []
        cursor = after_seq
        while len(entries) < limit:
            want = limit - len(entries)
            docs = self._entry_docs(user_id, cursor, want + 1)
            batch = docs[:want]
            live = [d for d in batch if d["exp"] > now]
            bodies = self._find_bodies(
                [d["message_id"] for d in live],
                {"w": 1, "pending": 1, "payload": 1, "content_type": 1, "created_at": 1, "exp": 1},
                [d.get("w") for d in live],
            )
            for d in batch:
                body = bodies.get(d["message_id"]) if d["exp"] > now else None
                if body is None or body.get("w") != d.get("w") or body["exp"] <= now:
                    continue  # expired, or removed: a deletion
                if body.get("pending"):
                    return InboxPage(tuple(entries), blocked_at=int(d["seq"]))
                entries.append(InboxEntry(user_id, int(d["seq"]), _message(body)))
            if len(docs) <= want:
                return InboxPage(tuple(entries))
            cursor = int(batch[-1]["seq"])
        return InboxPage(tuple(entries), more=True)

    def _entry_docs(self, user_id: str, after: int, limit: int) -> list[Doc]:
        """Up to ``limit`` entries above ``after``, ascending; a page with a hole
        is read again up to its last entry (module notes: the chain)."""
        query: Doc = {"user_id": user_id, "seq": {"$gt": after}}
        fields = {"seq": 1, "message_id": 1, "w": 1, "exp": 1}
        order = [("user_id", 1), ("seq", 1)]
        docs = list(self._inbox.find(query, fields, sort=order, limit=limit, batch_size=limit + 1))
        if docs and int(docs[-1]["seq"]) - after != len(docs):
            last = int(docs[-1]["seq"])
            query["seq"] = {"$gt": after, "$lte": last}
            again = {int(d["seq"]): d for d in self._inbox.find(query, fields, sort=order)}
            again.update((int(d["seq"]), d) for d in docs)
            docs = [again[s] for s in sorted(again)][:limit]
        return docs

    def _find_bodies(
        self, ids: Iterable[str], fields: Doc, attempts: Iterable[str | None] = ()
    ) -> dict[str, Doc]:
        """The bodies of ``ids`` as their attempts stand (``commit_records``):
        abandoned ones left out. ``attempts``: the write attempts expected."""
        return find_settled(self._messages, ids, fields, attempts)

    def _seqs_of(self, attempts: Sequence[Attempt]) -> dict[str, dict[str, int]]:
        """Each recipient's seq of each ``(message id, w)``."""
        if not attempts:
            return {}
        ws = dict(attempts)
        out: dict[str, dict[str, int]] = {}
        for e in self._inbox.find(
            {"message_id": {"$in": list(ws)}}, {"user_id": 1, "seq": 1, "w": 1, "message_id": 1}
        ):
            if ws.get(e["message_id"]) == e.get("w"):
                out.setdefault(e["message_id"], {})[e["user_id"]] = int(e["seq"])
        return out

    def _hinted_latest(self, users: Sequence[str]) -> dict[str, int]:
        """Each user's counter, or the higher seq this process knows of."""
        counters = self._read_counters(users)
        return {u: max(counters.get(u, 0), self._known.get(u, 0)) for u in users}

    @guarded
    def user_starts(self, user_ids: Sequence[str]) -> dict[str, UserStart]:
        users = list(dict.fromkeys(user_ids))
        if not users:
            return {}
        latest = self._hinted_latest(users)
        acked = {
            d["_id"]: int(d["acked_seq"])
            for d in self._acks.find({"_id": {"$in": users}}, {"acked_seq": 1})
        }
        return {u: UserStart(latest[u], acked.get(u, 0)) for u in users}

    @guarded
    def latest_seqs(self, user_ids: Sequence[str]) -> dict[str, int]:
        """The counters; on FerretDB, whose ``$max`` can lose an update to a
        concurrent one (leaving a counter below a committed entry), also the
        entries above them: one query, a branch per distinct counter value."""
        users = list(dict.fromkeys(user_ids))
        if not users:
            return {}
        latest = self._hinted_latest(users)
        if self.atomic_updates:
            return latest
        by_latest: dict[int, list[str]] = {}
        for u, s in latest.items():
            by_latest.setdefault(s, []).append(u)
        above = {
            "$or": [{"user_id": {"$in": us}, "seq": {"$gt": s}} for s, us in by_latest.items()]
        }
        for e in self._inbox.find(above, {"user_id": 1, "seq": 1}):
            u = e["user_id"]
            latest[u] = max(latest[u], int(e["seq"]))
        return latest

    @guarded
    def ack_many(self, acks: Mapping[str, int]) -> None:
        statements = [
            UpdateOne({"_id": u}, {"$max": {"acked_seq": max(int(s), 0)}}, upsert=True)
            for u, s in acks.items()
        ]
        for ops in self.database.update_batches(statements):
            retry_duplicate(functools.partial(self._acks.bulk_write, ops, ordered=False))

    @guarded
    def mark_delivered(self, receipts: Sequence[DeliveredMark]) -> None:
        # A mark is a document of its own, inserted, not a field set on the entry:
        # FerretDB rewrites an updated document by scanning its whole collection,
        # so a mark per entry cost a scan of the inbox per delivery (module notes).
        docs: dict[str, Doc] = {}
        unknown: list[tuple[str, str]] = []
        for m, u, exp in receipts:
            if exp is None:
                unknown.append((m, u))
            else:
                key = _mark_id(m, u)
                docs[key] = {"_id": key, "exp": exp, "expires_at": bson_date(exp + MARK_MARGIN)}
        marks = list(docs.values())
        for i in range(0, len(marks), MARKS_PER_INSERT):
            try:
                self._delivered.insert_many(marks[i : i + MARKS_PER_INSERT], ordered=False)
            except BulkWriteError as exc:
                if not only_duplicate_keys(exc):  # a mark already there is done
                    raise
        if unknown:
            self._mark_entries(unknown)

    def _mark_entries(self, receipts: list[tuple[str, str]]) -> None:
        """Marks whose expiry is unknown (forwarded by nodes of earlier versions): set
        on the entries. One statement per piece, not one per message: on FerretDB
        each statement scans the inbox, and takes a pool connection."""
        marks = [
            UpdateMany(
                {"$or": [{"message_id": m, "user_id": u} for m, u in part]},
                {"$set": {"delivered": True}},
            )
            for part in self.database.batches(list(dict.fromkeys(receipts)), MARKS_PER_STATEMENT)
        ]
        for ops in self.database.update_batches(marks):
            self._inbox.bulk_write(ops, ordered=False)

    @guarded
    def message_status(self, message_id: str, now: float) -> list[RecipientStatus]:
        body = self._find_bodies([message_id], {"pending": 1, "exp": 1, "w": 1}).get(message_id)
        if body is None or body.get("pending") or body["exp"] <= now:
            raise NotFound(f"message {message_id} is unknown or has expired")
        entries = sorted(
            (
                e
                for e in self._inbox.find(
                    {"message_id": message_id},
                    {"user_id": 1, "seq": 1, "delivered": 1, "i": 1, "w": 1},
                )
                if e.get("w") == body.get("w")
            ),
            key=lambda e: (e.get("i", 0), e["user_id"]),
        )
        users = [e["user_id"] for e in entries]
        acked = (
            {d["_id"]: int(d["acked_seq"]) for d in self._acks.find({"_id": {"$in": users}})}
            if users
            else {}
        )
        marked = (
            {
                d["_id"]
                for d in self._delivered.find(
                    {"_id": {"$in": [_mark_id(message_id, u) for u in users]}}, {"_id": 1}
                )
            }
            if users
            else set()
        )
        return [
            RecipientStatus(
                e["user_id"],
                int(e["seq"]),
                bool(e.get("delivered")) or _mark_id(message_id, e["user_id"]) in marked,
                int(e["seq"]) <= acked.get(e["user_id"], 0),
            )
            for e in entries
        ]

    # -- housekeeping -----------------------------------------------------------------

    @guarded
    def probe(self) -> None:
        """A small durable write: one document per node (its id), not one for the
        fleet, whose every node would contend for it twice a second."""
        node = self.writer.rpartition("/")[0] or "probe"
        retry_duplicate(
            lambda: self._probe.update_one(
                {"_id": node}, {"$set": {"at": time.time()}}, upsert=True
            )
        )

    @guarded
    def sweep(self, now: float, live_writers: abc.Collection[str] | None = None) -> int:
        removed = 0
        # Pushes whose writer died: abandon their bodies (entries stay as tombstones).
        # (Attempt documents of settled attempts go too: the sweep finds them
        # settled and removes them.)
        old = {
            "$or": [
                {"t": {"$lte": now - PENDING_GRACE}},
                # written by an earlier version, which had no ``t``
                {"t": {"$exists": False}, "created_at": {"$lte": now - PENDING_GRACE}},
            ]
        }
        dead: list[Attempt] = [(d["_id"], d.get("w")) for d in self._in_flight(old)]
        if live_writers is not None:
            # A writer whose registration is gone: its lease ran out long ago.
            for d in self._in_flight(
                {"t": {"$lte": now - DEAD_WRITER_GRACE}, "node": {"$ne": ""}},
                {"w": 1, "node": 1},
            ):
                if d.get("node") and d["node"] not in live_writers:
                    dead.append((d["_id"], d.get("w")))
        if dead:
            # Not read back: a minute's attempts can list tens of thousands of bodies.
            self._abandon_attempts(dead, read_back=False)
            removed += len(dead)
        # What expired (TTL indexes do this too, where the server has them).
        # Counters are raised over the entries first, so their seqs stay used.
        tops: dict[str, int] = {}
        for e in self._inbox.find(expired(now), {"user_id": 1, "seq": 1}):
            tops[e["user_id"]] = max(tops.get(e["user_id"], 0), int(e["seq"]))
        if tops:
            self._raise_counters(tops, verify=True)
            removed += self._inbox.delete_many(expired(now)).deleted_count
        removed += self._messages.delete_many(expired(now)).deleted_count
        removed += self._idempotency.delete_many(expired(now)).deleted_count
        removed += self._delivered.delete_many(expired(now)).deleted_count
        # Probe documents of nodes gone for a day (a handful: one per node id).
        self._probe.delete_many({"at": {"$lt": now - PROBE_RETENTION}})
        return removed

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.database.detach()


# -- documents ---------------------------------------------------------------------


def _body(p: _Push, by_record: bool = False) -> Doc:
    """A body, pending: until its own commit, or (``by_record``) its attempt's."""
    m = p.message
    exp = float(m.expires_at or 0.0)
    return {
        "_id": m.id,
        "w": p.w,
        "payload": m.payload,
        "content_type": m.content_type,
        "created_at": m.created_at,
        "exp": exp,
        # Kept past a short expiry until sweep could have abandoned it.
        "expires_at": bson_date(max(exp, p.now + 2 * PENDING_GRACE)),
        "t": p.now,
        "by": p.writer,
        "node": p.writer.rpartition("/")[0],
        "pending": p.w if by_record else True,
    }


def _attempt(pushes: Sequence[_Push], bodies: Sequence[Doc]) -> Doc:
    """A batch's attempt document (``commit_records``): what the sweeper needs to
    abandon it (``t``, ``node``, ``by``, its ``bodies``' ids), kept as long as
    any of them."""
    first = pushes[0]
    return {
        "_id": attempt_id(first.w),
        "w": first.w,
        "ids": [b["_id"] for b in bodies],
        "created_at": min(p.now for p in pushes),
        "exp": max(b["exp"] for b in bodies),
        "expires_at": max(b["expires_at"] for b in bodies),
        "t": min(p.now for p in pushes),
        "by": first.writer,
        "node": first.writer.rpartition("/")[0],
    }


def _outcome(w: str, state: str, exp: float, expires_at: object) -> Doc:
    """An attempt's outcome (``commit_records``), kept as long as its bodies."""
    return {"_id": outcome_id(w), "w": w, "state": state, "exp": exp, "expires_at": expires_at}


def _kept(pushes: Sequence[_Push]) -> tuple[float, object]:
    """The latest ``exp`` and ``expires_at`` of the pushes' bodies (``_body``)."""
    exp = max(float(p.message.expires_at or 0.0) for p in pushes)
    return exp, bson_date(max(exp, max(p.now for p in pushes) + 2 * PENDING_GRACE))


def _kept_by(w: str, ids: Sequence[str], found: Mapping[str, Doc]) -> tuple[float, object]:
    """How long an abandoned attempt's outcome is kept: as long as its attempt
    document or any of its bodies among ``found``; or, if none was found (its
    bodies were never written), as a body written now would be."""
    docs = [found[k] for k in [attempt_id(w), *ids] if k in found]
    dates = [d["expires_at"] for d in docs if d.get("expires_at") is not None]
    if not dates:
        now = time.time()
        return now, bson_date(now + 2 * PENDING_GRACE)
    return max(float(d.get("exp", 0.0)) for d in docs), max(dates)


def _attempts(pushes: Sequence[_Push], by_record: bool) -> list[Attempt]:
    """What abandoning a batch's pushes abandons: each body, and (``by_record``)
    the batch's attempt."""
    attempts: list[Attempt] = [(p.message.id, p.w) for p in pushes]
    if by_record:
        attempts += [(attempt_id(w), w) for w in dict.fromkeys(p.w for p in pushes)]
    return attempts


def _entry_doc(user_id: str, p: _Push) -> Doc:
    exp = float(p.message.expires_at or 0.0)
    return {
        "user_id": user_id,
        "seq": p.seqs[user_id],
        "message_id": p.message.id,
        "w": p.w,
        "i": p.request.user_ids.index(user_id),
        "exp": exp,
        "expires_at": bson_date(max(exp, p.now) + ENTRY_RETENTION),
        "delivered": False,
    }


def _mark_id(message_id: str, user_id: str) -> str:
    """A delivery mark's id: message ids are hex digits, so the first "/" ends one."""
    return f"{message_id}/{user_id}"


def _message(body: Doc) -> Message:
    return Message(
        body["_id"], bytes(body["payload"]), body["content_type"], body["created_at"], body["exp"]
    )


def _written(body: Doc) -> float:
    """When a body was written (bodies of earlier versions have no ``t``)."""
    written = body.get("t", body.get("created_at"))
    return float(written) if written is not None else 0.0


def _committed(body: Doc | None, w: str | None) -> bool:
    return body is not None and body.get("w") == w and not body.get("pending", True)


def _chain(todo: Sequence[tuple[str, _Push]], user: str, seq: int) -> None:
    """Give ``user``'s entries in ``todo`` consecutive seqs from ``seq`` on."""
    for u, p in todo:
        if u == user:
            p.seqs[u] = seq
            seq += 1


def _tops(pushes: Iterable[_Push]) -> dict[str, int]:
    tops: dict[str, int] = {}
    for p in pushes:
        for u, s in p.seqs.items():
            tops[u] = max(tops.get(u, 0), s)
    return tops


def _follow(first: _Push, request: StoreRequest) -> Outcome:
    """The outcome of a request whose key an earlier request of the batch used:
    a duplicate of what that one stored (or was a duplicate of), or its error."""
    assert first.outcome is not None
    if isinstance(first.outcome, StoreResult):
        return StoreResult(
            first.outcome.message_id,
            tuple(first.seqs.get(u, 0) for u in request.user_ids),
            duplicate=True,
        )
    return first.outcome
