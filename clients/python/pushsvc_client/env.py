"""The environment a client reads: the names the node and the ``pushsvc`` command read."""

from __future__ import annotations

import os
from collections.abc import Mapping

DEFAULT_GRPC_ADDR = "127.0.0.1:50051"

# What every pushsvc client (Go, Node.js, Java, Python) says when no key is set.
NO_API_KEY_MESSAGE = (
    "pushsvc: no API key: set PUSHSVC_API_KEY, or PUSHSVC_API_KEYS as on the node "
    "(its first key is used)"
)


class MissingAPIKeyError(ValueError):
    """Neither ``PUSHSVC_API_KEY`` nor ``PUSHSVC_API_KEYS`` holds a key."""

    def __init__(self, message: str = NO_API_KEY_MESSAGE) -> None:
        super().__init__(message)


def grpc_addr_from_env(env: Mapping[str, str] | None = None) -> str:
    """``$PUSHSVC_GRPC_ADDR``, or ``DEFAULT_GRPC_ADDR`` when it is unset or blank."""
    env = os.environ if env is None else env
    return env.get("PUSHSVC_GRPC_ADDR", "").strip() or DEFAULT_GRPC_ADDR


def api_key_from_env(env: Mapping[str, str] | None = None) -> str | None:
    """``$PUSHSVC_API_KEY``, else the first key of ``$PUSHSVC_API_KEYS``, else None."""
    env = os.environ if env is None else env
    own = env.get("PUSHSVC_API_KEY", "").strip()
    if own:
        return own
    keys = [k.strip() for k in env.get("PUSHSVC_API_KEYS", "").split(",")]
    return next((k for k in keys if k), None)


_TRUE = ("1", "true", "yes", "on")


def tls_from_env(env: Mapping[str, str] | None = None) -> tuple[bool, str | None]:
    """(TLS or not, CA file): ``$PUSHSVC_TLS_CA`` names a PEM file of the CA
    certificates to verify the node with (and means TLS); else ``$PUSHSVC_TLS`` set
    to ``1``/``true`` means TLS verified with the system's trusted roots."""
    env = os.environ if env is None else env
    ca = env.get("PUSHSVC_TLS_CA", "").strip()
    if ca:
        return True, ca
    return env.get("PUSHSVC_TLS", "").strip().lower() in _TRUE, None
