"""A node's recent figures: samples of its metrics, kept for the last minutes.

The node reads a ``Sample`` every ``SAMPLE_INTERVAL`` seconds (cumulative
counters and current gauges, straight from ``Metrics``) into a ``History`` of
the last ``HISTORY`` samples. Rates are differences between samples, so nothing
on the hot path changes. The admin console draws its charts from the history,
and the node publishes its latest figures in its fleet registration
(``published``), so any node's console shows every node's rates without asking
the other nodes anything.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

from pushsvc.metrics import Metrics

SAMPLE_INTERVAL = 2.0  # seconds between two samples
HISTORY = 300  # samples kept: ten minutes

# What a node publishes in its registration (every value a number).
PUBLISHED = (
    "at",
    "users",
    "pushed",
    "published",
    "frames",
    "acks",
    "push_rate",
    "frame_rate",
    "ack_rate",
    "store_ok",
)


@dataclass(frozen=True, slots=True)
class Sample:
    at: float  # unix time
    connections: int
    users: int
    store_ok: bool
    # cumulative counts since the node started
    pushed: int
    published: int
    frames: int  # message frames
    other_frames: int  # welcome, pong, subscribed, error frames
    acks: int
    store_errors: int


@dataclass(frozen=True, slots=True)
class Rates:
    """Per second, between two samples."""

    push: float = 0.0
    publish: float = 0.0
    frames: float = 0.0
    acks: float = 0.0
    store_errors: float = 0.0

    @staticmethod
    def between(older: Sample, newer: Sample) -> Rates:
        dt = newer.at - older.at
        if dt <= 0:
            return Rates()

        def per_second(a: int, b: int) -> float:
            return max(0, b - a) / dt

        return Rates(
            push=per_second(older.pushed, newer.pushed),
            publish=per_second(older.published, newer.published),
            frames=per_second(older.frames, newer.frames),
            acks=per_second(older.acks, newer.acks),
            store_errors=per_second(older.store_errors, newer.store_errors),
        )


def read_sample(
    metrics: Metrics, *, at: float, connections: int, users: int, store_ok: bool
) -> Sample:
    counters = metrics.counters
    return Sample(
        at=at,
        connections=connections,
        users=users,
        store_ok=store_ok,
        pushed=counters.messages_pushed,
        published=counters.messages_published,
        frames=counters.frames_sent,
        other_frames=counters.other_frames_sent,
        acks=counters.acks,
        store_errors=_count(metrics, "pushsvc_store_errors_total"),
    )


def _count(metrics: Metrics, name: str) -> int:
    value = metrics.registry.get_sample_value(name)
    return int(value or 0)


class History:
    """The last ``size`` samples, oldest first."""

    def __init__(self, size: int = HISTORY) -> None:
        self._samples: deque[Sample] = deque(maxlen=size)

    def add(self, sample: Sample) -> None:
        self._samples.append(sample)

    def __len__(self) -> int:
        return len(self._samples)

    def rates(self, now: Sample | None = None) -> Rates:
        """Over the last interval: from the newest sample to ``now``, or between the
        two newest samples."""
        samples = self._samples
        if now is not None and samples and now.at - samples[-1].at >= SAMPLE_INTERVAL / 2:
            return Rates.between(samples[-1], now)
        if len(samples) >= 2:
            return Rates.between(samples[-2], samples[-1])
        return Rates()

    def series(self) -> list[dict[str, Any]]:
        """Per sample after the first: the gauges and the rates since the one before."""
        out = []
        previous: Sample | None = None
        for s in self._samples:
            if previous is not None:
                r = Rates.between(previous, s)
                out.append(
                    {
                        "at": round(s.at, 3),
                        "connections": s.connections,
                        "users": s.users,
                        "store_ok": s.store_ok,
                        "push_rate": round(r.push, 3),
                        "publish_rate": round(r.publish, 3),
                        "frame_rate": round(r.frames, 3),
                        "ack_rate": round(r.acks, 3),
                    }
                )
            previous = s
        return out


def published(sample: Sample, rates: Rates) -> dict[str, float]:
    """The figures a node publishes in its fleet registration."""
    return {
        "at": sample.at,
        "users": sample.users,
        "pushed": sample.pushed,
        "published": sample.published,
        "frames": sample.frames,
        "acks": sample.acks,
        "push_rate": rates.push,
        "frame_rate": rates.frames,
        "ack_rate": rates.acks,
        "store_ok": 1.0 if sample.store_ok else 0.0,
    }
