"""Python client of the pushsvc gRPC API, for business services and the command line.

    from pushsvc_client import PushClient

    with PushClient.from_env() as push:  # $PUSHSVC_GRPC_ADDR, $PUSHSVC_API_KEY
        resp = push.push(["alice", "bob"], {"hello": 1})
        print(resp.message_id, list(resp.seqs))

Every call carries the API key (``authorization: Bearer <key>``) and a deadline.
Calls that fail with UNAVAILABLE are retried with exponential backoff and full
jitter; a retried ``push`` reuses its idempotency key (one is generated when the
caller gives none), so a retry can never deliver a message twice. Failures raise
``PushClientError`` (a subclass per useful status code).
"""

from __future__ import annotations

import json
import os
import random
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import grpc

from pushsvc_client.env import (
    MissingAPIKeyError,
    api_key_from_env,
    grpc_addr_from_env,
    tls_from_env,
)
from pushsvc_client.v1 import push_pb2, push_pb2_grpc

__all__ = [
    "AlreadyExistsError",
    "DeadlineExceededError",
    "FailedPreconditionError",
    "InvalidArgumentError",
    "MissingAPIKeyError",
    "NotFoundError",
    "PermissionDeniedError",
    "PushClient",
    "PushClientError",
    "ReceiptStream",
    "ResourceExhaustedError",
    "UnauthenticatedError",
    "UnavailableError",
    "UnimplementedError",
    "encode_payload",
]

_T = TypeVar("_T")

# Words in the status details of an UNAVAILABLE raised by the client's own
# channel (no connection at all), as opposed to one the server answered.
_UNREACHABLE_HINTS = (
    "failed to connect",
    "errors resolving",
    "dns resolution failed",
    "connection refused",
    "connections to all backends failing",
    "no route to host",
    "network is unreachable",
    "name or service not known",
)


class PushClientError(Exception):
    """A call failed. ``code`` is the gRPC status code, ``message`` the server's words."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message

    @property
    def code_name(self) -> str:
        """The status code's name, e.g. ``INVALID_ARGUMENT``."""
        return str(self.code.name)


class InvalidArgumentError(PushClientError):
    """The request is malformed; retrying it unchanged fails again."""


class UnauthenticatedError(PushClientError):
    """Missing or wrong API key."""


class PermissionDeniedError(PushClientError):
    """The key is valid but may not do this."""


class NotFoundError(PushClientError):
    """Unknown (or expired) message id."""


class AlreadyExistsError(PushClientError):
    """The thing to create exists already."""


class FailedPreconditionError(PushClientError):
    """The node is not in a state to do this (e.g. draining)."""


class ResourceExhaustedError(PushClientError):
    """Rate limit reached; slow down."""


class UnimplementedError(PushClientError):
    """The node does not know this call (an older version)."""


class DeadlineExceededError(PushClientError):
    """No answer within the timeout. The call may or may not have taken effect."""


class UnavailableError(PushClientError):
    """The node, or its store, cannot be reached; nothing was done."""

    @property
    def unreachable(self) -> bool:
        """True when no connection to the node could be made at all."""
        text = self.message.lower()
        # Only the client's own transport phrases it this way; a node whose store
        # is down may quote a driver's "connection refused" later in its message.
        return text.startswith(_UNREACHABLE_HINTS)


_ERRORS: dict[grpc.StatusCode, type[PushClientError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExistsError,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.UNIMPLEMENTED: UnimplementedError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
}


def _error(exc: grpc.RpcError) -> PushClientError:
    code: grpc.StatusCode | None = None
    details: str | None = None
    if isinstance(exc, grpc.Call):
        code, details = exc.code(), exc.details()
    code = code or grpc.StatusCode.UNKNOWN
    details = details or code.name
    return _ERRORS.get(code, PushClientError)(code, details)


def encode_payload(payload: bytes | bytearray | memoryview | str | Any) -> bytes:
    """bytes as they are, str as UTF-8, anything else (dict, list, number...) as JSON."""
    if isinstance(payload, bytes):
        return payload
    if isinstance(payload, bytearray | memoryview):
        return bytes(payload)
    if isinstance(payload, str):
        return payload.encode("utf-8")
    try:
        return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise TypeError(f"payload is not bytes, str or JSON-serializable: {exc}") from None


def _read_ca(path: str | os.PathLike[str]) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError as exc:
        raise ValueError(f"cannot read the TLS CA file {path}: {exc.strerror}") from None


class ReceiptStream:
    """An open ``StreamReceipts`` call: iterate it for ``push_pb2.ReceiptEvent`` values.

    ``cursor`` is where to resume after the last event returned (or, before any
    event, where the stream started; keep-alive responses move it too): pass it to
    ``PushClient.stream_receipts(cursor=...)`` after a disconnect to get every
    event since, none twice. Iteration raises a ``PushClientError`` when the stream
    ends with an error (``ResourceExhaustedError`` for a consumer that fell too far
    behind, ``UnavailableError`` when the node drains: resume from ``cursor``), and
    stops after ``cancel()``.
    """

    def __init__(self, call: Any) -> None:
        self._call = call
        self._pending: deque[push_pb2.ReceiptEvent] = deque()
        self._cancelled = False
        self.cursor = ""

    def __iter__(self) -> ReceiptStream:
        return self

    def __next__(self) -> push_pb2.ReceiptEvent:
        while not self._pending:
            try:
                response = next(self._call)
            except grpc.RpcError as exc:
                if self._cancelled:
                    raise StopIteration from None
                raise _error(exc) from None
            self._pending.extend(response.events)
            if not response.events:
                self.cursor = response.cursor
        event = self._pending.popleft()
        self.cursor = event.cursor
        return event

    def wait_started(self) -> str:
        """Block until the node answered (its first response); returns the cursor."""
        if not self.cursor and not self._pending:
            try:
                response = next(self._call)
            except grpc.RpcError as exc:
                raise _error(exc) from None
            self._pending.extend(response.events)
            self.cursor = response.cursor
        return self.cursor

    def cancel(self) -> None:
        """End the stream; iteration stops."""
        self._cancelled = True
        self._call.cancel()

    def __enter__(self) -> ReceiptStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.cancel()


def _user_list(user_ids: str | Iterable[str]) -> list[str]:
    return [user_ids] if isinstance(user_ids, str) else list(user_ids)


class PushClient:
    """A connection to one pushsvc node (or a load balancer in front of several).

    ``addr`` is ``host:port``; ``api_key`` is one of the node's API keys (None sends
    no key). ``timeout`` is the deadline of each call in seconds; ``retries`` is how
    many times a call failing with UNAVAILABLE is tried again. Thread-safe.

    TLS: ``tls_ca`` (a PEM file of CA certificates, e.g. a private CA's) verifies the
    node with those; ``tls=True`` alone verifies it with the system's trusted roots.
    ``credentials`` (``grpc.ssl_channel_credentials(...)``) gives full control.
    Plaintext when none is given.
    """

    def __init__(
        self,
        addr: str,
        api_key: str | None,
        *,
        timeout: float = 5.0,
        retries: int = 3,
        backoff: float = 0.2,
        max_backoff: float = 5.0,
        credentials: grpc.ChannelCredentials | None = None,
        tls: bool = False,
        tls_ca: str | os.PathLike[str] | None = None,
    ) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        if retries < 0:
            raise ValueError("retries must be >= 0")
        self.addr = addr
        self.timeout = timeout
        self.retries = retries
        self._backoff = backoff
        self._max_backoff = max_backoff
        self._metadata: tuple[tuple[str, str], ...] = (
            (("authorization", f"Bearer {api_key}"),) if api_key else ()
        )
        # Reconnect quickly, so that a retry after a short backoff really dials again
        # instead of failing at once on a channel still in its reconnect backoff.
        options = [
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 2000),
        ]
        if credentials is None and (tls or tls_ca):
            credentials = grpc.ssl_channel_credentials(_read_ca(tls_ca) if tls_ca else None)
        if credentials is None:
            self._channel = grpc.insecure_channel(addr, options=options)
        else:
            self._channel = grpc.secure_channel(addr, credentials, options=options)
        self._stub = push_pb2_grpc.PushServiceStub(self._channel)

    @classmethod
    def from_env(cls, **options: Any) -> PushClient:
        """A client for ``$PUSHSVC_GRPC_ADDR`` (default 127.0.0.1:50051) with
        ``$PUSHSVC_API_KEY``, else the first key of ``$PUSHSVC_API_KEYS``: the names the
        node and the ``pushsvc`` command read; over TLS with ``$PUSHSVC_TLS_CA`` (the CA
        file to verify the node with) or ``$PUSHSVC_TLS=1`` (the system's roots).
        ``options`` as for the constructor; they win over the environment.

        Raises ``MissingAPIKeyError`` (``NO_API_KEY_MESSAGE``) when there is no key.
        """
        key = api_key_from_env()
        if key is None:
            raise MissingAPIKeyError()
        tls, tls_ca = tls_from_env()
        options.setdefault("tls", tls)
        options.setdefault("tls_ca", tls_ca)
        return cls(grpc_addr_from_env(), key, **options)

    # -- lifecycle ---------------------------------------------------------------

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> PushClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- calls -------------------------------------------------------------------

    @staticmethod
    def build_push_request(
        user_ids: str | Iterable[str],
        payload: bytes | str | Any,
        content_type: str = "application/json",
        ttl_seconds: int | None = None,
        idempotency_key: str | None = None,
    ) -> push_pb2.PushRequest:
        """A PushRequest, e.g. for ``push_stream``. No idempotency key is invented here."""
        request = push_pb2.PushRequest(
            user_ids=_user_list(user_ids),
            payload=encode_payload(payload),
            content_type=content_type,
            idempotency_key=idempotency_key or "",
        )
        if ttl_seconds is not None:
            if ttl_seconds < 0:
                raise ValueError("ttl_seconds must be >= 0 (0 = online-only)")
            request.ttl_seconds = ttl_seconds
        return request

    def push(
        self,
        user_ids: str | Iterable[str],
        payload: bytes | str | Any,
        content_type: str = "application/json",
        ttl_seconds: int | None = None,
        idempotency_key: str | None = None,
    ) -> push_pb2.PushResponse:
        """Send one message to every connection of each user.

        ``ttl_seconds``: None = the node's default, 0 = online-only (never stored).
        Without ``idempotency_key`` a random one is used, so retries stay exactly-once.
        """
        request = self.build_push_request(
            user_ids,
            payload,
            content_type,
            ttl_seconds,
            idempotency_key or f"pushsvc-py-{uuid.uuid4().hex}",
        )
        return self._call(self._stub.Push, request)

    def push_stream(
        self, requests: Iterable[push_pb2.PushRequest], *, timeout: float | None = None
    ) -> Iterator[push_pb2.PushResponse]:
        """Push many messages on one stream; one response per request, in order.

        A request that fails yields a response whose ``error`` is set; the stream
        goes on. The stream is not retried. ``timeout`` bounds the whole stream
        (None: no deadline, for long-lived producers).
        """
        try:
            yield from self._stub.PushStream(
                iter(requests), timeout=timeout, metadata=self._metadata
            )
        except grpc.RpcError as exc:
            raise _error(exc) from None

    def push_batch(self, requests: Iterable[push_pb2.PushRequest]) -> list[push_pb2.PushResponse]:
        """Many pushes in one call (at most 1,000): one response per request, in order;
        a request that failed has ``error`` set and did not fail the others.

        Retried as a whole on UNAVAILABLE only if every request has an idempotency
        key (``build_push_request(..., idempotency_key=...)``): a retry then delivers
        nothing twice. Without keys it is not retried.
        """
        batch = push_pb2.PushBatchRequest(pushes=list(requests))
        keyed = all(r.idempotency_key for r in batch.pushes)
        call = self._call if keyed else self._call_once
        return list(call(self._stub.PushBatch, batch).responses)

    def publish(
        self, topic: str, payload: bytes | str | Any, content_type: str = "application/json"
    ) -> push_pb2.PublishResponse:
        """Send one message to every connection subscribed to ``topic`` (never stored)."""
        request = push_pb2.PublishRequest(
            topic=topic, payload=encode_payload(payload), content_type=content_type
        )
        return self._call(self._stub.Publish, request)

    def presence(self, user_ids: str | Iterable[str]) -> push_pb2.GetPresenceResponse:
        """Per user, in request order: online, connection count, node ids."""
        request = push_pb2.GetPresenceRequest(user_ids=_user_list(user_ids))
        return self._call(self._stub.GetPresence, request)

    def disconnect(self, user_id: str, reason: str = "") -> push_pb2.DisconnectResponse:
        """Close every connection of a user (close code 4000, ``reason`` as close reason)."""
        request = push_pb2.DisconnectRequest(user_id=user_id, reason=reason)
        return self._call(self._stub.Disconnect, request)

    def message_status(self, message_id: str) -> push_pb2.GetMessageStatusResponse:
        """Per recipient of a stored message: seq, delivered, acked."""
        request = push_pb2.GetMessageStatusRequest(message_id=message_id)
        return self._call(self._stub.GetMessageStatus, request)

    def list_nodes(self) -> push_pb2.ListNodesResponse:
        """The live nodes of the fleet."""
        return self._call(self._stub.ListNodes, push_pb2.ListNodesRequest())

    def stream_receipts(
        self, user_ids: str | Iterable[str] = (), *, cursor: str = ""
    ) -> ReceiptStream:
        """Delivered and acked events, from any node of the fleet, as they happen.

        ``user_ids``: the recipients to follow; none = the messages pushed with this
        client's API key. ``cursor``: resume after it (``ReceiptStream.cursor`` of an
        earlier stream); empty = from now on. The stream has no deadline and is not
        retried: on an error, call again with its ``cursor``.
        """
        request = push_pb2.StreamReceiptsRequest(user_ids=_user_list(user_ids), cursor=cursor)
        return ReceiptStream(self._stub.StreamReceipts(request, metadata=self._metadata))

    def revoke_token(
        self, jti: str, expires_at: float, reason: str = ""
    ) -> push_pb2.RevokeTokenResponse:
        """Revoke a token id until ``expires_at`` (unix seconds, the token's ``exp``):
        its connections close with 4001 on every node, and it is refused at connect."""
        request = push_pb2.RevokeTokenRequest(jti=jti, expires_at=int(expires_at), reason=reason)
        return self._call(self._stub.RevokeToken, request)

    def health(self, service: str = "") -> str:
        """grpc.health.v1 status name of ``service`` ("" = the whole server): "SERVING"...

        Needs ``grpcio-health-checking`` (``pip install 'pushsvc-client[health]'``).
        """
        try:
            from grpc_health.v1 import health_pb2, health_pb2_grpc
        except ImportError:
            raise ImportError(
                "PushClient.health() needs grpcio-health-checking: "
                "pip install 'pushsvc-client[health]'"
            ) from None
        request = health_pb2.HealthCheckRequest(service=service)
        response = self._call(health_pb2_grpc.HealthStub(self._channel).Check, request)
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))

    # -- machinery ---------------------------------------------------------------

    def _sleep_before_retry(self, attempt: int) -> None:
        # Exponential backoff with full jitter (attempt 0 = first retry).
        ceiling = min(self._max_backoff, self._backoff * (2**attempt))
        time.sleep(random.uniform(0, ceiling))

    def _call_once(self, method: Callable[..., _T], request: Any) -> _T:
        try:
            return method(request, timeout=self.timeout, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise _error(exc) from None

    def _call(self, method: Callable[..., _T], request: Any) -> _T:
        attempt = 0
        while True:
            try:
                return method(request, timeout=self.timeout, metadata=self._metadata)
            except grpc.RpcError as exc:
                error = _error(exc)
                if not isinstance(error, UnavailableError) or attempt >= self.retries:
                    raise error from None
            self._sleep_before_retry(attempt)
            attempt += 1
