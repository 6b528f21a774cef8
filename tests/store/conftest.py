"""Fixtures for the behavioural store suite, run once per backend.

To add a backend: append its name to ``BACKENDS`` and add a branch to
``make_store``. Nothing in the tests changes. Backend-specific probes
(``count_bodies``) skip their extra checks for a backend that has none.
"""

from __future__ import annotations

import contextlib
import pathlib
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager as ContextManager
from typing import Any

import pytest
from pymongo.errors import AutoReconnect

from pushsvc.store.embedded import EmbeddedStore
from pushsvc.store.inbox import InboxStore
from pushsvc.store.mongo import MongoInbox
from pushsvc.store.mongo_database import MongoDatabase
from tests.ferretdb import ferretdb  # noqa: F401

# mongo-records: the MongoDB store committing each batch by its outcome
# (``pushsvc/store/commit_records.py``).
BACKENDS = ["embedded", "mongo", "mongo-records"]


def make_store(name: str, tmp_path: pathlib.Path, mongo_uri: str = "") -> InboxStore:
    """A fresh, empty store of the named backend, private to one test."""
    if name == "embedded":
        return EmbeddedStore(tmp_path / "data")
    if name in ("mongo", "mongo-records"):
        return MongoInbox(
            MongoDatabase(mongo_uri, f"test_{uuid.uuid4().hex}"),
            commit_records=name == "mongo-records",
        )
    raise ValueError(f"unknown store backend {name!r}")


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> Iterator[InboxStore]:
    uri = request.getfixturevalue("ferretdb").uri if request.param.startswith("mongo") else ""
    s = make_store(request.param, tmp_path, uri)
    try:
        yield s
    finally:
        s.close()


# -- backend-specific probes ----------------------------------------------------


def _sqlite(store: EmbeddedStore) -> sqlite3.Connection:
    return sqlite3.connect(str(store.path), isolation_level=None)


@pytest.fixture
def count_bodies(store: InboxStore) -> Callable[[], int | None]:
    """How many message bodies the backend holds (None if it cannot say)."""

    def count() -> int | None:
        if isinstance(store, EmbeddedStore):
            with contextlib.closing(_sqlite(store)) as db:
                return int(db.execute("SELECT count(*) FROM messages").fetchone()[0])
        return None

    return count


@pytest.fixture
def inject_failure(store: InboxStore) -> Callable[[str], ContextManager[None]]:
    """``with inject_failure(user_id):`` any write of ``user_id``'s inbox fails.

    Embedded: a SQLite trigger aborts the insert. MongoDB: the server is real,
    and the connection to it drops (AutoReconnect) on that user's inbox write.
    """

    @contextlib.contextmanager
    def inject(user_id: str) -> Iterator[None]:
        if isinstance(store, MongoInbox):
            with _mongo_inbox_fails(store, user_id):
                yield
            return
        assert isinstance(store, EmbeddedStore)
        quoted = user_id.replace("'", "''")
        with contextlib.closing(_sqlite(store)) as db:
            db.execute(
                "CREATE TRIGGER fail_inbox BEFORE INSERT ON inbox"
                f" WHEN NEW.user_id = '{quoted}'"
                " BEGIN SELECT RAISE(ABORT, 'disk I/O error (injected)'); END"
            )
            try:
                yield
            finally:
                db.execute("DROP TRIGGER fail_inbox")

    return inject


@contextlib.contextmanager
def _mongo_inbox_fails(store: MongoInbox, user_id: str) -> Iterator[None]:
    inbox = store._inbox

    class FailingInbox:
        def __getattr__(self, name: str) -> Any:
            return getattr(inbox, name)

        def insert_many(self, docs: list[dict[str, Any]], **kwargs: Any) -> Any:
            if any(d.get("user_id") == user_id for d in docs):
                raise AutoReconnect("connection reset (injected)")
            return inbox.insert_many(docs, **kwargs)

    store._inbox = FailingInbox()  # type: ignore[assignment]
    try:
        yield
    finally:
        store._inbox = inbox
