"""Domain errors. Each names what went wrong in words a caller can act on.

The gRPC servicers map them to status codes; nothing here knows about gRPC.
"""

from __future__ import annotations


class PushError(Exception):
    """Base class of every error pushsvc reports to a caller."""


class InvalidArgument(PushError):
    """The request is malformed; retrying it unchanged will fail again."""


class NotFound(PushError):
    """The thing asked about does not exist (or has expired)."""


class Unauthenticated(PushError):
    """Missing or wrong credentials."""


class StoreUnavailable(PushError):
    """The message store cannot be reached; nothing was stored."""


class RateLimited(PushError):
    """The caller is over its rate limit."""


class ConfigError(PushError):
    """A setting is unknown or has a bad value. The message says which and why."""


class FailedPrecondition(PushError):
    """The request cannot be served in the state things are in (e.g. a cursor too old)."""


class Unavailable(PushError):
    """This node cannot serve the call now (draining, a dependency down); try again."""
