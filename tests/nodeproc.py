"""Real `pushsvc serve` processes for the tests (``bench/nodeproc.py``), on ephemeral ports."""

from __future__ import annotations

from bench.nodeproc import (
    API_KEY,
    CLUSTER_KEY,
    JWT_SECRET,
    NodeProcess,
    PortTaken,
    auth,
    closed_port,
    free_port,
)

__all__ = [
    "API_KEY",
    "CLUSTER_KEY",
    "JWT_SECRET",
    "NodeProcess",
    "PortTaken",
    "auth",
    "closed_port",
    "free_port",
]
