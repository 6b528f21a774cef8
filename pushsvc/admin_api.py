"""What the admin console can ask and do: JSON in, JSON out, through the node only.

Each operation takes the decoded JSON body (or query) and returns a JSON-ready
dict; bad input raises ``InvalidArgument`` with a human message, a store that
does not answer ``StoreUnavailable``. Pushes, publishes and disconnects are
validated by the same functions as the gRPC API and go through the same node
calls, so a message sent by hand is a message like any other. HTTP (routes,
the token, status codes) is ``admin_console``'s.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pushsvc.errors import InvalidArgument
from pushsvc.messages import (
    build_push,
    unfold_seqs,
    validate_payload,
    validate_reason,
    validate_topic,
    validate_user_id,
)
from pushsvc.node import Node
from pushsvc.stats import PUBLISHED, SAMPLE_INTERVAL, Rates, Sample
from pushsvc.store.registry import NodeInfo

Json = dict[str, Any]
Readiness = Callable[[], tuple[bool, str]]


@dataclass(frozen=True, slots=True)
class PushLimits:
    """The node's message limits (the same the gRPC API applies)."""

    max_payload: int
    default_ttl: int
    max_ttl: int


class AdminApi:
    def __init__(self, node: Node, limits: PushLimits, readiness: Readiness) -> None:
        self._node = node
        self._limits = limits
        self._readiness = readiness

    # -- what the console shows ---------------------------------------------------------

    def stats(self, query: Mapping[str, list[str]]) -> Json:
        """This node now, and its history of the last minutes (for the charts)."""
        node = self._node
        now = node.sample()
        rates = node.history.rates(now)
        store_ok, store_reason = node.store_health
        ready, ready_reason = self._readiness()
        return {
            "node_id": node.node_id,
            "started_at": node.started_at,
            "now": now.at,
            "ready": {"ok": ready, "reason": ready_reason},
            "store": {"ok": store_ok, "reason": store_reason},
            "connections": now.connections,
            "users": now.users,
            "totals": _totals(now),
            "rates": _rates(rates),
            "interval": SAMPLE_INTERVAL,
            "samples": node.history.series(),
        }

    def nodes(self, query: Mapping[str, list[str]]) -> Json:
        """The live nodes of the fleet with the figures each published (this node's
        own row is read now)."""
        node = self._node
        rows = {n.node_id: n for n in node.nodes()}
        rows[node.node_id] = node.info()
        return {
            "now": time.time(),
            "self": node.node_id,
            "nodes": [_node_row(rows[k]) for k in sorted(rows)],
        }

    def user(self, query: Mapping[str, list[str]]) -> Json:
        """A user's presence in the fleet and position in the inbox."""
        values = query.get("id", [])
        if len(values) != 1:
            raise InvalidArgument("give one user id: /admin/api/user?id=<user id>")
        user_id = validate_user_id(values[0])
        (presence,) = self._node.presence([user_id])
        start = self._node.inbox_positions([user_id])[user_id]
        return {
            "user_id": user_id,
            "online": presence.online,
            "connections": presence.connections,
            "node_ids": list(presence.node_ids),
            "latest_seq": start.latest_seq,
            "acked_seq": start.acked_seq,
            "unacked": max(0, start.latest_seq - start.acked_seq),
        }

    # -- what an operator does by hand ----------------------------------------------------

    def push(self, body: Mapping[str, Any]) -> Json:
        _only(body, "user_ids", "payload", "content_type", "ttl_seconds", "idempotency_key")
        users = _string_list(body, "user_ids")
        payload = _string(body, "payload", required=True).encode("utf-8")
        ttl = body.get("ttl_seconds")
        if ttl is not None and (not isinstance(ttl, int) or isinstance(ttl, bool)):
            raise InvalidArgument("ttl_seconds must be a whole number of seconds, or null")
        lim = self._limits
        cmd = build_push(
            users,
            payload,
            _string(body, "content_type"),
            ttl,
            _string(body, "idempotency_key"),
            max_payload=lim.max_payload,
            default_ttl=lim.default_ttl,
            max_ttl=lim.max_ttl,
        )
        out = self._node.push(cmd)
        return {
            "message_id": out.message_id,
            "seqs": list(unfold_seqs(users, cmd.user_ids, out.seqs)),
            "duplicate": out.duplicate,
            "stored": cmd.ttl_seconds > 0,
            "local_connections": out.local_connections,
        }

    def publish(self, body: Mapping[str, Any]) -> Json:
        _only(body, "topic", "payload", "content_type")
        topic = validate_topic(_string(body, "topic", required=True))
        payload = _string(body, "payload", required=True).encode("utf-8")
        ctype = validate_payload(payload, _string(body, "content_type"), self._limits.max_payload)
        out = self._node.publish(topic, payload, ctype)
        return {"message_id": out.message_id, "local_subscribers": out.local_subscribers}

    def disconnect(self, body: Mapping[str, Any]) -> Json:
        _only(body, "user_id", "reason")
        user_id = validate_user_id(_string(body, "user_id", required=True))
        reason = validate_reason(_string(body, "reason"))
        return {"connections_closed": self._node.disconnect(user_id, reason)}


# -- shapes ---------------------------------------------------------------------------------


def _totals(s: Sample) -> Json:
    return {
        "pushed": s.pushed,
        "published": s.published,
        "frames": s.frames,
        "other_frames": s.other_frames,
        "acks": s.acks,
        "store_errors": s.store_errors,
    }


def _rates(r: Rates) -> Json:
    return {
        "push": round(r.push, 3),
        "publish": round(r.publish, 3),
        "frames": round(r.frames, 3),
        "acks": round(r.acks, 3),
        "store_errors": round(r.store_errors, 3),
    }


def _node_row(n: NodeInfo) -> Json:
    row: Json = {
        "node_id": n.node_id,
        "grpc_addr": n.grpc_addr,
        "ws_addr": n.ws_addr,
        "started_at": n.started_at,
        "expires_at": n.expires_at,
        "connections": n.connections,
    }
    for name in PUBLISHED:  # absent until the node published its first figures
        if name in n.stats:
            value = n.stats[name]
            row[name] = bool(value) if name == "store_ok" else value
    return row


# -- input checks (every message says which field and what is expected) --------------------


def _only(body: Mapping[str, Any], *names: str) -> None:
    unknown = sorted(set(body) - set(names))
    if unknown:
        raise InvalidArgument(
            f"unknown field {unknown[0]!r}: expected {', '.join(names)}"
            if len(unknown) == 1
            else f"unknown fields {', '.join(map(repr, unknown))}: expected {', '.join(names)}"
        )


def _string(body: Mapping[str, Any], name: str, required: bool = False) -> str:
    value = body.get(name)
    if value is None:
        if required:
            raise InvalidArgument(f"{name} is missing")
        return ""
    if not isinstance(value, str):
        raise InvalidArgument(f"{name} must be a string, not {_json_type(value)}")
    return value


def _string_list(body: Mapping[str, Any], name: str) -> list[str]:
    value = body.get(name)
    if value is None:
        raise InvalidArgument(f"{name} is missing: a list of user ids")
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidArgument(f"{name} must be a list of strings")
    return value


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__
