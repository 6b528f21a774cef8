"""Token buckets: a batch charged at once gets what one-by-one charging would."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pushsvc import ratelimit
from pushsvc.grpc_api import CallerLimits


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@given(
    rate=st.floats(0.5, 1e6),
    burst=st.integers(1, 5000),
    steps=st.lists(st.tuples(st.floats(0, 2), st.integers(0, 3000)), max_size=12),
)
def test_take_up_to_is_take_repeated(
    rate: float, burst: int, steps: list[tuple[float, int]]
) -> None:
    clock = Clock()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ratelimit.time, "monotonic", clock)
        one_by_one = ratelimit.TokenBucket(rate, burst)
        at_once = ratelimit.TokenBucket(rate, burst)
        for pause, n in steps:
            clock.now += pause
            expected = sum(one_by_one.take() for _ in range(n))
            assert at_once.take_up_to(n) == expected


def test_a_batch_over_the_limit_lets_its_first_messages_through() -> None:
    limits = CallerLimits(rate=1.0, burst=10)
    assert limits.take_up_to("key", 25) == 10
    assert limits.take_up_to("key", 5) == 0  # nothing left until it refills
    assert limits.take_up_to("other", 3) == 3  # per key
    assert CallerLimits(rate=0, burst=0).take_up_to("key", 1000) == 1000  # unlimited
