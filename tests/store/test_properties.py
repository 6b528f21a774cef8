"""Property: whatever calls ``store_messages`` gets, both stores agree with a
model of the contract -- seqs per user in call and list order with no gap, a
repeated idempotency key answered with the first push's result, a message id
stored twice refused -- and the inboxes read back exactly what was stored."""

from __future__ import annotations

import pathlib
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pushsvc.errors import InvalidArgument, PushError
from pushsvc.messages import Message
from pushsvc.store.embedded import EmbeddedStore
from pushsvc.store.inbox import InboxStore, StoreRequest, StoreResult
from pushsvc.store.mongo import MongoInbox
from pushsvc.store.mongo_database import MongoDatabase
from tests.ferretdb import FerretDB

T0 = 1_700_000_000.0
USERS = ["ann", "ben", "cat", "dan"]

# A request: recipients, an idempotency key (or none), a message id (drawn from
# a small set, so ids repeat).
requests = st.tuples(
    st.lists(st.sampled_from(USERS), min_size=1, max_size=4, unique=True),
    st.sampled_from(["", "", "", "k1", "k2"]),
    st.integers(0, 11),
)
calls = st.lists(st.lists(requests, min_size=1, max_size=5), min_size=1, max_size=6)


@dataclass
class Model:
    seqs: dict[str, list[tuple[int, str]]] = field(default_factory=lambda: {u: [] for u in USERS})
    keys: dict[str, tuple[str, dict[str, int]]] = field(default_factory=dict)
    ids: set[str] = field(default_factory=set)

    def store(self, call: list[StoreRequest]) -> list[tuple[str, str, tuple[int, ...]]]:
        """Expected outcomes: ("ok" | "dup" | "invalid", message id, seqs)."""
        out: list[tuple[str, str, tuple[int, ...]]] = []
        led: dict[str, tuple[str, str, tuple[int, ...], tuple[str, ...]]] = {}
        for r in call:
            key, mid, users = r.idempotency_key, r.message.id, r.user_ids
            if key and key in led:  # follows an earlier request of this call
                kind, first, seqs, first_users = led[key]
                if kind == "invalid":
                    out.append(("invalid", first, ()))
                else:
                    got = dict(zip(first_users, seqs, strict=True))
                    out.append(("dup", first, tuple(got.get(u, 0) for u in users)))
                continue
            if key and key in self.keys:
                first, got = self.keys[key]
                out.append(("dup", first, tuple(got.get(u, 0) for u in users)))
                continue
            if mid in self.ids:
                out.append(("invalid", mid, ()))
            else:
                self.ids.add(mid)
                given = {u: len(self.seqs[u]) + 1 for u in users}
                for u, seq in given.items():
                    self.seqs[u].append((seq, mid))
                out.append(("ok", mid, tuple(given.values())))
                if key:
                    self.keys[key] = (mid, given)
            if key:
                led[key] = (*out[-1], users)
        return out


def outcome(o: StoreResult | PushError) -> tuple[str, str, tuple[int, ...]]:
    if isinstance(o, InvalidArgument):
        return ("invalid", "", ())
    assert isinstance(o, StoreResult), o
    return ("dup" if o.duplicate else "ok", o.message_id, o.seqs)


@pytest.fixture(scope="module")
def mongo_uri() -> Iterator[str]:
    with FerretDB() as server:
        yield server.uri


def fresh(backend: str, mongo_uri: str) -> tuple[InboxStore, tempfile.TemporaryDirectory[str]]:
    tmp = tempfile.TemporaryDirectory(prefix="pushsvc-prop-")
    if backend == "embedded":
        return EmbeddedStore(pathlib.Path(tmp.name)), tmp
    return MongoInbox(
        MongoDatabase(mongo_uri, f"prop_{uuid.uuid4().hex}"),
        commit_records=backend == "mongo-records",
    ), tmp


@pytest.mark.parametrize("backend", ["embedded", "mongo", "mongo-records"])
def test_store_messages_agrees_with_the_model(backend: str, mongo_uri: str) -> None:
    @settings(
        max_examples=40 if backend == "embedded" else 10,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(calls)
    # Found by this test: a key repeated in one call, first used by an earlier call.
    @example([[(["ann", "ben"], "k1", 0)], [(["ann"], "k1", 0), (["ann", "ben"], "k1", 0)]])
    def check(drawn: list[list[tuple[list[str], str, int]]]) -> None:
        store, tmp = fresh(backend, mongo_uri)
        model = Model()
        try:
            for n, call in enumerate(drawn):
                now = T0 + n
                reqs = [
                    StoreRequest(
                        Message(f"m{i}", b"{}", "application/json", T0, T0 + 3600), tuple(u), key
                    )
                    for u, key, i in call
                ]
                expected = model.store(reqs)
                got = [outcome(o) for o in store.store_messages(reqs, now)]
                assert [(k, m if k != "invalid" else "", s) for k, m, s in expected] == got
            for u in USERS:
                page = store.read_inbox(u, 0, 1000, T0 + 100)
                assert page.blocked_at is None and not page.more
                assert [(e.seq, e.message.id) for e in page.entries] == model.seqs[u]
            starts = store.user_starts(USERS)
            assert {u: s.latest_seq for u, s in starts.items()} == {
                u: len(model.seqs[u]) for u in USERS
            }
        finally:
            store.close()
            tmp.cleanup()

    check()
