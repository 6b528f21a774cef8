"""How many sockets the WebSocket listener holds: per node, and per source address.

Every socket counts from its accept to its close, whether it is still in its
handshake or carries a WebSocket connection, so neither open connections nor
slow handshakes can take the node past its file descriptors. A socket over a
budget is answered at once, before its request is read: 503 with Retry-After
when the node is full (a load balancer tries another node), 429 with
Retry-After when its address holds too many. An IPv6 client counts by its /64
prefix, what one host usually gets; an IPv4 one by its address.
"""

from __future__ import annotations

import ipaddress
import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class OverBudget:
    status: int
    message: str
    retry_after: int


def source_key(ip: str) -> str:
    """What a client address counts as: the address (IPv4) or its /64 (IPv6)."""
    if ":" not in ip:
        # IPv4 as accept() gives it, dotted decimal, is its own key; any other text
        # without a colon is not an address, which counts as itself too.
        return ip
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return ip
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        return str(ipaddress.IPv6Network((addr, 64), strict=False))
    return str(addr)


class ConnectionBudget:
    """``max_total`` sockets in all; ``max_per_source`` from one source (0 = no cap)."""

    __slots__ = ("_by_source", "max_per_source", "max_total", "total")

    def __init__(self, max_total: int, max_per_source: int) -> None:
        self.max_total = max_total
        self.max_per_source = max_per_source
        self.total = 0
        self._by_source: dict[str, int] = {}

    def admit(self, ip: str) -> OverBudget | None:
        """Count a new socket from ``ip``; an ``OverBudget`` answer if it is one too many
        (then nothing is counted and ``release`` must not be called)."""
        if self.total >= self.max_total:
            return OverBudget(
                503,
                f"this node holds its maximum of {self.max_total} connections: "
                "retry later or connect to another node",
                _retry_after(),
            )
        key = source_key(ip)
        held = self._by_source.get(key, 0)
        if self.max_per_source and held >= self.max_per_source:
            return OverBudget(
                429,
                f"your address holds {held} connections to this node, its maximum: "
                "close some before opening more",
                _retry_after(),
            )
        self._by_source[key] = held + 1
        self.total += 1
        return None

    def release(self, ip: str) -> None:
        key = source_key(ip)
        held = self._by_source.get(key, 0)
        if held <= 1:
            self._by_source.pop(key, None)
        else:
            self._by_source[key] = held - 1
        self.total = max(0, self.total - 1)

    def held_by(self, ip: str) -> int:
        return self._by_source.get(source_key(ip), 0)


def _retry_after() -> int:
    """Seconds, spread so refused clients do not all come back at once."""
    return random.randint(1, 5)
