"""What only the embedded (SQLite) store promises."""

from __future__ import annotations

import contextlib
import pathlib
import sqlite3
import subprocess
import sys
import textwrap

import gevent
import pytest

from pushsvc.errors import ConfigError, StoreUnavailable
from pushsvc.messages import Message
from pushsvc.store.embedded import EmbeddedStore
from pushsvc.store.inbox import StoreRequest, StoreResult

T0 = 1_700_000_000.0


def msg(mid: str, payload: bytes = b'{"n":1}') -> Message:
    return Message(mid, payload, "application/json", T0, T0 + 3600)


def test_unwritable_data_dir_is_a_config_error(tmp_path: pathlib.Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("not a directory")
    target = afile / "data"
    with pytest.raises(ConfigError) as info:
        EmbeddedStore(target)
    text = str(info.value)
    assert str(target) in text
    assert "Not a directory" in text
    assert "\n" not in text


def test_data_dir_is_created(tmp_path: pathlib.Path) -> None:
    store = EmbeddedStore(tmp_path / "a" / "b")
    try:
        assert store.path == tmp_path / "a" / "b" / "pushsvc.db"
        assert store.path.is_file()
    finally:
        store.close()


def test_data_survives_close_and_reopen(tmp_path: pathlib.Path) -> None:
    store = EmbeddedStore(tmp_path)
    first = store.store_message(msg("m1", b'{"keep":1}'), ["alice", "bob"], "k-1", T0)
    store.store_message(msg("m2"), ["alice"], "", T0)
    store.ack("alice", 1)
    store.mark_delivered([("m1", "bob", None)])
    store.close()

    store = EmbeddedStore(tmp_path)
    try:
        assert [(e.seq, e.message.id) for e in store.read_inbox("alice", 0, 10, T0).entries] == [
            (1, "m1"),
            (2, "m2"),
        ]
        assert store.read_inbox("bob", 0, 10, T0).entries[0].message == msg("m1", b'{"keep":1}')
        assert store.latest_seq("alice") == 2
        assert store.acked_seq("alice") == 1
        assert {s.user_id: s.delivered for s in store.message_status("m1", T0)} == {
            "alice": False,
            "bob": True,
        }
        dup = store.store_message(msg("m3"), ["alice", "bob"], "k-1", T0 + 1)
        assert dup.duplicate and dup.message_id == first.message_id and dup.seqs == (1, 1)
        assert store.store_message(msg("m4"), ["alice"], "", T0).seqs == (3,)
    finally:
        store.close()


def test_wal_mode_and_full_sync(tmp_path: pathlib.Path) -> None:
    store = EmbeddedStore(tmp_path)
    try:
        with contextlib.closing(sqlite3.connect(str(store.path))) as db:
            assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert (tmp_path / "pushsvc.db-wal").exists()
        assert store._call(lambda c: c.execute("PRAGMA synchronous").fetchone()[0]) == 2  # FULL
    finally:
        store.close()


def test_closed_store_raises_store_unavailable(tmp_path: pathlib.Path) -> None:
    store = EmbeddedStore(tmp_path)
    store.close()
    store.close()  # idempotent
    with pytest.raises(StoreUnavailable, match="closed"):
        store.probe()
    with pytest.raises(StoreUnavailable):
        store.store_message(msg("m1"), ["alice"], "", T0)


def test_database_errors_become_store_unavailable_and_the_store_recovers(
    tmp_path: pathlib.Path,
) -> None:
    store = EmbeddedStore(tmp_path)
    try:
        with contextlib.closing(sqlite3.connect(str(store.path), isolation_level=None)) as db:
            db.execute(
                "CREATE TRIGGER boom BEFORE INSERT ON inbox"
                " BEGIN SELECT RAISE(ABORT, 'disk I/O error'); END"
            )
            with pytest.raises(StoreUnavailable, match=r"pushsvc\.db.*disk I/O error"):
                store.store_message(msg("m1"), ["alice"], "", T0)
            db.execute("DROP TRIGGER boom")
        store.probe()
        assert store.store_message(msg("m1"), ["alice"], "", T0).seqs == (1,)
    finally:
        store.close()


def test_database_calls_do_not_block_the_event_loop(tmp_path: pathlib.Path) -> None:
    store = EmbeddedStore(tmp_path)
    ticks = 0
    running = True

    def ticker() -> None:
        nonlocal ticks
        while running:
            ticks += 1
            gevent.sleep(0)

    users = [f"u{i}" for i in range(1000)]
    try:
        tick = gevent.spawn(ticker)
        gevent.sleep(0)
        before = ticks
        store.store_message(msg("m1"), users, "", T0)
        during = ticks - before
        running = False
        tick.join()
        assert during > 0, "the store ran on the event loop's thread"
    finally:
        store.close()


def test_works_under_monkey_patching(tmp_path: pathlib.Path) -> None:
    script = textwrap.dedent(
        """
        from gevent import monkey
        monkey.patch_all()
        import sys
        import gevent
        from pushsvc.messages import Message
        from pushsvc.store.embedded import EmbeddedStore

        store = EmbeddedStore(sys.argv[1])
        def push(i):
            m = Message(f"m{i}", b"{}", "application/json", 0.0, 100.0)
            return store.store_message(m, ["alice", f"u{i}"], "", 1.0).seqs[0]
        jobs = [gevent.spawn(push, i) for i in range(20)]
        gevent.joinall(jobs, raise_error=True)
        assert sorted(j.value for j in jobs) == list(range(1, 21)), [j.value for j in jobs]
        assert [e.seq for e in store.read_inbox("alice", 0, 100, 1.0).entries] == list(range(1, 21))
        store.close()
        print("ok")
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_version_2_database_is_migrated_and_keeps_its_messages(tmp_path: pathlib.Path) -> None:
    store = EmbeddedStore(tmp_path)
    store.store_message(msg("m1"), ["alice"], "", T0)
    store.close()
    with contextlib.closing(sqlite3.connect(str(tmp_path / "pushsvc.db"))) as db:
        # What version 2 had besides: the fleet's tables.
        db.execute("DROP TABLE probe")
        db.execute("CREATE TABLE nodes (node_id TEXT PRIMARY KEY, expires_at REAL)")
        db.execute("CREATE TABLE presence (user_id TEXT, node_id TEXT, connections INTEGER)")
        db.execute("PRAGMA user_version = 2")
        db.commit()

    store = EmbeddedStore(tmp_path)
    try:
        assert [e.message.id for e in store.read_inbox("alice", 0, 10, T0).entries] == ["m1"]
        store.probe()
    finally:
        store.close()
    with contextlib.closing(sqlite3.connect(str(tmp_path / "pushsvc.db"))) as db:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert db.execute("PRAGMA user_version").fetchone()[0] == 3
    assert not tables & {"nodes", "presence"}
    assert {"messages", "inbox", "counters", "acks", "idempotency", "probe"} <= tables


# -- group commit -------------------------------------------------------------------


def test_concurrent_pushes_share_transactions(tmp_path: pathlib.Path) -> None:
    store = EmbeddedStore(tmp_path)
    try:
        store.probe()
        before = store.round_trips
        jobs = [
            gevent.spawn(store.store_message, msg(f"m{i}"), ["alice", f"u{i}"], "", T0)
            for i in range(50)
        ]
        gevent.joinall(jobs, raise_error=True)
        assert sorted(j.value.seqs[0] for j in jobs) == list(range(1, 51))
        # One hand-off and one fsync per batch: the first push, then the rest.
        assert store.round_trips - before <= 5
    finally:
        store.close()


def test_a_request_that_fails_does_not_fail_its_batch(tmp_path: pathlib.Path) -> None:
    store = EmbeddedStore(tmp_path)
    try:
        with contextlib.closing(sqlite3.connect(str(store.path), isolation_level=None)) as db:
            db.execute(
                "CREATE TRIGGER no_zed BEFORE INSERT ON inbox WHEN NEW.user_id = 'zed'"
                " BEGIN SELECT RAISE(ABORT, 'zed is not welcome (injected)'); END"
            )
            outcomes = store.store_messages(
                [
                    StoreRequest(msg("m1"), ("alice",)),
                    StoreRequest(msg("m2"), ("bob", "zed"), "k-zed"),
                    StoreRequest(msg("m3"), ("alice", "bob")),
                ],
                T0,
            )
            db.execute("DROP TRIGGER no_zed")
        assert [o.seqs for o in outcomes if isinstance(o, StoreResult)] == [(1,), (2, 1)]
        assert isinstance(outcomes[1], StoreUnavailable)
        assert "zed is not welcome" in str(outcomes[1])
        assert [e.message.id for e in store.read_inbox("bob", 0, 10, T0).entries] == ["m3"]
        assert store.read_inbox("zed", 0, 10, T0).entries == ()
        # the failed request's key was not kept
        retry = store.store_message(msg("m2"), ["bob", "zed"], "k-zed", T0)
        assert not retry.duplicate and retry.seqs == (2, 1)
    finally:
        store.close()


def test_marking_receipts_searches_the_index_not_the_whole_inbox(
    tmp_path: pathlib.Path,
) -> None:
    store = EmbeddedStore(tmp_path)
    users = tuple(f"user-{i}" for i in range(1000))
    store.store_messages(
        [StoreRequest(msg(f"m{i}"), users) for i in range(5)], T0
    )  # 5,000 inbox entries
    steps = [0]

    def count(conn: sqlite3.Connection) -> None:
        def step() -> int:
            steps[0] += 1
            return 0

        conn.set_progress_handler(step, 10)

    store._call(count)
    store.mark_delivered([("m1", "user-7", T0 + 60), ("m3", "user-500", None)])
    store._call(lambda conn: conn.set_progress_handler(None, 0))
    # A scan visits every entry: thousands of virtual machine steps per hundred
    # rows. Two index searches take a few hundred steps in all.
    assert steps[0] * 10 < 5000, steps[0]
    status = {(s.user_id, s.delivered) for s in store.message_status("m1", T0)}
    assert ("user-7", True) in status and ("user-8", False) in status
    store.close()
