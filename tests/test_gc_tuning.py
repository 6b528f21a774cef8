"""The node's garbage-collector settings (server.tune_gc)."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from pushsvc.server import GC_YOUNG_THRESHOLD, tune_gc


@pytest.fixture
def restored_gc() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


@pytest.mark.usefixtures("restored_gc")
def test_start_up_objects_are_frozen_and_the_young_generation_is_larger() -> None:
    _, middle, old = gc.get_threshold()
    tune_gc()
    assert gc.get_freeze_count() > 0
    assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, middle, old)
    assert gc.isenabled()


@pytest.mark.usefixtures("restored_gc")
def test_cycles_made_after_start_up_are_still_collected() -> None:
    tune_gc()

    class Node:
        other: object = None

    a, b = Node(), Node()
    a.other, b.other = b, a
    ref = weakref.ref(a)
    del a, b
    gc.collect()
    assert ref() is None
