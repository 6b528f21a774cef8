"""gRPC method handlers rebuilt around a new behaviour, of the same streaming kind.

The interceptor wraps every method's behaviour twice (tolerant decoding and guards in
``grpc_api``, the hand-off to the event loop in ``handoff``) and refuses some calls
with a failing one; each keeps the method's kind and serializers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

_MAKERS = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


def behaviour_of(handler: grpc.RpcMethodHandler) -> Callable[..., Any]:
    """The function a handler calls with (request or request iterator, context)."""
    found = (
        handler.stream_stream or handler.stream_unary or handler.unary_stream or handler.unary_unary
    )
    assert found is not None
    return found


def same_kind(
    like: grpc.RpcMethodHandler | None,
    behaviour: Callable[..., Any],
    parse: Callable[[bytes], Any] | None = None,
    raw: bool = False,
) -> grpc.RpcMethodHandler:
    """A handler of ``like``'s streaming kind calling ``behaviour``, with ``like``'s
    response serializer and ``parse`` (default: ``like``'s deserializer) for requests;
    ``raw``: no serializers (requests stay bytes: nothing to fail decoding). With no
    ``like``: unary."""
    if like is None:
        return grpc.unary_unary_rpc_method_handler(behaviour)
    make = _MAKERS[(bool(like.request_streaming), bool(like.response_streaming))]
    if raw:
        return make(behaviour)
    return make(behaviour, parse or like.request_deserializer, like.response_serializer)
