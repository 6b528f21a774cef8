"""pushsvc-client: the Python client of the pushsvc gRPC API.

    from pushsvc_client import PushClient

    with PushClient.from_env() as push:  # $PUSHSVC_GRPC_ADDR, $PUSHSVC_API_KEY
        resp = push.push("alice", {"hello": "world"})

The generated messages and stubs are in ``pushsvc_client.v1`` (``push_pb2``,
``push_pb2_grpc``, the ``auth_pb2`` and ``auth_pb2_grpc`` of an authentication hook,
and the node-to-node ``node_pb2``, ``node_pb2_grpc``).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from pushsvc_client.client import (
    AlreadyExistsError,
    DeadlineExceededError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    PushClient,
    PushClientError,
    ReceiptStream,
    ResourceExhaustedError,
    UnauthenticatedError,
    UnavailableError,
    UnimplementedError,
    encode_payload,
)
from pushsvc_client.env import (
    DEFAULT_GRPC_ADDR,
    NO_API_KEY_MESSAGE,
    MissingAPIKeyError,
    api_key_from_env,
    grpc_addr_from_env,
    tls_from_env,
)

try:
    __version__ = version("pushsvc-client")
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "DEFAULT_GRPC_ADDR",
    "NO_API_KEY_MESSAGE",
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
    "__version__",
    "api_key_from_env",
    "encode_payload",
    "grpc_addr_from_env",
    "tls_from_env",
]
