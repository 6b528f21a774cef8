"""The Go client (clients/go): its own `go test` suite against a live node.

The Go tests read the node's addresses and secrets from PUSHSVC_TEST_* variables;
this wrapper starts a node, sets them, and runs `go generate`, `go vet` and
`go test` in clients/go. The example command is run against the node too.

The retry tests (TestOutage*) run against a real store outage instead: a fleet
node on a FerretDB of its own, which tests/outage.py stops and starts again
while the Go test's pushes are retrying. The plain live run skips them.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.langtest import live_env, run, run_ok, suite_env
from tests.nodeproc import API_KEY, NodeProcess
from tests.outage import outage_env, outage_node, run_through_outage
from tests.wsclient import open_ws

ROOT = Path(__file__).resolve().parent.parent
GO_DIR = ROOT / "clients" / "go"
TOOLS_BIN = ROOT / ".tools" / "bin"
OUTAGE_TESTS = "^TestOutage"  # need a store outage: run by the outage test below only

# A cold module cache and build cache make the first `go vet`/`go test` slow.
pytestmark = pytest.mark.timeout(900)


def _go_env() -> dict[str, str]:
    return suite_env(
        {
            "PATH": os.pathsep.join([str(TOOLS_BIN), os.environ.get("PATH", "")]),
            "PUSHSVC_PYTHON": sys.executable,  # grpc_tools.protoc for go generate
        }
    )


def _run(cmd: list[str], env: dict[str, str], cwd: Path = GO_DIR) -> str:
    return run_ok(cmd, cwd=cwd, env=env)


@pytest.fixture(scope="module")
def go_env() -> dict[str, str]:
    if shutil.which("go") is None:
        pytest.fail("go is not installed: install Go, then run make tools")
    for plugin in ("protoc-gen-go", "protoc-gen-go-grpc"):
        if not (TOOLS_BIN / plugin).exists():
            pytest.fail(f"{TOOLS_BIN / plugin} is missing: run make tools")
    env = _go_env()
    _run(["go", "generate", "./..."], env)
    _run(["go", "vet", "./..."], env)
    return env


def test_go_tests_pass_against_a_live_node(node: NodeProcess, go_env: dict[str, str]) -> None:
    env = {**go_env, **live_env(node)}
    output = _run(["go", "test", "-count=1", "-v", "-skip", OUTAGE_TESTS, "./..."], env)
    assert "--- PASS: TestLivePushArrivesOnWebSocket" in output
    assert "--- PASS: TestUnreachableNodeIsRetriedWithBackoffThenUnavailable" in output
    assert "--- SKIP" not in output
    assert "TestOutage" not in output


def test_go_client_retries_through_a_store_outage(
    node_factory: Callable[..., NodeProcess], go_env: dict[str, str]
) -> None:
    with outage_node(node_factory) as (db, node):
        output = run_through_outage(
            ["go", "test", "-count=1", "-v", "-run", OUTAGE_TESTS, "."],
            cwd=GO_DIR,
            env={**go_env, **outage_env(node)},
            db=db,
            node=node,
        )
    assert "--- PASS: TestOutageRetry" in output
    assert "--- SKIP" not in output and "--- FAIL" not in output


def test_go_outage_test_fails_without_an_outage(node: NodeProcess, go_env: dict[str, str]) -> None:
    """Selected without PUSHSVC_TEST_OUTAGE=1, the outage test fails; it does not skip."""
    env = {**outage_env(node), "PUSHSVC_TEST_OUTAGE": ""}
    proc = run(
        ["go", "test", "-count=1", "-run", OUTAGE_TESTS, "."], cwd=GO_DIR, env={**go_env, **env}
    )
    assert proc.returncode != 0, proc.stdout
    assert "PUSHSVC_TEST_OUTAGE=1 is not set" in proc.stdout, proc.stdout


def test_go_tests_fail_without_a_node(go_env: dict[str, str]) -> None:
    proc = run(
        ["go", "test", "-count=1", "-run", "TestLivePush$|TestLivePushArrivesOnWebSocket", "."],
        cwd=GO_DIR,
        env=go_env,
    )
    assert proc.returncode != 0, proc.stdout
    assert "PUSHSVC_TEST_GRPC_ADDR" in proc.stdout, proc.stdout


def test_go_example_command(node: NodeProcess, go_env: dict[str, str]) -> None:
    env = {**go_env, "PUSHSVC_GRPC_ADDR": node.grpc_addr, "PUSHSVC_API_KEY": API_KEY}
    output = _run(["go", "run", "./cmd/pushsvc-example", "-user", "gopher"], env)
    assert "pushed " in output and "to gopher (seqs [1])" in output
    assert f"node {node.node_id} " in output

    bad = run(["go", "run", "./cmd/pushsvc-example", "-api-key", "wrong"], cwd=GO_DIR, env=env)
    assert bad.returncode == 1, bad.stdout
    assert "Unauthenticated" in bad.stdout and "hint:" in bad.stdout, bad.stdout


def test_readme_example_runs_as_written(
    node: NodeProcess, go_env: dict[str, str], tmp_path: Path
) -> None:
    readme = (GO_DIR / "README.md").read_text()
    match = re.search(r"^## Ten-line example\n\n```go\n(.*?)^```$", readme, re.S | re.M)
    assert match, "no ```go block under '## Ten-line example' in clients/go/README.md"
    program = match.group(1)
    assert '"127.0.0.1:50051"' in program
    hello = tmp_path / "hello"
    hello.mkdir()
    (hello / "main.go").write_text(program.replace("127.0.0.1:50051", node.grpc_addr))
    env = {**go_env, "PUSHSVC_API_KEY": API_KEY}
    with open_ws(node, "alice") as ws:
        for cmd in (
            ["go", "mod", "init", "hello"],
            ["go", "mod", "edit", f"-replace=github.com/pushsvc/pushsvc/clients/go={GO_DIR}"],
            ["go", "mod", "tidy"],
        ):
            _run(cmd, env, cwd=hello)
        output = _run(["go", "run", "."], env, cwd=hello)
        (frame,) = ws.messages(1)
    assert output.strip() == f"pushed {frame['id']} seqs [1]"
    assert frame["data"] == {"hello": "world"}
