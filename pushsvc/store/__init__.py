"""Message stores: the interface and its implementations."""

from pushsvc.store.base import (
    InboxEntry,
    NodeInfo,
    RecipientStatus,
    Store,
    StoreResult,
)

__all__ = ["InboxEntry", "NodeInfo", "RecipientStatus", "Store", "StoreResult"]
