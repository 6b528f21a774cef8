"""Token buckets for client frames and gRPC callers."""

from __future__ import annotations

import time


class TokenBucket:
    """``rate`` tokens per second, up to ``burst``; ``take`` answers whether one was left."""

    __slots__ = ("_last", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._last = time.monotonic()

    def take(self, cost: float = 1.0) -> bool:
        tokens = self._refilled()
        if tokens >= cost:
            self._tokens = tokens - cost
            return True
        return False

    def take_up_to(self, n: int) -> int:
        """How many of ``n`` tokens were left (all taken): ``take`` called ``n``
        times at one instant, counting the Trues."""
        tokens = self._refilled()
        got = min(n, int(tokens))
        self._tokens = tokens - got
        return got

    def _refilled(self) -> float:
        """The tokens now (what accrued since the last take added, up to ``burst``)."""
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        return self._tokens
