"""The fleet as the node sees it: membership, presence and forwarding.

``Fleet`` is the protocol; ``LocalFleet`` is the null object of a node alone on
the embedded store (no peers: membership is itself, presence is its own hub,
forwarding goes nowhere). ``cluster.ClusterFleet`` is the real thing over the
MongoDB registry and ``NodeService.Deliver``. The node never asks which one it
has.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from pushsvc.hub import Hub
from pushsvc.messages import Message
from pushsvc.store.receipt_log import ReceiptBatch
from pushsvc.store.registry import NodeInfo
from pushsvc.store.revocation import Revocation

#: (user, seq) pairs; seq 0 for an online-only message.
Recipients = list[tuple[str, int]]


class Fleet(Protocol):
    @property
    def registered(self) -> bool:
        """The node is known to its peers (always, alone)."""

    @property
    def alone(self) -> bool:
        """No other node can hold a recipient: nothing is ever forwarded."""

    def start(self) -> None:
        """Register and keep the registration alive; write presence as it changes."""

    def stop(self) -> None:
        """Deregister (so peers stop routing here) and close peer channels."""

    def arrived(self, user_ids: Sequence[str]) -> None:
        """Write presence of users who just connected here, before their replay:
        a push stored after this returns is routed here. Raises StoreUnavailable."""

    def changed(self, user_id: str) -> None:
        """A user's connection count here changed (written in batches)."""

    def forward_users(self, batch: Sequence[tuple[Message, Recipients]]) -> None:
        """Hand each message to the other nodes holding its recipients (one routing
        for the batch); returns once they answered or the forward deadline passed."""

    def forward_topic(self, message: Message, topic: str) -> None:
        """Hand a topic message to every other node (does not wait)."""

    def forward_disconnect(self, user_id: str, reason: str) -> int:
        """Close the user's connections on other nodes; how many were closed."""

    def forward_revocation(self, revocation: Revocation) -> int:
        """Hand a revocation to every other node; how many connections they closed."""

    def ask_for_receipts(self, seconds: float) -> None:
        """Ask every other node to send its receipt batches here for ``seconds``."""

    def send_receipts_to(self, node_id: str, seconds: float) -> None:
        """A peer asked for this node's receipt batches for ``seconds``."""

    def forward_receipts(self, batch: ReceiptBatch) -> None:
        """Hand this node's committed receipt batch to the peers that asked (no wait)."""

    def presence(self, user_ids: Sequence[str]) -> dict[str, dict[str, int]]:
        """{user: {node: connections}} for users with connections somewhere."""

    def nodes(self) -> list[NodeInfo]:
        """The live nodes, sorted by id."""

    def sweep(self, now: float) -> int:
        """Remove expired registrations and orphaned presence."""

    def close(self) -> None:
        """Release the registry's connections (after ``stop``)."""


class LocalFleet:
    """A node alone: the fleet of one."""

    registered = True
    alone = True

    def __init__(self, hub: Hub, info: Callable[[], NodeInfo]) -> None:
        self._hub = hub
        self._info = info

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def arrived(self, user_ids: Sequence[str]) -> None:
        pass

    def changed(self, user_id: str) -> None:
        pass

    def forward_users(self, batch: Sequence[tuple[Message, Recipients]]) -> None:
        pass

    def forward_topic(self, message: Message, topic: str) -> None:
        pass

    def forward_disconnect(self, user_id: str, reason: str) -> int:
        return 0

    def forward_revocation(self, revocation: Revocation) -> int:
        return 0

    def ask_for_receipts(self, seconds: float) -> None:
        pass

    def send_receipts_to(self, node_id: str, seconds: float) -> None:
        pass

    def forward_receipts(self, batch: ReceiptBatch) -> None:
        pass

    def presence(self, user_ids: Sequence[str]) -> dict[str, dict[str, int]]:
        node_id = self._info().node_id
        held = {u: self._hub.connections_of(u) for u in user_ids}
        return {u: {node_id: n} for u, n in held.items() if n}

    def nodes(self) -> list[NodeInfo]:
        return [self._info()]

    def sweep(self, now: float) -> int:
        return 0

    def close(self) -> None:
        pass
