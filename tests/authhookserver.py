"""A real AuthService for the tests: a small gRPC server in the test process."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from pushsvc_client.v1 import auth_pb2, auth_pb2_grpc
from tests.nodeproc import NodeProcess


class Hook(auth_pb2_grpc.AuthServiceServicer):
    """Knows a few sessions. Credentials starting with ``hang`` get no answer until
    ``release`` is set; ``boom`` fails with INTERNAL; unknown ones are refused."""

    def __init__(self) -> None:
        self.sessions: dict[str, tuple[str, list[str], str]] = {
            "tok-alice": ("alice", ["news*"], "jti-alice"),
            "tok-bob": ("bob", [], ""),
        }
        self.calls: list[auth_pb2.AuthenticateRequest] = []
        self.metadata: list[dict[str, str]] = []
        self.release = threading.Event()
        self._lock = threading.Lock()

    def Authenticate(
        self, request: auth_pb2.AuthenticateRequest, context: grpc.ServicerContext
    ) -> auth_pb2.AuthenticateResponse:
        with self._lock:
            self.calls.append(request)
            self.metadata.append({k: str(v) for k, v in context.invocation_metadata()})
        if request.credential.startswith("hang"):
            self.release.wait(60)
        if request.credential == "boom":
            context.abort(grpc.StatusCode.INTERNAL, "session database is down")
        known = self.sessions.get(request.credential)
        if known is None:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "unknown session")
        user, topics, jti = known
        return auth_pb2.AuthenticateResponse(
            user_id=user, topics=topics, expires_at=int(time.time()) + 3600, jti=jti
        )

    def count(self, credential: str) -> int:
        with self._lock:
            return sum(1 for c in self.calls if c.credential == credential)


@contextlib.contextmanager
def hook_server() -> Iterator[tuple[Hook, grpc.Server, str]]:
    """A running hook on 127.0.0.1:<free port>: (servicer, server, address)."""
    hook = Hook()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    auth_pb2_grpc.add_AuthServiceServicer_to_server(hook, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield hook, server, f"127.0.0.1:{port}"
    finally:
        hook.release.set()
        server.stop(0)


def refusal(
    node: NodeProcess, query: str = "", headers: dict[str, str] | None = None
) -> tuple[int, str]:
    """Status and message of a handshake the node must refuse."""
    url = node.ws_url + (f"?{query}" if query else "")
    with pytest.raises(InvalidStatus) as info:
        connect(url, open_timeout=15, additional_headers=headers, proxy=None, legacy=True).close()
    response = info.value.response
    body: dict[str, Any] = json.loads((response.body or b"{}").decode())
    return response.status_code, str(body.get("message", ""))
