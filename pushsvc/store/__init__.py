"""Stores: the inbox (every node) and the fleet's registry of nodes and presence.

Implementations: ``embedded.EmbeddedStore`` (SQLite, one node),
``mongo.MongoInbox`` and ``mongo_registry.MongoRegistry`` (the fleet, sharing
one ``mongo_database.MongoDatabase``).
"""

from pushsvc.store.inbox import (
    IDEMPOTENCY_WINDOW,
    InboxEntry,
    InboxPage,
    InboxStore,
    RecipientStatus,
    StoreRequest,
    StoreResult,
    UserStart,
)
from pushsvc.store.registry import NodeInfo, NodeRegistry

__all__ = [
    "IDEMPOTENCY_WINDOW",
    "InboxEntry",
    "InboxPage",
    "InboxStore",
    "NodeInfo",
    "NodeRegistry",
    "RecipientStatus",
    "StoreRequest",
    "StoreResult",
    "UserStart",
]
