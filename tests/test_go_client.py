"""The Go client (clients/go): its own `go test` suite against a live node.

The Go tests read the node's addresses and secrets from PUSHSVC_TEST_* variables;
this wrapper starts a node, sets them, and runs `go vet` and `go test` in
clients/go. The example command is run against the node too.

The module is also checked the way a user gets it: the committed stubs must be
what `go generate` makes now; a copy of the committed files alone must vet and
build; and the README's example is built in a scratch module outside the
repository, with a `replace` pointing at clients/go.

The retry tests (TestOutage*) run against a real store outage instead: a fleet
node on a FerretDB of its own, which tests/outage.py stops and starts again
while the Go test's pushes are retrying. The plain live run skips them.
"""

from __future__ import annotations

import difflib
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.langtest import (
    NO_API_KEY,
    live_env,
    run,
    run_ok,
    suite_env,
    tls_client_env,
    tracked_files,
)
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
    return suite_env({"PATH": os.pathsep.join([str(TOOLS_BIN), os.environ.get("PATH", "")])})


def _run(cmd: list[str], env: dict[str, str], cwd: Path = GO_DIR) -> str:
    return run_ok(cmd, cwd=cwd, env=env)


@pytest.fixture(scope="module")
def go_env() -> dict[str, str]:
    if shutil.which("go") is None:
        pytest.fail("go is not installed: install Go, then run make tools")
    env = _go_env()
    _run(["go", "vet", "./..."], env)
    return env


def _without_protoc_version(text: str) -> list[str]:
    """A generated file's lines, less the header line naming the protoc release."""
    return [
        line
        for line in text.splitlines(keepends=True)
        if not re.match(r"^//\s+(- )?protoc\s+v?\d", line)
    ]


def test_committed_stubs_are_what_go_generate_makes(tmp_path: Path) -> None:
    """`go generate` (scripts/genproto.sh) into a scratch directory changes nothing."""
    for tool in ("protoc", "protoc-gen-go", "protoc-gen-go-grpc"):
        if shutil.which(tool, path=_go_env()["PATH"]) is None:
            pytest.fail(f"{tool} is missing: run make tools (deploy/dev/install-go.sh)")
    _run(["bash", "scripts/genproto.sh", str(tmp_path)], _go_env())
    fresh = {p.name: p.read_text() for p in (tmp_path / "pushsvcv1").glob("*.go")}
    committed = {p.name: p.read_text() for p in (GO_DIR / "pushsvcv1").glob("*.go")}
    assert fresh, "genproto.sh generated nothing"
    hint = "clients/go/pushsvcv1 is stale: run `go generate ./...` in clients/go and commit"
    assert sorted(committed) == sorted(fresh), (
        f"{hint}: files {sorted(committed)} != {sorted(fresh)}"
    )
    for name, text in fresh.items():
        diff = "".join(
            difflib.unified_diff(
                _without_protoc_version(committed[name]),
                _without_protoc_version(text),
                f"committed/{name}",
                f"generated/{name}",
            )
        )
        assert not diff, f"{hint}:\n{diff[:4000]}"


def test_a_clean_clone_vets_and_builds_with_no_other_step(tmp_path: Path) -> None:
    """Only the committed files of clients/go: `go vet` and `go build` pass as they are."""
    module = tmp_path / "go"
    files = tracked_files("clients/go")
    assert any(p.name == "push.pb.go" for p in files), "the generated stubs are not committed"
    for path in files:
        target = module / path.relative_to(GO_DIR)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    env = {**_go_env(), "GOFLAGS": "-mod=readonly"}
    _run(["go", "vet", "./..."], env, cwd=module)
    _run(["go", "build", "./..."], env, cwd=module)


def test_go_tests_pass_against_a_live_node(node: NodeProcess, go_env: dict[str, str]) -> None:
    env = {**go_env, **live_env(node)}
    output = _run(["go", "test", "-count=1", "-v", "-skip", OUTAGE_TESTS, "./..."], env)
    assert "--- PASS: TestLivePushArrivesOnWebSocket" in output
    assert "--- PASS: TestUnreachableNodeIsRetriedWithBackoffThenUnavailable" in output
    assert "--- PASS: TestLiveStreamReceiptsAndResume" in output
    assert "--- PASS: TestLiveRevokeToken" in output
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
    node: NodeProcess,
    go_env: dict[str, str],
    tmp_path: Path,
    node_factory: Callable[..., NodeProcess],
    tls_env: dict[str, str],
) -> None:
    """The README's program, verbatim, in a scratch module that replaces the module path;
    and, unchanged, over TLS with PUSHSVC_TLS_CA."""
    readme = (GO_DIR / "README.md").read_text()
    match = re.search(r"^## Ten-line example\n\n```go\n(.*?)^```$", readme, re.S | re.M)
    assert match, "no ```go block under '## Ten-line example' in clients/go/README.md"
    hello = tmp_path / "hello"
    hello.mkdir()
    (hello / "main.go").write_text(match.group(1))
    for cmd in (
        ["go", "mod", "init", "hello"],
        ["go", "mod", "edit", f"-replace=github.com/pushsvc/pushsvc/clients/go={GO_DIR}"],
        ["go", "mod", "tidy"],
        ["go", "build", "-o", "hello", "."],
    ):
        _run(cmd, go_env, cwd=hello)

    env = {**go_env, "PUSHSVC_GRPC_ADDR": node.grpc_addr, "PUSHSVC_API_KEY": API_KEY}
    with open_ws(node, "alice") as ws:
        output = _run([str(hello / "hello")], env, cwd=hello)
        (frame,) = ws.messages(1)
    assert output.strip() == f"pushed {frame['id']} seqs [1]"
    assert frame["data"] == {"hello": "world"}

    # The node's own environment file works as it is: the first of PUSHSVC_API_KEYS.
    keys = {**go_env, "PUSHSVC_GRPC_ADDR": node.grpc_addr, "PUSHSVC_API_KEYS": f" {API_KEY},other"}
    assert _run([str(hello / "hello")], keys, cwd=hello).startswith("pushed ")

    # No key at all: one clear message, before any call.
    bare = run(
        [str(hello / "hello")], cwd=hello, env={**go_env, "PUSHSVC_GRPC_ADDR": node.grpc_addr}
    )
    assert bare.returncode == 1, bare.stdout
    assert bare.stdout.count(NO_API_KEY) == 1 and len(bare.stdout.splitlines()) == 1, bare.stdout

    # Over TLS: the CA file in PUSHSVC_TLS_CA is all it takes; the system's roots do not
    # know the test CA, so the certificate is really checked.
    tls_node = node_factory(env=tls_env)
    env = {**go_env, **tls_client_env(tls_node)}
    with open_ws(tls_node, "alice") as ws:
        output = _run([str(hello / "hello")], env, cwd=hello)
        (frame,) = ws.messages(1)
    assert output.strip() == f"pushed {frame['id']} seqs [1]"
    untrusted = {**go_env, **tls_client_env(tls_node, with_ca=False), "PUSHSVC_TLS": "1"}
    refused = run([str(hello / "hello")], cwd=hello, env=untrusted)
    assert refused.returncode == 1, refused.stdout
    assert "certificate signed by unknown authority" in refused.stdout, refused.stdout
