"""The fleet under faults, small form of ``bench/faults.py`` (run in ``make test``).

Three nodes on one FerretDB, subscribers reconnecting with ``since``, stored
pushes all along; the database is paused and resumed, killed and restarted, a
node is killed with SIGKILL and restarted, a node is drained with SIGTERM.
Every push that answered OK must reach every recipient, with nothing twice or
out of order on any connection, and the drained node's clients must be
welcomed elsewhere.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bench.faults import Plan, render, run

pytestmark = pytest.mark.timeout(600)


def test_no_ok_push_is_lost_through_store_and_node_faults(tmp_path: Path) -> None:
    # A light load: FerretDB shares the CI machine's two cores with the nodes and
    # the clients; the point is the faults, not the throughput (bench/faults.py).
    plan = Plan(
        nodes=3,
        connections=60,
        push_rate=5.0,
        warmup=3.0,
        pause_db=6.0,
        gap=3.0,
        settle=180.0,
        welcome_deadline=120.0,
    )
    report = asyncio.run(run(plan, tmp_path))
    summary = render(report)
    assert report.pushes_ok > 20, summary
    assert not report.missing, summary + "\n" + "\n".join(report.diagnosis)
    assert not report.out_of_order, summary + "\n" + "\n".join(report.out_of_order[:10])
    assert report.drained_clients > 0, summary
    assert report.welcomed_share >= 0.95, summary
    assert not report.stuck, report.stuck
