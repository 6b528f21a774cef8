"""The authentication hook: a gRPC ``AuthService`` the node asks at connect.

With ``PUSHSVC_AUTH_HOOK_ADDR`` set, the WebSocket handshake hands the
credential the client presented (a token in ``Authorization: Bearer`` or the
``token`` query parameter, else the configured cookie) to
``AuthService.Authenticate`` instead of verifying a JWT, and the answer says
who the connection belongs to (``protos/pushsvc/v1/auth.proto``).

- A refusal (UNAUTHENTICATED or PERMISSION_DENIED, or an empty user id) is the
  client's fault: HTTP 401.
- No answer within ``timeout``, or any other failure, is the hook's: HTTP 503
  (``HookUnavailable``), so clients try again instead of giving up.
- Answers are cached per credential (a hash of it) for ``cache_ttl`` seconds,
  never beyond the answer's expiry, at most ``cache_size`` of them (least
  recently used out). Concurrent connects with one credential share one call.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import time
from collections import OrderedDict
from dataclasses import dataclass
from http.cookies import CookieError, SimpleCookie

import grpc
from gevent.event import AsyncResult
from prometheus_client import CollectorRegistry, Counter

from pushsvc.auth import Identity
from pushsvc.errors import InvalidArgument, Unauthenticated
from pushsvc.messages import validate_user_id
from pushsvc_client.v1 import auth_pb2, auth_pb2_grpc

log = logging.getLogger("pushsvc.authhook")

HEADER = auth_pb2.CREDENTIAL_SOURCE_HEADER
QUERY = auth_pb2.CREDENTIAL_SOURCE_QUERY
COOKIE = auth_pb2.CREDENTIAL_SOURCE_COOKIE
_REFUSALS = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)
MAX_TOPICS = 1000


class HookUnavailable(Exception):
    """The hook did not give an answer: the connect is refused with 503."""


@dataclass(frozen=True, slots=True)
class Credential:
    value: str
    source: auth_pb2.CredentialSource


def credential_of(
    token: str, from_header: bool, cookie_header: str, cookie: str | None
) -> Credential:
    """What the client presented: its token (header or query), else the named cookie."""
    if token:
        return Credential(token, HEADER if from_header else QUERY)
    if cookie and cookie_header:
        jar = SimpleCookie()
        with contextlib.suppress(CookieError):
            jar.load(cookie_header)
        morsel = jar.get(cookie)
        if morsel is not None and morsel.value:
            return Credential(morsel.value, COOKIE)
    return Credential("", QUERY)


class AnswerCache:
    """Identities by credential hash, each until its deadline (monotonic), LRU-bounded."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._entries: OrderedDict[bytes, tuple[float, Identity]] = OrderedDict()

    def get(self, key: bytes, now: float) -> Identity | None:
        hit = self._entries.get(key)
        if hit is None:
            return None
        if hit[0] <= now:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return hit[1]

    def put(self, key: bytes, identity: Identity, until: float) -> None:
        if self._size <= 0:
            return
        self._entries[key] = (until, identity)
        self._entries.move_to_end(key)
        while len(self._entries) > self._size:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


class AuthHook:
    def __init__(
        self,
        addr: str,
        *,
        timeout: float,
        cache_ttl: float,
        cache_size: int,
        key: str | None,
        node_id: str,
        cookie: str | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.addr = addr
        #: The cookie read as the credential when the client sends no token.
        self.cookie = cookie
        self._timeout = timeout
        self._ttl = cache_ttl
        self._node_id = node_id
        self._metadata = (("authorization", f"Bearer {key}"),) if key else ()
        self._channel = grpc.insecure_channel(addr)
        self._stub = auth_pb2_grpc.AuthServiceStub(self._channel)
        self.cache = AnswerCache(cache_size)
        self._inflight: dict[bytes, AsyncResult] = {}
        self._calls = Counter(
            "pushsvc_auth_hook_calls_total",
            "AuthService.Authenticate calls by result (ok, refused, unavailable)",
            ["result"],
            registry=registry,
        )

    def authenticate(self, credential: Credential, remote_addr: str, origin: str) -> Identity:
        """Who the credential belongs to. Raises ``Unauthenticated`` (401) or
        ``HookUnavailable`` (503)."""
        if not credential.value:
            raise Unauthenticated(
                "missing credential: send Authorization: Bearer <token>, ?token=, or the cookie"
            )
        key = hashlib.sha256(f"{credential.source}:{credential.value}".encode()).digest()
        cached = self.cache.get(key, time.monotonic())
        if cached is not None:
            return cached
        pending = self._inflight.get(key)
        if pending is not None:
            identity: Identity = pending.get()  # the same answer, or the same error
            return identity
        pending = self._inflight[key] = AsyncResult()
        try:
            identity = self._ask(credential, remote_addr, origin)
        except BaseException as exc:  # whatever it is, the waiters get it too
            pending.set_exception(exc)
            raise
        finally:
            del self._inflight[key]
        pending.set(identity)
        lifetime = identity.expires_at - time.time()
        ttl = min(self._ttl, lifetime)
        if ttl > 0:
            self.cache.put(key, identity, time.monotonic() + ttl)
        return identity

    def _ask(self, credential: Credential, remote_addr: str, origin: str) -> Identity:
        request = auth_pb2.AuthenticateRequest(
            credential=credential.value,
            source=credential.source,
            remote_addr=remote_addr,
            origin=origin,
            node_id=self._node_id,
        )
        try:
            answer = self._stub.Authenticate(
                request, timeout=self._timeout, metadata=self._metadata
            )
        except grpc.RpcError as exc:
            code = exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNKNOWN
            details = (exc.details() if isinstance(exc, grpc.Call) else "") or code.name
            if code in _REFUSALS:
                self._calls.labels("refused").inc()
                raise Unauthenticated(
                    f"refused by the authentication service: {details[:200]}"
                ) from None
            self._calls.labels("unavailable").inc()
            why = (
                f"no answer within {self._timeout:g} s"
                if code == grpc.StatusCode.DEADLINE_EXCEEDED
                else f"{code.name}: {details[:200]}"
            )
            log.warning("authentication service failed: %s", why, extra={"hook": self.addr})
            raise HookUnavailable(
                f"the authentication service is unavailable ({why}): try again later"
            ) from None
        return self._identity(answer)

    def _identity(self, answer: auth_pb2.AuthenticateResponse) -> Identity:
        if not answer.user_id:
            self._calls.labels("refused").inc()
            raise Unauthenticated("refused by the authentication service")
        try:
            validate_user_id(answer.user_id)
        except InvalidArgument as exc:
            self._calls.labels("unavailable").inc()
            raise HookUnavailable(
                f"the authentication service answered a bad user id ({exc}): try again later"
            ) from None
        # No expiry of its own: valid for the cache TTL (then asked again).
        expires = float(answer.expires_at) if answer.expires_at else math.inf
        if expires <= time.time():
            self._calls.labels("refused").inc()
            raise Unauthenticated("credential expired (said the authentication service)")
        self._calls.labels("ok").inc()
        return Identity(
            answer.user_id, expires, tuple(answer.topics[:MAX_TOPICS]), jti=answer.jti[:256]
        )

    def close(self) -> None:
        self._channel.close()
