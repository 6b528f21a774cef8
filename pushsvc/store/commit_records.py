"""Commit records: a write attempt committed by one document instead of one per body.

A body of the MongoDB store (``mongo.py``) is committed by setting its
``pending`` to false: one update per body, which FerretDB answers with a scan
of the collection per document (the notes of Dec 3 15:35 in
``bench/RESULTS.md``: 9.4 of 13.5 ms of database time a stored message). With
``PUSHSVC_MONGO_COMMIT_RECORDS`` a node commits a write attempt ``w`` (a
batch's bodies) by its *record* instead, a document of the ``messages``
collection with the ``_id`` ``record_id(w)``, inserted pending in the same
command as the bodies, ahead of them, and listing their ids (``ids``):

- a body whose ``pending`` is a string names its attempt: it is committed when
  that record's ``pending`` is false, in flight while it is true, and abandoned
  (a deletion to its readers) when the record is gone -- abandoning deletes the
  record, conditionally on its still being pending, as it deletes a pending
  body today;
- every other body is read as before (``pending`` true or false).

Every node reads this form whatever its own setting, so that the setting can be
turned on once every node of a fleet runs a version that reads it
(docs/operations.md). Nodes of earlier versions read a string ``pending`` as
pending (they deliver such a message once they are upgraded), and never sweep
it (their sweeps look for ``pending: true``). Abandoning an attempt raises the
counters over the entries of every body its record lists, deletes the record
if still pending, and then -- only once the record is seen gone -- the bodies.

A record is fetched with the bodies whenever the reader knows the attempt
(entries carry their ``w``): the same ``$in`` on ``_id``, no extra round trip.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from pymongo.collection import Collection

from pushsvc.store.mongo_database import Doc

#: The prefix of a record's ``_id``; message ids are hex digits and an owner tag.
RECORD_PREFIX = "attempt/"


def record_id(w: str) -> str:
    """The ``_id`` of write attempt ``w``'s commit record."""
    return RECORD_PREFIX + w


def is_record_id(key: object) -> bool:
    """Whether a ``messages`` document's ``_id`` is a commit record's."""
    return isinstance(key, str) and key.startswith(RECORD_PREFIX)


def settled(body: Doc | None, records: Mapping[str, Doc]) -> Doc | None:
    """``body`` as its attempt stands: a body naming its attempt in ``pending``
    gets the record's ``pending`` (True while its record is pending) and the
    record's ``_id`` as ``record`` (what abandoning it deletes), or is None when
    its record is gone (abandoned: a deletion); others as they are. ``records``
    maps ``_id`` to the records read."""
    if body is None:
        return None
    attempt = body.get("pending")
    if not isinstance(attempt, str):
        return body
    record = records.get(record_id(attempt))
    if record is None:
        return None
    return {**body, "pending": record.get("pending") is not False, "record": record["_id"]}


def find_settled(
    messages: Collection[Doc],
    ids: Iterable[str],
    fields: Doc,
    attempts: Iterable[str | None] = (),
) -> dict[str, Doc]:
    """The bodies of ``ids``, settled (``settled``; the abandoned ones left out).
    ``attempts``: the write attempts the caller expects (the entries' ``w``),
    whose records are read in the same query; a body naming another attempt
    costs a second query for its record."""
    ids = list(dict.fromkeys(ids))
    if not ids:
        return {}
    wanted = [record_id(w) for w in dict.fromkeys(a for a in attempts if a)]
    fields = {**fields, "pending": 1, "w": 1}
    bodies: dict[str, Doc] = {}
    records: dict[str, Doc] = {}
    query = {"_id": {"$in": ids + wanted}}
    for d in messages.find(query, fields, batch_size=len(ids) + len(wanted) + 1):
        key = d["_id"]
        if is_record_id(key):
            records[key] = d
        else:
            bodies[key] = d
    missing = [
        record_id(p)
        for p in {b.get("pending") for b in bodies.values()}
        if isinstance(p, str) and record_id(p) not in records
    ]
    if missing:
        for d in messages.find({"_id": {"$in": missing}}, {"pending": 1, "w": 1}):
            records[d["_id"]] = d
    out: dict[str, Doc] = {}
    for key, body in bodies.items():
        s = settled(body, records)
        if s is not None:
            out[key] = s
    return out
