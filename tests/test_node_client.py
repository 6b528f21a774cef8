"""The Node.js client (clients/node): its `npm test` suite against a live node.

Retries are proven against a real store outage instead (no fake server): a
fleet node on a FerretDB of its own, which tests/outage.py stops and starts
again while test/outage/outage.test.js is retrying. `npm test` (test/*.test.js)
does not include that file.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.langtest import live_env, run, suite_env
from tests.nodeproc import NodeProcess
from tests.outage import outage_env, outage_node, run_through_outage

NODE_CLIENT = Path(__file__).resolve().parent.parent / "clients" / "node"
OUTAGE_TEST = "test/outage/outage.test.js"


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: run make tools")
    if not (NODE_CLIENT / "node_modules" / "@grpc" / "grpc-js").is_dir():
        pytest.fail(f"{NODE_CLIENT}/node_modules is missing: run make tools")
    return path


def _summary(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if line.startswith("# ") and "Subtest" not in line]


def test_node_client_suite(node: NodeProcess) -> None:
    npm = _tool("npm")
    env = suite_env(live_env(node))
    try:
        proc = run([npm, "test"], cwd=NODE_CLIENT, env=env, timeout=300, merge_stderr=False)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"npm test did not finish in 300 s:\n{exc.stdout!r}\n{exc.stderr!r}")
    if proc.returncode != 0:
        pytest.fail(
            f"npm test exited {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n"
            f"{proc.stderr}\n--- node log (tail)\n{node.log()[-4000:]}",
            pytrace=False,
        )
    summary = _summary(proc.stdout)
    print("\n".join(summary))
    assert "# fail 0" in summary, proc.stdout
    assert "outage" not in proc.stdout  # the outage test runs only below


def test_node_client_retries_through_a_store_outage(
    node_factory: Callable[..., NodeProcess],
) -> None:
    node_bin = _tool("node")
    with outage_node(node_factory) as (db, node):
        output = run_through_outage(
            [node_bin, "--test", OUTAGE_TEST],
            cwd=NODE_CLIENT,
            env=suite_env(outage_env(node)),
            db=db,
            node=node,
        )
    summary = _summary(output)
    assert "# pass 1" in summary and "# fail 0" in summary, output


def test_node_outage_test_fails_without_an_outage(node: NodeProcess) -> None:
    """Run without PUSHSVC_TEST_OUTAGE=1, the outage test fails; it does not skip."""
    proc = run(
        [_tool("node"), "--test", OUTAGE_TEST],
        cwd=NODE_CLIENT,
        env=suite_env({**outage_env(node), "PUSHSVC_TEST_OUTAGE": ""}),
        timeout=120,
        merge_stderr=False,
    )
    assert proc.returncode != 0, proc.stdout
    assert "PUSHSVC_TEST_OUTAGE=1 is not set" in proc.stdout + proc.stderr, proc.stdout
    assert "# fail 1" in _summary(proc.stdout), proc.stdout
