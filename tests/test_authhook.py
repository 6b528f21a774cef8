"""The authentication hook: a real AuthService (in this process) decides who connects."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator

import grpc
import pytest
from websockets.sync.client import connect

from pushsvc.auth import Identity
from pushsvc.authhook import AnswerCache
from pushsvc_client.v1 import auth_pb2, push_pb2
from tests.authhookserver import Hook, hook_server, refusal
from tests.nodeproc import NodeProcess, auth
from tests.wsclient import Client

HOOK_KEY = "node-to-hook-key"


def ws(node: NodeProcess, query: str = "", headers: dict[str, str] | None = None) -> Client:
    url = node.ws_url + (f"?{query}" if query else "")
    return Client(
        connect(url, open_timeout=15, additional_headers=headers, proxy=None, legacy=True)
    )


@pytest.fixture
def hooked(
    node_factory: Callable[..., NodeProcess],
) -> Iterator[tuple[Hook, grpc.Server, NodeProcess]]:
    with hook_server() as (hook, server, addr):
        node = node_factory(
            env={
                "PUSHSVC_AUTH_HOOK_ADDR": addr,
                "PUSHSVC_AUTH_HOOK_TIMEOUT": "1",
                "PUSHSVC_AUTH_HOOK_COOKIE": "sid",
                "PUSHSVC_AUTH_HOOK_KEY": HOOK_KEY,
            }
        )
        yield hook, server, node


def test_the_hook_decides_who_connects_and_its_answers_are_cached(
    hooked: tuple[Hook, grpc.Server, NodeProcess], clients: list[Client]
) -> None:
    hook, _, node = hooked
    alice = ws(node, "token=tok-alice")
    clients.append(alice)
    assert alice.welcome["user"] == "alice"
    (call,) = hook.calls
    assert (call.credential, call.source) == ("tok-alice", auth_pb2.CREDENTIAL_SOURCE_QUERY)
    assert call.remote_addr.startswith("127.0.0.1") and call.node_id == node.node_id
    assert hook.metadata[0]["authorization"] == f"Bearer {HOOK_KEY}"

    again = ws(node, "token=tok-alice")  # the cached answer: no second call
    clients.append(again)
    assert again.welcome["user"] == "alice" and hook.count("tok-alice") == 1

    # The topics the hook allowed.
    again.send({"type": "subscribe", "topic": "news-eu"})
    assert again.recv() == {"type": "subscribed", "topic": "news-eu"}
    again.send({"type": "subscribe", "topic": "sport"})
    assert again.recv()["code"] == "forbidden"

    # The other places a credential can be: the Authorization header, the cookie.
    bob = ws(node, headers={"Authorization": "Bearer tok-bob"})
    by_cookie = ws(node, headers={"Cookie": "theme=dark; sid=tok-bob"})
    clients += [bob, by_cookie]
    assert bob.welcome["user"] == by_cookie.welcome["user"] == "bob"
    sources = [c.source for c in hook.calls if c.credential == "tok-bob"]
    assert sources == [auth_pb2.CREDENTIAL_SOURCE_HEADER, auth_pb2.CREDENTIAL_SOURCE_COOKIE]

    # A hook that says no: 401 with its words. No credential: 401 without asking.
    status, message = refusal(node, "token=tok-mallory")
    assert (status, message) == (401, "refused by the authentication service: unknown session")
    calls = len(hook.calls)
    status, message = refusal(node)
    assert status == 401 and "missing credential" in message
    assert len(hook.calls) == calls


def test_a_hook_down_or_slow_answers_503_not_401(
    hooked: tuple[Hook, grpc.Server, NodeProcess], clients: list[Client]
) -> None:
    hook, server, node = hooked
    alice = ws(node, "token=tok-alice")  # cached from here on
    clients.append(alice)

    started = time.monotonic()
    status, message = refusal(node, "token=hang-1")
    assert status == 503 and "no answer within 1 s" in message, message
    assert time.monotonic() - started < 10  # the deadline, not the hook, ended it

    status, message = refusal(node, "token=boom")
    assert status == 503 and "INTERNAL: session database is down" in message, message

    server.stop(0)  # the hook goes away
    status, message = refusal(node, "token=tok-bob")
    assert status == 503 and "authentication service is unavailable" in message, message
    cached = ws(node, "token=tok-alice")  # a cached answer still lets its owner in
    clients.append(cached)
    assert cached.welcome["user"] == "alice"
    assert hook.count("tok-alice") == 1


def test_a_hook_identity_can_be_revoked_by_its_jti(
    hooked: tuple[Hook, grpc.Server, NodeProcess],
) -> None:
    _, _, node = hooked
    alice = ws(node, "token=tok-alice")
    with node.stub() as stub:
        resp = stub.RevokeToken(
            push_pb2.RevokeTokenRequest(jti="jti-alice", expires_at=int(time.time()) + 600),
            metadata=auth(),
            timeout=10,
        )
    assert resp.connections_closed == 1
    assert alice.close_code() == (4001, "token revoked")
    assert refusal(node, "token=tok-alice") == (401, "token revoked")  # cached, yet refused


def test_the_answer_cache_is_bounded_and_forgets_expired_answers() -> None:
    cache = AnswerCache(2)
    alice, bob, carol = (Identity(u, math.inf) for u in ("alice", "bob", "carol"))
    cache.put(b"a", alice, until=100.0)
    cache.put(b"b", bob, until=100.0)
    assert cache.get(b"a", now=0.0) == alice  # now the most recently used
    cache.put(b"c", carol, until=50.0)  # over the bound: the least recently used goes
    assert (cache.get(b"b", 0.0), len(cache)) == (None, 2)
    assert cache.get(b"c", now=49.0) == carol
    assert cache.get(b"c", now=50.0) is None  # expired: dropped
    assert (cache.get(b"a", 60.0), len(cache)) == (alice, 1)
