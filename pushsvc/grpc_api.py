"""The gRPC servicers: thin translations between protobuf and the node.

Authentication is an interceptor: PushService calls need an API key,
NodeService calls the cluster key (and, with mutual TLS, a client certificate
the cluster listener verified); health and reflection are open so load
balancers and grpcurl work. The interceptor also answers a request that cannot
be decoded with INVALID_ARGUMENT, for every service (grpcio's own answer is
INTERNAL, as if the server had failed).
"""

from __future__ import annotations

import enum
import functools
import hmac
import logging
import secrets
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from pushsvc.auth import ApiKeys
from pushsvc.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PushError,
    RateLimited,
    StoreUnavailable,
    Unauthenticated,
    Unavailable,
)
from pushsvc.handoff import Answer, Loop, Screen, arrivals, on_loop
from pushsvc.messages import (
    Message,
    PushCommand,
    build_push,
    unfold_seqs,
    validate_message_id,
    validate_payload,
    validate_reason,
    validate_topic,
    validate_user_id,
    validate_user_ids,
)
from pushsvc.nativethreads import ThreadPool, allocate_lock
from pushsvc.node import Node, PushOutcome
from pushsvc.owners import OwnerTags
from pushsvc.ratelimit import TokenBucket
from pushsvc.receipt_stream import decode_cursor
from pushsvc.revocations import revocation_from_request
from pushsvc.rpc_handlers import behaviour_of, same_kind
from pushsvc.store.receipt_log import Kind, ReceiptBatch, ReceiptEvent, ReceiptFilter
from pushsvc.store.revocation import Revocation
from pushsvc_client.v1 import node_pb2, node_pb2_grpc, push_pb2, push_pb2_grpc

log = logging.getLogger("pushsvc.grpc")

PUSH_SERVICE = "pushsvc.v1.PushService"
MAX_BATCH = 1000  # pushes in one PushBatch
# Methods charged per message (by the servicer), not per call (by the interceptor).
PER_MESSAGE_LIMITED = frozenset({"PushStream", "PushBatch"})
NODE_SERVICE = "pushsvc.v1.NodeService"
# PushStream: a group that stored messages and took at least _SETTLE_AFTER seconds
# lets the next wait for the requests its answers release, for up to _SETTLE_SHARE
# of that time and at most _SETTLE_MAX seconds.
_SETTLE_AFTER = 0.002
_SETTLE_SHARE = 0.1
_SETTLE_MAX = 0.02
# Online-only pushes answered before their delivery: not while this many
# callbacks wait for the event loop (those calls wait for their turn instead).
AT_ONCE_BACKLOG = 1000

_STATUS: dict[type[PushError], grpc.StatusCode] = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    StoreUnavailable: grpc.StatusCode.UNAVAILABLE,
    RateLimited: grpc.StatusCode.RESOURCE_EXHAUSTED,
    FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
}


def status_of(exc: PushError) -> grpc.StatusCode:
    for cls, code in _STATUS.items():
        if isinstance(exc, cls):
            return code
    return grpc.StatusCode.INTERNAL


_NOT_RUN = PushError("not processed")

# What became of one push of a stream or a batch: its command and outcome, or why
# it failed (a PushError without a subclass answers INTERNAL).
Result = tuple[PushCommand, PushOutcome] | PushError


def _emit(make: Callable[..., Any], request: push_pb2.PushRequest, result: Result) -> Any:
    """The response to ``request`` made with ``make``: the PushResponse constructor,
    or the ``add`` of a batch response's repeated field (which builds it in place).
    Fields at their defaults are left out (each one passed costs a conversion)."""
    if isinstance(result, PushError):
        return make(error=push_pb2.Error(code=status_of(result).value[0], message=str(result)))
    cmd, out = result
    seqs = out.seqs
    if not seqs and not out.duplicate:
        return make(message_id=out.message_id)  # online-only
    requested = request.user_ids
    if len(requested) != len(cmd.user_ids):  # the request named a user twice
        seqs = unfold_seqs(list(requested), cmd.user_ids, seqs)
    if out.duplicate:
        return make(message_id=out.message_id, seqs=seqs, duplicate=True)
    return make(message_id=out.message_id, seqs=seqs)


F = TypeVar("F", bound=Callable[..., Any])


def _domain_errors(method: F) -> F:
    """Turn domain errors into status codes with their human message; anything
    unexpected becomes INTERNAL with a request id the log line also carries."""

    @functools.wraps(method)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return method(self, request, context)
        except PushError as exc:
            code = status_of(exc)
            if not isinstance(exc, StoreUnavailable):  # the store's health logs outages once
                log.info("rpc refused", extra={"rpc": method.__name__, "code": code.name})
            context.abort(code, str(exc))
        except Exception:
            request_id = secrets.token_hex(6)
            log.exception("rpc failed", extra={"rpc": method.__name__, "request": request_id})
            context.abort(
                grpc.StatusCode.INTERNAL, f"internal error (request id {request_id} in the log)"
            )

    return wrapper  # type: ignore[return-value]


_TAGS_KEPT = 256  # owner tags a servicer remembers by the header that named the key


class Limits:
    def __init__(self, max_payload: int, default_ttl: int, max_ttl: int) -> None:
        self.max_payload = max_payload
        self.default_ttl = default_ttl
        self.max_ttl = max_ttl


class PushServicer(push_pb2_grpc.PushServiceServicer):
    def __init__(
        self, node: Node, limits: Limits, callers: CallerLimits, owners: OwnerTags
    ) -> None:
        self._node = node
        self._limits = limits
        self._callers = callers
        self._owners = owners
        self._tags: dict[str, str] = {}  # authorization header -> its key's owner tag

    def _owner(self, context: grpc.ServicerContext) -> str:
        """The owner tag of the caller's API key: what its messages' ids end with."""
        header = bearer_of(context.invocation_metadata()) or ""
        tag = self._tags.get(header)
        if tag is None:
            tag = self._owners.of_key(header.partition(" ")[2].strip())
            if len(self._tags) < _TAGS_KEPT:  # headers the interceptor let through: a few
                self._tags[header] = tag
        return tag

    def _command(self, request: push_pb2.PushRequest, owner: str) -> PushCommand:
        lim = self._limits
        return build_push(
            request.user_ids,  # protobuf's repeated field: a sequence, not copied
            request.payload,
            request.content_type,
            request.ttl_seconds if request.HasField("ttl_seconds") else None,
            request.idempotency_key,
            max_payload=lim.max_payload,
            default_ttl=lim.default_ttl,
            max_ttl=lim.max_ttl,
            owner=owner,
        )

    def _push(self, request: push_pb2.PushRequest, owner: str) -> push_pb2.PushResponse:
        cmd = self._command(request, owner)
        response: push_pb2.PushResponse = _emit(
            push_pb2.PushResponse, request, (cmd, self._node.push(cmd))
        )
        return response

    @_domain_errors
    def Push(
        self, request: push_pb2.PushRequest, context: grpc.ServicerContext
    ) -> push_pb2.PushResponse:
        return self._push(request, self._owner(context))

    def push_at_once(
        self, loop: Loop, request: Any, context: grpc.ServicerContext
    ) -> push_pb2.PushResponse | None:
        """``Push`` on grpcio's thread, before its hand-off to the loop: an
        online-only push on a node alone is answered here, its delivery posted to
        the loop (``Node.prepare_at_once``). None -- ``Push`` answers on the loop --
        for any other push, one that fails (refusals are logged there), and while
        more than ``AT_ONCE_BACKLOG`` callbacks wait for the loop."""
        if not isinstance(request, push_pb2.PushRequest):
            return None  # undecodable: refused on the loop
        if not self._node.answers_at_once(self._ttl(request)):
            return None  # answered on the loop, and validated there only
        try:
            delivery = self._node.prepare_at_once(self._command(request, self._owner(context)))
        except Exception:  # bad input (or a fault): the loop's Push answers and logs it
            return None
        if delivery is None or not loop.try_post(AT_ONCE_BACKLOG, delivery.deliver):
            return None
        return push_pb2.PushResponse(message_id=delivery.message_id)

    def PushStream(
        self, request_iterator: Iterator[push_pb2.PushRequest], context: grpc.ServicerContext
    ) -> Iterator[push_pb2.PushResponse]:
        """Pipelined: a reader takes requests off the stream as they come, and
        every request waiting when the node is free is pushed in one group (one
        durable write for the stored ones); responses go out in request order.

        A producer that keeps a window of requests ahead of its answers sends the
        next ones as the answers arrive; taken at once, the next group would hold
        only the requests that came while the last one was pushed, and the ones
        the answers release would wait for the group after (groups of half the
        window each, twice the round trips). So after a group that stored
        messages and took a while, the next waits until as many requests are
        waiting as were just answered, besides those that came meanwhile -- at
        most ``_SETTLE_SHARE`` of that push's time, and ``_SETTLE_MAX``; never
        after online-only groups, nor when the stream ended."""
        key = caller_key(context.invocation_metadata())
        requests = arrivals(request_iterator)
        expected = 0  # requests the last group's answers release, and those already due
        settle = 0.0  # how long the next group may wait for their successors
        try:
            while True:
                while not len(requests):
                    if requests.over():  # raises what broke the stream
                        return
                    requests.wait()
                if settle and len(requests) < expected:
                    deadline = time.monotonic() + settle
                    while len(requests) < expected and not requests.over():
                        left = deadline - time.monotonic()
                        if left <= 0:
                            break
                        requests.wait(left)  # a bounded wait for requests, not synchronisation
                group = requests.take(MAX_BATCH)
                began = time.monotonic()
                responses = self._answer(group, key, "PushStream")
                took = time.monotonic() - began
                # What came while the group was pushed (released by earlier answers)
                # belongs with what its own answers release.
                expected = min(len(group) + len(requests), MAX_BATCH)
                yield from responses
                settle = 0.0
                if took >= _SETTLE_AFTER and any(self._stored(r) for r in group):
                    settle = min(_SETTLE_MAX, took * _SETTLE_SHARE)
        finally:
            requests.close()

    def _ttl(self, request: push_pb2.PushRequest) -> int:
        """The TTL the request asks for: its own, or the default (not validated)."""
        return request.ttl_seconds if request.HasField("ttl_seconds") else self._limits.default_ttl

    def _stored(self, request: push_pb2.PushRequest) -> bool:
        """Whether the request asks to be stored (a non-zero TTL, or the default's)."""
        return self._ttl(request) > 0

    def _answer(
        self, pushes: Sequence[push_pb2.PushRequest], key: str, rpc: str
    ) -> list[push_pb2.PushResponse]:
        """One response per request, in order (``_results``)."""
        results = self._results(pushes, key, rpc)
        make = push_pb2.PushResponse
        return [_emit(make, push, r) for push, r in zip(pushes, results, strict=True)]

    def _results(self, pushes: Sequence[push_pb2.PushRequest], key: str, rpc: str) -> list[Result]:
        """Push each request (charged one by one against the key's limit), all in one
        group; one result per request, in order, failures as results."""
        results: list[Result] = [_NOT_RUN] * len(pushes)
        accepted: list[tuple[int, PushCommand]] = []
        owner = self._owners.of_key(key)
        allowed = self._callers.take_up_to(key, len(pushes))
        for i, push in enumerate(pushes):
            try:
                if i >= allowed:
                    raise RateLimited("over the API key's rate limit")
                accepted.append((i, self._command(push, owner)))
            except PushError as exc:
                results[i] = exc
        try:
            outcomes = self._node.push_many([cmd for _, cmd in accepted])
        except Exception:
            request_id = secrets.token_hex(6)
            log.exception("rpc failed", extra={"rpc": rpc, "request": request_id})
            failed = PushError(f"internal error (request id {request_id} in the log)")
            for i, _ in accepted:
                results[i] = failed
            return results
        for (i, cmd), out in zip(accepted, outcomes, strict=True):
            results[i] = out if isinstance(out, PushError) else (cmd, out)
        return results

    @_domain_errors
    def PushBatch(
        self, request: push_pb2.PushBatchRequest, context: grpc.ServicerContext
    ) -> push_pb2.PushBatchResponse:
        pushes = request.pushes
        if not 1 <= len(pushes) <= MAX_BATCH:
            raise InvalidArgument(f"pushes has {len(pushes)} entries: send 1 to {MAX_BATCH}")
        key = caller_key(context.invocation_metadata())
        results = self._results(pushes, key, "PushBatch")
        response = push_pb2.PushBatchResponse()
        add = response.responses.add  # filled in place: no response message copied
        for push, result in zip(pushes, results, strict=True):
            _emit(add, push, result)
        return response

    @_domain_errors
    def Publish(
        self, request: push_pb2.PublishRequest, context: grpc.ServicerContext
    ) -> push_pb2.PublishResponse:
        topic = validate_topic(request.topic)
        ctype = validate_payload(request.payload, request.content_type, self._limits.max_payload)
        out = self._node.publish(topic, request.payload, ctype)
        return push_pb2.PublishResponse(
            message_id=out.message_id, local_subscribers=out.local_subscribers
        )

    @_domain_errors
    def GetPresence(
        self, request: push_pb2.GetPresenceRequest, context: grpc.ServicerContext
    ) -> push_pb2.GetPresenceResponse:
        users = validate_user_ids(list(request.user_ids))
        found = {p.user_id: p for p in self._node.presence(users)}
        return push_pb2.GetPresenceResponse(
            presence=[
                push_pb2.UserPresence(
                    user_id=u,
                    online=found[u].online,
                    connections=found[u].connections,
                    node_ids=found[u].node_ids,
                )
                for u in request.user_ids
            ]
        )

    @_domain_errors
    def Disconnect(
        self, request: push_pb2.DisconnectRequest, context: grpc.ServicerContext
    ) -> push_pb2.DisconnectResponse:
        validate_user_id(request.user_id)
        validate_reason(request.reason)
        closed = self._node.disconnect(request.user_id, request.reason)
        return push_pb2.DisconnectResponse(connections_closed=closed)

    @_domain_errors
    def GetMessageStatus(
        self, request: push_pb2.GetMessageStatusRequest, context: grpc.ServicerContext
    ) -> push_pb2.GetMessageStatusResponse:
        statuses = self._node.message_status(validate_message_id(request.message_id))
        return push_pb2.GetMessageStatusResponse(
            recipients=[
                push_pb2.RecipientStatus(
                    user_id=s.user_id, seq=s.seq, delivered=s.delivered, acked=s.acked
                )
                for s in statuses
            ]
        )

    @_domain_errors
    def ListNodes(
        self, request: push_pb2.ListNodesRequest, context: grpc.ServicerContext
    ) -> push_pb2.ListNodesResponse:
        return push_pb2.ListNodesResponse(
            nodes=[
                push_pb2.NodeStatus(
                    node_id=n.node_id,
                    grpc_addr=n.grpc_addr,
                    ws_addr=n.ws_addr,
                    connections=n.connections,
                    started_at=n.started_at,
                )
                for n in self._node.nodes()
            ]
        )

    def StreamReceipts(
        self, request: push_pb2.StreamReceiptsRequest, context: grpc.ServicerContext
    ) -> Iterator[push_pb2.StreamReceiptsResponse]:
        try:
            users = validate_user_ids(list(request.user_ids)) if request.user_ids else ()
            flt = ReceiptFilter(frozenset(users), "" if users else self._owner(context))
            cursor = decode_cursor(request.cursor) if request.cursor else None
            sub = self._node.stream_receipts(flt, cursor)
        except PushError as exc:
            context.abort(status_of(exc), str(exc))
        context.add_callback(sub.cancel)
        try:
            yield push_pb2.StreamReceiptsResponse(cursor=sub.cursor())
            while True:
                events = sub.next()
                if events is None:
                    return  # the caller went away
                yield push_pb2.StreamReceiptsResponse(
                    events=[_receipt_event(e, c) for e, c in events],
                    cursor=events[-1][1] if events else sub.cursor(),
                )
        except PushError as exc:
            context.abort(status_of(exc), str(exc))
        except Exception:
            request_id = secrets.token_hex(6)
            log.exception("rpc failed", extra={"rpc": "StreamReceipts", "request": request_id})
            context.abort(
                grpc.StatusCode.INTERNAL, f"internal error (request id {request_id} in the log)"
            )
        finally:
            self._node.end_stream(sub)

    @_domain_errors
    def RevokeToken(
        self, request: push_pb2.RevokeTokenRequest, context: grpc.ServicerContext
    ) -> push_pb2.RevokeTokenResponse:
        revocation = revocation_from_request(request.jti, request.expires_at, request.reason)
        return push_pb2.RevokeTokenResponse(connections_closed=self._node.revoke(revocation))


_KINDS = {Kind.DELIVERED: push_pb2.RECEIPT_KIND_DELIVERED, Kind.ACKED: push_pb2.RECEIPT_KIND_ACKED}


def _receipt_event(event: ReceiptEvent, cursor: str) -> push_pb2.ReceiptEvent:
    return push_pb2.ReceiptEvent(
        kind=_KINDS[event.kind],
        message_id=event.message_id,
        user_id=event.user_id,
        seq=event.seq,
        recorded_at=event.at,
        node_id=event.source,
        cursor=cursor,
    )


def _receipt_batch(r: node_pb2.ReceiptBatch) -> ReceiptBatch:
    return ReceiptBatch(
        r.source,
        r.prev,
        r.upto,
        tuple(
            ReceiptEvent(
                r.source, e.n, Kind(e.kind), e.message_id, e.user_id, e.seq, e.owner, e.recorded_at
            )
            for e in r.events
            if e.kind in (Kind.DELIVERED, Kind.ACKED)
        ),
    )


class NodeServicer(node_pb2_grpc.NodeServiceServicer):
    def __init__(self, node: Node) -> None:
        self._node = node

    def Deliver(
        self, request: node_pb2.DeliverRequest, context: grpc.ServicerContext
    ) -> node_pb2.DeliverResponse:
        if request.node_id and request.node_id != self._node.node_id:
            context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"this is node {self._node.node_id}, not {request.node_id}",
            )
        counts = []
        for d in request.deliveries:
            kind = d.WhichOneof("kind")
            if kind == "user":
                u = d.user
                msg = Message(u.message_id, u.payload, u.content_type, 0.0, u.expires_at or None)
                counts.append(
                    self._node.deliver_users(msg, [(r.user_id, r.seq) for r in u.recipients])
                )
            elif kind == "topic":
                t = d.topic
                msg = Message(t.message_id, t.payload, t.content_type, 0.0)
                counts.append(self._node.deliver_topic(msg, t.topic))
            elif kind == "disconnect":
                counts.append(
                    self._node.disconnect_local(d.disconnect.user_id, d.disconnect.reason)
                )
            elif kind == "revocation":
                r = d.revocation
                counts.append(
                    self._node.apply_revocation(Revocation(r.jti, r.expires_at, r.reason))
                )
            elif kind == "receipts":
                self._node.receipts_from_peer(_receipt_batch(d.receipts))
                counts.append(0)
            elif kind == "receipt_interest":
                interest = d.receipt_interest
                self._node.peer_wants_receipts(interest.node_id, interest.seconds)
                counts.append(0)
            else:
                counts.append(0)
        return node_pb2.DeliverResponse(connections=counts)


# -- authentication and rate limits ---------------------------------------------------


class CallerLimits:
    """One token bucket per API key; rate 0 means unlimited. Taken from grpcio's
    threads (per call, by the interceptor) and the event loop (per message)."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self._buckets: dict[str, TokenBucket] = {}
        self._lock = allocate_lock()  # native: never held across a switch

    def take(self, key: str) -> bool:
        return self.take_up_to(key, 1) == 1

    def take_up_to(self, key: str, n: int) -> int:
        """``take`` ``n`` times at once: how many of ``n`` messages (the first ones)
        the key's limit lets through now."""
        if self.rate <= 0:
            return n
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is None:
                bucket = self._buckets[key] = TokenBucket(self.rate, self.burst)
            return bucket.take_up_to(n)


def caller_key(metadata: Any) -> str:
    """The API key a call presented (already checked by the interceptor)."""
    return (bearer_of(metadata) or "").partition(" ")[2].strip()


def bearer_of(metadata: Any) -> str | None:
    for key, value in metadata or ():
        if key == "authorization":
            return value if isinstance(value, str) else bytes(value).decode("latin-1")
    return None


class _Undecodable:
    """Stands in for a request whose bytes are not the expected message."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """``deserializer`` that returns ``_Undecodable`` instead of raising (grpcio turns
    a raising deserializer into INTERNAL before any handler runs)."""
    if deserializer is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as exc:
            return _Undecodable(str(exc)[:200] or type(exc).__name__)

    return parse


def _refuse_undecodable(method: str, request: _Undecodable, context: grpc.ServicerContext) -> None:
    log.info("rpc refused", extra={"rpc": method, "code": "INVALID_ARGUMENT", "why": "decode"})
    context.abort(
        grpc.StatusCode.INVALID_ARGUMENT,
        f"the request to {method} is not a valid protobuf message of its type ({request.reason})",
    )


Guard = Callable[[grpc.ServicerContext], None]


def _guarded(handler: grpc.RpcMethodHandler, method: str, guard: Guard | None) -> Any:
    """``handler`` with tolerant decoding (undecodable → INVALID_ARGUMENT) and, when
    given, ``guard(context)`` run before the behaviour (it aborts to refuse).
    Streamed requests are screened as they are read (``_screen``, given to
    ``on_loop``): the behaviour takes them in bursts, as they came."""
    parse = _tolerant(handler.request_deserializer)
    screen = _screen(method)

    def check_one(request: Any, context: grpc.ServicerContext) -> None:
        if guard is not None:
            guard(context)
        screen(request, context)

    inner = behaviour_of(handler)
    if handler.request_streaming:

        def stream_in(requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
            if guard is not None:
                guard(context)
            return inner(requests, context)

        return same_kind(handler, stream_in, parse)

    def unary_in(request: Any, context: grpc.ServicerContext) -> Any:
        check_one(request, context)
        return inner(request, context)

    return same_kind(handler, unary_in, parse)


def _screen(method: str) -> Screen:
    """What refuses an undecodable streamed request of ``method`` (``on_loop``)."""

    def screen(request: Any, context: grpc.ServicerContext) -> None:
        if isinstance(request, _Undecodable):
            _refuse_undecodable(method, request, context)

    return screen


def _peer_certificate_required(context: grpc.ServicerContext) -> None:
    """NodeService under mutual TLS: only calls through the cluster listener, whose
    handshake required and verified a client certificate, carry one."""
    if not context.auth_context().get("x509_pem_cert"):
        context.abort(
            grpc.StatusCode.UNAUTHENTICATED,
            "NodeService needs mutual TLS: call PUSHSVC_CLUSTER_ADDR with a client "
            "certificate issued by PUSHSVC_CLUSTER_CA",
        )


def _abort_handler(
    like: grpc.RpcMethodHandler | None, code: grpc.StatusCode, message: str
) -> grpc.RpcMethodHandler:
    """A handler of the same streaming kind as ``like`` that fails with ``code``."""

    def fail(request: Any, context: grpc.ServicerContext) -> Any:
        context.abort(code, message)

    return same_kind(like, fail, raw=True)  # refused before its request is decoded


class _Rule(enum.Enum):
    """What a call must show before it runs, by its method (``AuthInterceptor``)."""

    OPEN = "open"  # health, reflection
    CLUSTER_KEY = "cluster key"  # NodeService
    API_KEY = "API key"  # PushService, rate-limited per message
    API_KEY_PER_CALL = "API key, rate-limited per call"  # PushService


_RULES_KEPT = 256  # methods whose rule an interceptor remembers


def _rule_of(method: str) -> _Rule:
    parts = method.split("/")
    service = parts[1] if len(parts) == 3 else ""
    if service == NODE_SERVICE:
        return _Rule.CLUSTER_KEY
    if service != PUSH_SERVICE:
        return _Rule.OPEN
    return _Rule.API_KEY if parts[2] in PER_MESSAGE_LIMITED else _Rule.API_KEY_PER_CALL


class AuthInterceptor(grpc.ServerInterceptor):
    """Runs on grpcio's threads: refuses what it must, and hands every other call's
    behaviour to the event loop (``handoff``)."""

    def __init__(
        self,
        api_keys: ApiKeys,
        cluster_key: str | None,
        limits: CallerLimits,
        loop: Loop,
        mutual_tls: bool = False,
        at_once: dict[str, Answer] | None = None,
    ) -> None:
        self._loop = loop
        # method -> what answers its call on grpcio's thread when it can (``on_loop``)
        self._at_once = at_once or {}
        self._api_keys = api_keys
        self._cluster_key = cluster_key.encode() if cluster_key else None
        self._limits = limits
        self._mutual_tls = mutual_tls
        # method -> (the servicer's handler, it wrapped); only methods that exist.
        self._wrapped: dict[str, tuple[Any, grpc.RpcMethodHandler]] = {}
        self._rules: dict[str, _Rule] = {}  # method -> what a call of it must show

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(details)
        refused = self._refusal(details)
        if refused is not None:
            return _abort_handler(handler, *refused)
        if handler is None:
            return None  # an unknown method: UNIMPLEMENTED
        # The servicer's handler of a method is one object for the server's life:
        # wrap it once, not on every call.
        known = self._wrapped.get(details.method)
        if known is not None and known[0] is handler:
            return known[1]
        rpc = details.method.lstrip("/")
        service = rpc.partition("/")[0]
        guard = _peer_certificate_required if self._mutual_tls and service == NODE_SERVICE else None
        first = self._at_once.get(details.method) if guard is None else None
        guarded = on_loop(_guarded(handler, rpc, guard), self._loop, first, _screen(rpc))
        self._wrapped[details.method] = (handler, guarded)
        return guarded

    def _refusal(self, details: grpc.HandlerCallDetails) -> tuple[grpc.StatusCode, str] | None:
        """Why the call is refused before it runs, or None."""
        method = details.method
        rule = self._rules.get(method)
        if rule is None:
            rule = _rule_of(method)
            if len(self._rules) < _RULES_KEPT:  # a caller may name any method: bounded
                self._rules[method] = rule
        if rule is _Rule.OPEN:
            return None  # health, reflection
        header = bearer_of(details.invocation_metadata)
        if rule is _Rule.CLUSTER_KEY:
            given = (header or "").partition(" ")[2].strip().encode()
            if self._cluster_key is None or not hmac.compare_digest(given, self._cluster_key):
                return grpc.StatusCode.UNAUTHENTICATED, "cluster key is not valid"
            return None
        try:
            key = self._api_keys.check(header)
        except Unauthenticated as exc:
            return grpc.StatusCode.UNAUTHENTICATED, str(exc)
        if rule is _Rule.API_KEY_PER_CALL and not self._limits.take(key):
            return (
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"over the rate limit of {self._limits.rate:g} calls/s for this API key",
            )
        return None


def make_server(
    node: Node,
    limits: Limits,
    api_keys: ApiKeys,
    cluster_key: str | None,
    callers: CallerLimits,
    owners: OwnerTags,
    loop: Loop,
    max_workers: int = 256,
    mutual_tls: bool = False,
) -> tuple[grpc.Server, health.HealthServicer]:
    """The gRPC server, its ports not added yet: grpcio's native threads (up to
    ``max_workers`` calls at once), every call's behaviour run on ``loop``.
    ``mutual_tls``: NodeService answers only calls that came with a verified
    client certificate (the cluster listener)."""
    pushes = PushServicer(node, limits, callers, owners)
    at_once: dict[str, Answer] = {
        f"/{PUSH_SERVICE}/Push": functools.partial(pushes.push_at_once, loop)
    }
    server = grpc.server(
        ThreadPool(max_workers),  # type: ignore[arg-type]  # grpcio only submits
        interceptors=[AuthInterceptor(api_keys, cluster_key, callers, loop, mutual_tls, at_once)],
        options=[
            ("grpc.max_receive_message_length", limits.max_payload + 1024 * 1024),
            ("grpc.so_reuseport", 0),
        ],
    )
    push_pb2_grpc.add_PushServiceServicer_to_server(pushes, server)
    node_pb2_grpc.add_NodeServiceServicer_to_server(NodeServicer(node), server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = (
        push_pb2.DESCRIPTOR.services_by_name["PushService"].full_name,
        node_pb2.DESCRIPTOR.services_by_name["NodeService"].full_name,
        health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
        reflection.SERVICE_NAME,
    )
    reflection.enable_server_reflection(names, server)
    return server, health_servicer
