"""The Node.js client (clients/node): its `npm test` suite against a live node."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.nodeproc import API_KEY, JWT_SECRET, NodeProcess

NODE_CLIENT = Path(__file__).resolve().parent.parent / "clients" / "node"


def test_node_client_suite(node: NodeProcess) -> None:
    npm = shutil.which("npm")
    if npm is None:
        pytest.fail("npm is not installed: run make tools")
    if not (NODE_CLIENT / "node_modules" / "@grpc" / "grpc-js").is_dir():
        pytest.fail(f"{NODE_CLIENT}/node_modules is missing: run make tools")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PUSHSVC_")}
    env.update(
        PUSHSVC_TEST_GRPC_ADDR=node.grpc_addr,
        PUSHSVC_TEST_WS_URL=node.ws_url,
        PUSHSVC_TEST_API_KEY=API_KEY,
        PUSHSVC_TEST_JWT_SECRET=JWT_SECRET,
    )
    try:
        proc = subprocess.run(
            [npm, "test"],
            cwd=NODE_CLIENT,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=300,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"npm test did not finish in 300 s:\n{exc.stdout!r}\n{exc.stderr!r}")
    if proc.returncode != 0:
        pytest.fail(
            f"npm test exited {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n"
            f"{proc.stderr}\n--- node log (tail)\n{node.log()[-4000:]}",
            pytrace=False,
        )
    summary = [
        line for line in proc.stdout.splitlines() if line.startswith("# ") and "Subtest" not in line
    ]
    print("\n".join(summary))
    assert "# fail 0" in summary, proc.stdout
