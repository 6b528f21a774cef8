"""The fleet's registry in MongoDB: node registrations and presence.

Collections (every query has an index):

- ``nodes``: ``{_id: node id, grpc_addr, ws_addr, started_at, exp, expires_at,
  connections}``; TTL-indexed on ``expires_at`` where the server has TTL indexes.
- ``presence``: ``{_id: '["user","node"]', user_id, node_id, connections}``,
  one document per (user, node) while the node holds a connection of the user.
  Valid only while its node's registration is; ``sweep`` removes the presence
  of nodes that are gone (a TTL index cannot, as presence has no expiry).
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Mapping, Sequence

from pymongo import DeleteOne, UpdateOne
from pymongo.collection import Collection
from pymongo.errors import BulkWriteError, ConnectionFailure

from pushsvc.store.mongo_database import (
    Doc,
    MongoDatabase,
    bson_date,
    guarded,
    only_duplicate_keys,
    retry_duplicate,
    short,
)
from pushsvc.store.registry import NodeInfo, NodeRegistry

log = logging.getLogger(__name__)

COLLECTIONS = ("nodes", "presence")


def _node_doc(node: NodeInfo) -> Doc:
    return {
        "grpc_addr": node.grpc_addr,
        "ws_addr": node.ws_addr,
        "started_at": node.started_at,
        "exp": node.expires_at,
        "expires_at": bson_date(node.expires_at),
        "connections": node.connections,
        "stats": dict(node.stats),
    }


def _node_info(d: Doc) -> NodeInfo:
    return NodeInfo(
        node_id=d["_id"],
        grpc_addr=d["grpc_addr"],
        ws_addr=d["ws_addr"],
        started_at=d["started_at"],
        expires_at=d["exp"],
        connections=int(d.get("connections", 0)),
        stats=_numbers(d.get("stats")),
    )


def _numbers(raw: object) -> dict[str, float]:
    """A registration's published figures: numbers only (it may be another version's)."""
    if not isinstance(raw, Mapping):
        return {}
    return {
        str(k): float(v)
        for k, v in raw.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }


def _presence_id(user_id: str, node_id: str) -> str:
    return json.dumps([user_id, node_id], ensure_ascii=False)


class MongoRegistry(NodeRegistry):
    """Registrations and presence of the fleet's nodes: ``MongoRegistry(database)``."""

    def __init__(self, database: MongoDatabase) -> None:
        self.database = database
        self._nodes: Collection[Doc] = database.collection("nodes")
        self._presence: Collection[Doc] = database.collection("presence")
        #: True once expired registrations are removed by a TTL index (MongoDB).
        self.ttl_indexes = False
        self._ready = False
        # Last registration per node id, so refresh_node can re-create a
        # registration that was swept while the node was stalled.
        self._registrations: dict[str, NodeInfo] = {}
        self._closed = False
        database.attach()
        try:
            self._setup()
        except ConnectionFailure as exc:
            # Not fatal: the first call that reaches the server finishes setup.
            log.warning("node registry unreachable at start-up: %s", short(exc))

    @property
    def round_trips(self) -> int:
        """Commands this registry has sent to the database."""
        return self.database.commands_sent(COLLECTIONS)

    def _ensure_ready(self) -> None:
        if not self._ready:
            self._setup()

    def _setup(self) -> None:
        self.database.detect()
        self.database.index(self._presence, [("user_id", 1)])
        self.database.index(self._presence, [("node_id", 1)])
        self.database.index(self._nodes, [("exp", 1)])
        self.ttl_indexes = self.database.expiry_index(self._nodes)
        self._ready = True

    @guarded
    def register_node(self, node: NodeInfo) -> None:
        retry_duplicate(
            lambda: self._nodes.replace_one({"_id": node.node_id}, _node_doc(node), upsert=True)
        )
        self._presence.delete_many({"node_id": node.node_id})
        self._registrations[node.node_id] = node

    @guarded
    def refresh_node(
        self,
        node_id: str,
        expires_at: float,
        connections: int,
        stats: Mapping[str, float] | None = None,
    ) -> None:
        known = self._registrations.get(node_id)
        fresh: Doc = {
            "exp": expires_at,
            "expires_at": bson_date(expires_at),
            "connections": connections,
        }
        if stats is not None:
            fresh["stats"] = dict(stats)
        update: Doc = {
            "$set": fresh,
            # Swept (or TTL-expired) while we were stalled: re-create it.
            "$setOnInsert": {
                "grpc_addr": known.grpc_addr if known else "",
                "ws_addr": known.ws_addr if known else "",
                "started_at": known.started_at if known else 0.0,
            },
        }
        retry_duplicate(lambda: self._nodes.update_one({"_id": node_id}, update, upsert=True))

    @guarded
    def deregister_node(self, node_id: str) -> None:
        self._presence.delete_many({"node_id": node_id})
        self._nodes.delete_one({"_id": node_id})
        self._registrations.pop(node_id, None)

    @guarded
    def live_nodes(self, now: float) -> list[NodeInfo]:
        return [_node_info(d) for d in self._nodes.find({"exp": {"$gt": now}}, sort=[("_id", 1)])]

    @guarded
    def set_presence(self, node_id: str, counts: Mapping[str, int]) -> None:
        """A count of 0 (or less) removes the user's presence on the node."""
        gone = [u for u, c in counts.items() if c <= 0]
        for leaving in self.database.batches(gone):
            # By _id, one document each: the one filter FerretDB does not scan for.
            self._presence.bulk_write(
                [DeleteOne({"_id": _presence_id(u, node_id)}) for u in leaving], ordered=False
            )
        held = [
            UpdateOne(
                self._presence_filter(u, node_id),
                {"$set": {"user_id": u, "node_id": node_id, "connections": int(c)}},
                upsert=True,
            )
            for u, c in counts.items()
            if c > 0
        ]
        for ops in self.database.update_batches(held):
            retry_duplicate(functools.partial(self._presence.bulk_write, ops, ordered=False))

    def _presence_filter(self, user_id: str, node_id: str) -> Doc:
        """One presence document. On MongoDB the filter names user_id too (presence
        can be sharded on it); FerretDB scans the collection for any filter but a
        lone _id (measured: 100 ms an upsert at 2,000 documents, against 6 ms for
        50 inserts)."""
        if self.database.ferretdb:
            return {"_id": _presence_id(user_id, node_id)}
        return {"_id": _presence_id(user_id, node_id), "user_id": user_id}

    @guarded
    def arrive(self, node_id: str, counts: Mapping[str, int]) -> None:
        """Users who just connected here: inserted in one command (most have no
        presence here yet); those that had one are updated."""
        docs = [
            {"_id": _presence_id(u, node_id), "user_id": u, "node_id": node_id, "connections": c}
            for u, c in counts.items()
            if c > 0
        ]
        there: dict[str, int] = {}
        for part in self.database.batches(docs):
            try:
                self._presence.insert_many(list(part), ordered=False)
            except BulkWriteError as exc:
                if not only_duplicate_keys(exc):
                    raise
                for error in exc.details.get("writeErrors", []):
                    doc = part[error["index"]]
                    there[doc["user_id"]] = doc["connections"]
        if there:
            self.set_presence(node_id, there)

    @guarded
    def held_by(self, user_ids: Sequence[str]) -> dict[str, dict[str, int]]:
        return self._held_by(user_ids)

    def _held_by(self, user_ids: Sequence[str]) -> dict[str, dict[str, int]]:
        held: dict[str, dict[str, int]] = {}
        if not user_ids:
            return held
        users = list(dict.fromkeys(user_ids))
        for d in self._presence.find(
            {"user_id": {"$in": users}},
            {"user_id": 1, "node_id": 1, "connections": 1},
        ):
            held.setdefault(d["user_id"], {})[d["node_id"]] = int(d["connections"])
        return held

    @guarded
    def presence(self, user_ids: Sequence[str], now: float) -> dict[str, dict[str, int]]:
        held = self._held_by(user_ids)
        if not held:
            return {}
        node_ids = sorted({n for nodes in held.values() for n in nodes})
        live = {
            d["_id"]
            for d in self._nodes.find({"_id": {"$in": node_ids}, "exp": {"$gt": now}}, {"_id": 1})
        }
        out: dict[str, dict[str, int]] = {}
        for u in dict.fromkeys(user_ids):
            nodes = {n: c for n, c in sorted(held.get(u, {}).items()) if n in live}
            if nodes:
                out[u] = nodes
        return out

    @guarded
    def sweep(self, now: float) -> int:
        removed = 0
        # Presence on nodes that expired, deregistered, or were removed by TTL.
        with_presence = self._presence.distinct("node_id")
        if with_presence:
            live = {
                d["_id"]
                for d in self._nodes.find(
                    {"_id": {"$in": with_presence}, "exp": {"$gt": now}}, {"_id": 1}
                )
            }
            gone = [n for n in with_presence if n not in live]
            if gone:
                removed += self._presence.delete_many({"node_id": {"$in": gone}}).deleted_count
        removed += self._nodes.delete_many({"exp": {"$lte": now}}).deleted_count
        return removed

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.database.detach()
