"""Commit records: a write attempt committed by inserting one document.

A body of the MongoDB store (``mongo.py``) is committed by setting its
``pending`` to false: one update per body, which FerretDB answers with a scan
of the collection per document (the notes of Dec 3 15:35 in
``bench/RESULTS.md``: 9.4 of 13.5 ms of database time a stored message). With
``PUSHSVC_MONGO_COMMIT_RECORDS`` a node writes a batch's bodies as one *write
attempt* ``w`` and settles the attempt by an insert instead, two documents of
the ``messages`` collection besides the bodies:

- the attempt, ``attempt_id(w)``: inserted in the same command as the bodies,
  ahead of them, with what abandoning it needs (the bodies' ids, ``t``,
  ``node``, ``by``); removed by ``sweep`` once the attempt is settled;
- its outcome, ``outcome_id(w)``, ``{state: "committed" | "abandoned"}``:
  inserted once, by the writer to commit or by whoever abandons the attempt.
  Both insert the same ``_id``, so exactly one of them happens on MongoDB and
  FerretDB alike (a unique key, not a conditional update: FerretDB's updates
  are read-then-write, and cost a scan of the collection each).

A body whose ``pending`` is a string names its attempt: it is committed when
that attempt's outcome says so, a deletion when it says abandoned, and pending
while there is none. Every other body is read as before (``pending`` true or
false). An outcome is kept as long as any body of its attempt (its ``exp`` and
``expires_at`` are the latest of theirs), so a body is never read without it
before the body has expired.

Every node reads this form whatever it writes. Which form a node writes is the
database's *format* (``settle_format``: 2 for a database no node has used, 1 for
one in use, raised by an operator once every node reads this form:
docs/operations.md), unless ``PUSHSVC_MONGO_COMMIT_RECORDS`` says otherwise.
Nodes of 0.1.0 read a string ``pending`` as pending (they deliver such a message
once they are upgraded), and never sweep it (their sweeps look for ``pending:
true``).

An outcome is fetched with the bodies whenever the reader knows the attempt
(entries carry their ``w``): the same ``$in`` on ``_id``, no extra round trip.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping

from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import DuplicateKeyError

from pushsvc.store.mongo_database import Doc

#: The prefix of an attempt document's ``_id``; message ids are hex digits.
ATTEMPT_PREFIX = "attempt/"
#: The prefix of an outcome document's ``_id``.
OUTCOME_PREFIX = "outcome/"
COMMITTED = "committed"
ABANDONED = "abandoned"
#: The attempt documents (an ``_id`` range: the index on MongoDB).
ATTEMPTS: Doc = {"_id": {"$gte": ATTEMPT_PREFIX, "$lt": ATTEMPT_PREFIX[:-1] + "0"}}


def attempt_id(w: str) -> str:
    """The ``_id`` of write attempt ``w``'s document."""
    return ATTEMPT_PREFIX + w


def outcome_id(w: str) -> str:
    """The ``_id`` of write attempt ``w``'s outcome."""
    return OUTCOME_PREFIX + w


def is_attempt_id(key: object) -> bool:
    """Whether a ``messages`` document's ``_id`` is an attempt's."""
    return isinstance(key, str) and key.startswith(ATTEMPT_PREFIX)


def is_outcome_id(key: object) -> bool:
    """Whether a ``messages`` document's ``_id`` is an outcome's."""
    return isinstance(key, str) and key.startswith(OUTCOME_PREFIX)


def settled(body: Doc | None, outcomes: Mapping[str, Doc]) -> Doc | None:
    """``body`` as its attempt stands. A body naming its attempt in ``pending``
    is None when the attempt was abandoned (a deletion); otherwise it gets
    ``pending`` False if the attempt committed, True while it has no outcome,
    and the attempt's ``_id`` as ``record`` (what abandoning it abandons).
    Others come as they are. ``outcomes`` maps ``_id`` to the outcomes read."""
    if body is None:
        return None
    attempt = body.get("pending")
    if not isinstance(attempt, str):
        return body
    outcome = outcomes.get(outcome_id(attempt))
    state = outcome.get("state") if outcome is not None else None
    if state == ABANDONED:
        return None
    return {**body, "pending": state != COMMITTED, "record": attempt_id(attempt)}


def find_settled(
    messages: Collection[Doc],
    ids: Iterable[str],
    fields: Doc,
    attempts: Iterable[str | None] = (),
) -> dict[str, Doc]:
    """The bodies of ``ids``, settled (``settled``; the abandoned ones left out).
    ``attempts``: the write attempts the caller expects (the entries' ``w``),
    whose outcomes are read in the same query; a body naming another attempt
    costs a second query for its outcome."""
    ids = list(dict.fromkeys(ids))
    if not ids:
        return {}
    wanted = [outcome_id(w) for w in dict.fromkeys(a for a in attempts if a)]
    fields = {**fields, "pending": 1, "w": 1, "state": 1}
    bodies: dict[str, Doc] = {}
    outcomes: dict[str, Doc] = {}
    query = {"_id": {"$in": ids + wanted}}
    for d in messages.find(query, fields, batch_size=len(ids) + len(wanted) + 1):
        key = d["_id"]
        if is_outcome_id(key):
            outcomes[key] = d
        else:
            bodies[key] = d
    missing = [
        outcome_id(p)
        for p in {b.get("pending") for b in bodies.values()}
        if isinstance(p, str) and outcome_id(p) not in outcomes and outcome_id(p) not in wanted
    ]
    if missing:
        for d in messages.find({"_id": {"$in": missing}}, {"state": 1}):
            outcomes[d["_id"]] = d
    out: dict[str, Doc] = {}
    for key, body in bodies.items():
        s = settled(body, outcomes)
        if s is not None:
            out[key] = s
    return out


def read_outcomes(messages: Collection[Doc], ws: Iterable[str]) -> dict[str, str]:
    """The outcome of each of the attempts ``ws`` that has one: ``w`` to state."""
    keys = [outcome_id(w) for w in dict.fromkeys(ws)]
    if not keys:
        return {}
    return {
        d["_id"][len(OUTCOME_PREFIX) :]: str(d.get("state"))
        for d in messages.find({"_id": {"$in": keys}}, {"state": 1}, batch_size=len(keys) + 1)
    }


# -- the database's format: which form its writers use -------------------------------

#: The format whose writers commit by outcomes; format 1 updates every body.
RECORDS_FORMAT = 2
FORMATS = (1, RECORDS_FORMAT)
#: The ``meta`` document that holds the format.
FORMAT_ID = "format"
#: Collections whose documents say a node has used the database (``settle_format``).
_USED_BY = ("counters", "messages", "inbox", "idempotency")


def recorded_format(db: Database[Doc]) -> int | None:
    """The format recorded in ``meta``, or None while no node of a version that
    records it has met the database."""
    doc = db["meta"].find_one({"_id": FORMAT_ID})
    if doc is None:
        return None
    version = doc.get("version")
    return int(version) if isinstance(version, int | float) else 1


def settle_format(db: Database[Doc], node: str = "") -> int:
    """The format the database's writers use, recorded first if it was not:
    ``RECORDS_FORMAT`` for a database no node has used yet (no documents in
    ``_USED_BY``, no registration but ``node``'s own), 1 for one in use, where
    nodes of 0.1.0 may be running. The first node to record it decides."""
    version = recorded_format(db)
    if version is not None:
        return version
    used = db["nodes"].find_one({"_id": {"$ne": node}}, {"_id": 1}) is not None or any(
        db[name].find_one({}, {"_id": 1}) is not None for name in _USED_BY
    )
    try:
        db["meta"].insert_one(
            {"_id": FORMAT_ID, "version": 1 if used else RECORDS_FORMAT, "at": time.time()}
        )
    except DuplicateKeyError:
        pass  # another node was first: its word
    return recorded_format(db) or 1


def set_format(db: Database[Doc], version: int) -> int | None:
    """Record ``version`` as the database's format (an operator's, once every node
    reads it: docs/operations.md). Returns the format recorded before, if any."""
    if version not in FORMATS:
        raise ValueError(f"format {version} is not one of {', '.join(map(str, FORMATS))}")
    before = db["meta"].find_one_and_update(
        {"_id": FORMAT_ID}, {"$set": {"version": version, "at": time.time()}}, upsert=True
    )
    if before is None:
        return None
    old = before.get("version")
    return int(old) if isinstance(old, int | float) else 1
