"""How a node uses CPython's cyclic garbage collector.

A node keeps about 25 tracked objects per connection for the connection's life
(its greenlet, socket and watchers, session, writer, frame reader, rate
limiter, and the lists, tuples and bound methods they hold). A full pass of
the collector visits every tracked object in the process: 80 to 100 ms at
10,000 connections, during which nothing else runs. CPython starts one each
time the objects that survived two passes have grown by a quarter, which is
after every storm of connects -- a node restart's clients arriving elsewhere,
while that node serves its traffic -- and finds nothing to free: reference
counting frees a connection's objects as it closes.

So:

- start-up's objects (modules, classes, settings, the wiring) are frozen out
  of every pass (``gc.freeze``);
- each pass of the middle or the oldest generation ends by freezing what
  survived it (objects that lived through two passes or more): a full pass
  visits only what became long-lived since the last of those, so a storm of
  connects costs no pass the size of the node;
- the youngest generation holds ten times CPython's default before it is
  collected, which makes the older passes ten times rarer too.

Freezing is safe for objects reference counting frees: they leave the frozen
set as they go. A connection's are such objects whichever way it ends (the
tests open and end connections every way and look for cyclic garbage). What
could still become cyclic garbage after it was frozen is given back to the
collector once an hour (``release``): one full pass at a time the node
chooses, then frozen again. Young cycles are collected as before.
"""

from __future__ import annotations

import gc
from typing import Any

# Tracked objects allocated (net) between two collections of the youngest
# generation; CPython's default is 700.
YOUNG_THRESHOLD = 7000
# Seconds between the full passes over everything (``release``).
RELEASE_INTERVAL = 3600.0


def _freeze_survivors(phase: str, info: dict[str, Any]) -> None:
    # Right after a pass of generation 1 or 2 its survivors are in the oldest
    # generation and the younger ones are empty: freezing now takes nothing young.
    if phase == "stop" and info.get("generation", 0) >= 1:
        gc.freeze()


def tune() -> None:
    """Apply the policy of the module notes to this process."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
    if _freeze_survivors not in gc.callbacks:
        gc.callbacks.append(_freeze_survivors)


def untune(thresholds: tuple[int, int, int]) -> None:
    """Undo ``tune`` (for tests): no freezing after passes, nothing frozen."""
    if _freeze_survivors in gc.callbacks:
        gc.callbacks.remove(_freeze_survivors)
    gc.unfreeze()
    gc.set_threshold(*thresholds)


def release() -> int:
    """One full pass over every object, the frozen ones included; what survives
    is frozen again. Returns how many unreachable objects were found."""
    gc.unfreeze()
    return gc.collect()
