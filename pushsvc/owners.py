"""Who pushed a stored message: an owner tag at the end of its id.

``StreamReceipts`` can follow "the messages pushed with my API key". The key is
never stored anywhere; instead every message id a key's pushes get ends with
the key's owner tag: the first 12 hex digits of HMAC-SHA256(secret, key). The
secret is the fleet's cluster key (the same on every node, so every node
derives the same tag), or a secret generated into the data directory of a node
alone. A tag reveals nothing about the key without the secret, and any node
that sees a message id knows who pushed it with no lookup: a delivery recorded
on another node, a replay from the inbox, or an ack resolved to message ids all
carry it.
"""

from __future__ import annotations

import hashlib
import hmac

BASE_ID_LEN = 26  # messages.new_message_id without a tag
TAG_LEN = 12


class OwnerTags:
    """Owner tags of API keys under one secret (cached: keys are few)."""

    def __init__(self, secret: str | bytes) -> None:
        self._secret = secret.encode() if isinstance(secret, str) else secret
        self._cache: dict[str, str] = {}

    def of_key(self, api_key: str) -> str:
        tag = self._cache.get(api_key)
        if tag is None:
            digest = hmac.new(self._secret, api_key.encode(), hashlib.sha256).hexdigest()
            tag = digest[:TAG_LEN]
            if len(self._cache) < 1000:
                self._cache[api_key] = tag
        return tag


def owner_of(message_id: str) -> str:
    """The owner tag a message id ends with; "" for ids without one."""
    if len(message_id) == BASE_ID_LEN + TAG_LEN:
        return message_id[BASE_ID_LEN:]
    return ""
