"""The fleet's registry: node registrations and presence (DESIGN §3, §5).

Only a fleet has one (``MongoRegistry``); a node on the embedded store is alone
and answers membership and presence from its own hub (``fleet.LocalFleet``).

Time-to-live: a registration is valid while ``expires_at`` is in the future; a
presence record counts only while its node's registration does, so a crashed
node's users are routed nowhere once its registration expires.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """A node's registration; valid while ``expires_at`` is in the future."""

    node_id: str
    grpc_addr: str
    ws_addr: str
    started_at: float
    expires_at: float
    connections: int = 0
    # What the node publishes about itself (``stats.published``: users, rates...);
    # numbers only, opaque to the registry.
    stats: Mapping[str, float] = field(default_factory=dict)


class NodeRegistry(ABC):
    @abstractmethod
    def register_node(self, node: NodeInfo) -> None:
        """Upsert the registration and purge presence left by an earlier run of this id."""

    @abstractmethod
    def refresh_node(
        self,
        node_id: str,
        expires_at: float,
        connections: int,
        stats: Mapping[str, float] | None = None,
    ) -> None:
        """Extend the registration (re-creates it if it was swept); ``stats``, when
        given, replaces the figures the node published."""

    @abstractmethod
    def deregister_node(self, node_id: str) -> None:
        """Remove the registration and the node's presence records."""

    @abstractmethod
    def live_nodes(self, now: float) -> list[NodeInfo]:
        """Registrations that have not expired, sorted by node id."""

    @abstractmethod
    def set_presence(self, node_id: str, counts: Mapping[str, int]) -> None:
        """Record how many connections of each user the node holds; 0 removes the
        (user, node) record. Users not named are left as they are."""

    def arrive(self, node_id: str, counts: Mapping[str, int]) -> None:
        """``set_presence`` for users who just connected to the node: most have no
        record there yet, which a store may write faster than an update."""
        self.set_presence(node_id, counts)

    @abstractmethod
    def presence(self, user_ids: Sequence[str], now: float) -> dict[str, dict[str, int]]:
        """For each user with presence on a live (unexpired) node: {node_id: connections}.
        Users without any are absent from the result."""

    @abstractmethod
    def held_by(self, user_ids: Sequence[str]) -> dict[str, dict[str, int]]:
        """Every presence record of the users, whether its node is live or not:
        {user: {node_id: connections}}. For a caller that knows which nodes are live
        (the routing of pushes, from its list of nodes): one read instead of two."""

    @abstractmethod
    def sweep(self, now: float) -> int:
        """Remove expired registrations and the presence of nodes that are gone."""

    @abstractmethod
    def close(self) -> None:
        """Release connections."""

    @property
    def round_trips(self) -> int:
        """Commands sent to the database so far: ``pushsvc_store_round_trips_total``."""
        return 0
