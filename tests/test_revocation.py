"""The token revocation list: RevokeToken closes a token's connections (4001) on every
node and refuses it at connect (401), until the entry expires."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import grpc
from websockets.sync.client import connect

from pushsvc.auth import mint_token
from pushsvc_client.v1 import push_pb2
from tests.authhookserver import refusal
from tests.ferretdb import ferretdb  # noqa: F401
from tests.nodeproc import JWT_SECRET, NodeProcess, auth
from tests.test_fleet import Fleet, fleet  # noqa: F401
from tests.wsclient import Client


def connect_with(node: NodeProcess, user: str, jti: str | None) -> Client:
    token = mint_token(JWT_SECRET, user, 3600, jti=jti)
    return Client(connect(f"{node.ws_url}?token={token}", open_timeout=15, legacy=True))


def revoke(node: NodeProcess, jti: str, reason: str = "", ahead: float = 3600) -> Any:
    with node.stub() as stub:
        return stub.RevokeToken(
            push_pb2.RevokeTokenRequest(
                jti=jti, expires_at=int(time.time() + ahead), reason=reason
            ),
            metadata=auth(),
            timeout=15,
        )


def test_revoked_tokens_are_closed_refused_and_stay_refused_after_a_restart(
    node_factory: Callable[..., NodeProcess], clients: list[Client]
) -> None:
    node = node_factory()
    phone = connect_with(node, "alice", "jti-phone")
    laptop = connect_with(node, "alice", "jti-laptop")
    clients += [phone, laptop]
    assert revoke(node, "jti-phone", "lost phone").connections_closed == 1
    assert phone.close_code() == (4001, "token revoked: lost phone")
    assert laptop.barrier() == []  # the user's other sessions stay

    token = mint_token(JWT_SECRET, "alice", 3600, jti="jti-phone")
    assert refusal(node, f"token={token}") == (401, "token revoked")
    assert revoke(node, "jti-phone").connections_closed == 0  # again: nothing left to close

    laptop.close()
    assert node.stop() == 0
    node.start()
    assert refusal(node, f"token={token}") == (401, "token revoked")
    clients.append(connect_with(node, "alice", "jti-new"))


def test_bad_revocations_get_a_clear_error(node: NodeProcess) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"jti": "", "expires_at": int(time.time()) + 60}, "jti must be"),
        ({"jti": "x" * 257, "expires_at": int(time.time()) + 60}, "jti must be"),
        ({"jti": "j", "expires_at": int(time.time()) - 1}, "expires_at must be in the future"),
        ({"jti": "j", "expires_at": int(time.time()) + 400 * 86400}, "more than a year"),
        ({"jti": "j", "expires_at": int(time.time()) + 60, "reason": "r" * 101}, "reason is over"),
    ]
    with node.stub() as stub:
        for fields, words in cases:
            try:
                stub.RevokeToken(push_pb2.RevokeTokenRequest(**fields), metadata=auth(), timeout=10)
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT, (fields, exc)
                assert words in (exc.details() or ""), (fields, exc.details())
            else:
                raise AssertionError(f"RevokeToken({fields}) was accepted")


def test_a_revocation_closes_sessions_on_every_node_of_the_fleet(
    fleet: Fleet,  # noqa: F811
    clients: list[Client],
) -> None:
    a, b = fleet(2)
    on_b = connect_with(b, "carol", "jti-carol")
    clients.append(on_b)
    assert revoke(a, "jti-carol", "signed out").connections_closed == 1
    assert on_b.close_code(timeout=10) == (4001, "token revoked: signed out")
    token = mint_token(JWT_SECRET, "carol", 3600, jti="jti-carol")
    for node in (a, b):
        assert refusal(node, f"token={token}") == (401, "token revoked")
    # A node that joins later reads the list when it starts.
    (c,) = fleet(1)
    assert refusal(c, f"token={token}") == (401, "token revoked")
