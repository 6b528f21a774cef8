"""The node's garbage-collector policy (pushsvc/collector.py)."""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import weakref
from collections.abc import Iterator
from pathlib import Path

import pytest

from pushsvc.collector import YOUNG_THRESHOLD, release, tune, untune

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def restored_gc() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    untune(thresholds)


@pytest.mark.usefixtures("restored_gc")
def test_start_up_objects_are_frozen_and_the_young_generation_is_larger() -> None:
    _, middle, old = gc.get_threshold()
    tune()
    assert gc.get_freeze_count() > 0
    assert gc.get_threshold() == (YOUNG_THRESHOLD, middle, old)
    assert gc.isenabled()


class _Node:
    other: object = None


def _cycle() -> tuple[_Node, weakref.ref[_Node]]:
    """Two objects referring to each other: one of them, and a weak reference to it."""
    a, b = _Node(), _Node()
    a.other, b.other = b, a
    return a, weakref.ref(a)


@pytest.mark.usefixtures("restored_gc")
def test_cycles_made_after_start_up_are_still_collected() -> None:
    tune()
    a, ref = _cycle()
    del a
    gc.collect()
    assert ref() is None


@pytest.mark.usefixtures("restored_gc")
def test_every_pass_of_an_older_generation_freezes_its_survivors() -> None:
    tune()
    kept = [[i] for i in range(1000)]  # tracked objects that outlive the passes
    frozen = gc.get_freeze_count()
    gc.collect(1)
    assert gc.get_freeze_count() >= frozen + len(kept)
    assert not any(o is kept for o in gc.get_objects())  # frozen: out of every pass


@pytest.mark.usefixtures("restored_gc")
def test_a_cycle_that_became_garbage_after_it_was_frozen_goes_at_the_release() -> None:
    tune()
    a, ref = _cycle()
    gc.collect()  # survives, and is frozen
    del a
    gc.collect()
    assert ref() is not None  # frozen garbage: no pass sees it
    assert release() >= 2
    assert ref() is None
    assert gc.get_freeze_count() > 0  # what survived the release is frozen again


def test_connections_ended_every_way_leave_no_cyclic_garbage_behind() -> None:
    """Freezing a connection's objects is safe only if reference counting frees
    them when it ends: a real node, connections opened, frozen by a full pass, then
    closed by the client, dropped, kicked by the server, ended by a protocol error,
    and refused at the handshake."""
    out = subprocess.run(
        [sys.executable, "-m", "tests.gc_connections", "20"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
        check=False,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    # What a connection holds, seen while they were open (and frozen by the pass).
    assert {"pushsvc.session.Session", "pushsvc.writer.Writer"} <= set(report["held"])
    assert report["frozen"] > 0
    assert report["garbage"] == {}  # nothing of theirs was left to the cycle collector
    assert report["retained"] == {}  # and nothing of theirs is still alive
