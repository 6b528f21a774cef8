"""The gRPC callers' keys: what the interceptor lets through, call after call.

``ApiKeys.check`` remembers the headers it found valid and ``AuthInterceptor``
the rule of each method it was asked about; whatever order the calls come in,
the answer for a header or a method is the one the first look gave.
"""

from __future__ import annotations

import grpc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pushsvc.auth import ApiKeys
from pushsvc.errors import Unauthenticated
from pushsvc.grpc_api import NODE_SERVICE, PUSH_SERVICE, AuthInterceptor, CallerLimits

keys = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_", min_size=1, max_size=12)


def _spellings(key: str) -> st.SearchStrategy[str]:
    return st.sampled_from([f"Bearer {key}", f"bearer {key}", f"BEARER  {key} ", f"Basic {key}"])


def _valid(header: str, accepted: set[str]) -> bool:
    scheme, _, key = header.partition(" ")
    return scheme.lower() == "bearer" and bool(key) and key.strip() in accepted


@settings(max_examples=200, deadline=None)
@given(
    accepted=st.sets(keys, min_size=1, max_size=3),
    others=st.lists(keys, max_size=3),
    data=st.data(),
)
def test_a_header_gets_the_same_answer_every_time(
    accepted: set[str], others: list[str], data: st.DataObject
) -> None:
    api_keys = ApiKeys(sorted(accepted))
    candidates = sorted(accepted) + others
    headers = data.draw(
        st.lists(
            st.sampled_from(candidates).flatmap(_spellings) | st.text(max_size=20), max_size=30
        )
    )
    for header in headers:
        if _valid(header, accepted):
            assert api_keys.check(header) == header.partition(" ")[2].strip()
        else:
            with pytest.raises(Unauthenticated):
                api_keys.check(header)


def test_headers_found_valid_are_remembered_up_to_a_bound() -> None:
    api_keys = ApiKeys(["k"])
    for pad in range(1000):  # a caller varying the spacing of one valid key
        assert api_keys.check("Bearer " + "k" + " " * pad) == "k"
    assert len(api_keys._accepted) <= 256
    with pytest.raises(Unauthenticated):
        api_keys.check("Bearer x")
    assert api_keys.check("Bearer k") == "k"


class _Details(grpc.HandlerCallDetails):
    def __init__(self, method: str, header: str | None) -> None:
        self.method = method
        self.invocation_metadata = () if header is None else (("authorization", header),)


class _Loop:
    """Never reached: ``_refusal`` decides before any hand-off."""


@pytest.fixture
def interceptor() -> AuthInterceptor:
    return AuthInterceptor(ApiKeys(["good"]), "cluster", CallerLimits(1, 2), _Loop())  # type: ignore[arg-type]


@pytest.mark.parametrize("round_", [1, 2])  # the second round finds every rule remembered
def test_each_method_asks_for_what_it_needs(interceptor: AuthInterceptor, round_: int) -> None:
    unauthenticated = grpc.StatusCode.UNAUTHENTICATED
    for method in ("/grpc.health.v1.Health/Check", "/x", "", "/a/b/c/d"):
        assert interceptor._refusal(_Details(method, None)) is None
    node = f"/{NODE_SERVICE}/Deliver"
    assert interceptor._refusal(_Details(node, "Bearer cluster")) is None
    for header in (None, "Bearer good", "Bearer wrong"):
        refused = interceptor._refusal(_Details(node, header))
        assert refused is not None and refused[0] is unauthenticated
    for rpc in ("Push", "PushStream", "PushBatch", "Publish"):
        refused = interceptor._refusal(_Details(f"/{PUSH_SERVICE}/{rpc}", "Bearer bad"))
        assert refused is not None and refused[0] is unauthenticated
        assert interceptor._refusal(_Details(f"/{PUSH_SERVICE}/{rpc}", None)) is not None


def test_calls_are_rate_limited_per_call_except_the_per_message_ones(
    interceptor: AuthInterceptor,
) -> None:
    # Burst of 2 at 1 call/s: a third unary call at once is over the limit; the
    # streamed and batched calls are limited per message, later, not here.
    push = _Details(f"/{PUSH_SERVICE}/Push", "Bearer good")
    outcomes = [interceptor._refusal(push) for _ in range(3)]
    assert outcomes[:2] == [None, None]
    assert outcomes[2] is not None and outcomes[2][0] is grpc.StatusCode.RESOURCE_EXHAUSTED
    for rpc in ("PushStream", "PushBatch"):
        for _ in range(5):
            assert interceptor._refusal(_Details(f"/{PUSH_SERVICE}/{rpc}", "Bearer good")) is None


def test_the_methods_remembered_are_bounded(interceptor: AuthInterceptor) -> None:
    for i in range(1000):  # a caller naming methods that do not exist
        assert interceptor._refusal(_Details(f"/nope.Service/M{i}", None)) is None
    assert len(interceptor._rules) <= 256
    refused = interceptor._refusal(_Details(f"/{PUSH_SERVICE}/Push", None))
    assert refused is not None and refused[0] is grpc.StatusCode.UNAUTHENTICATED
