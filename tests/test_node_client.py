"""The Node.js client (clients/node): its `npm test` suite against a live node.

Retries are proven against a real store outage instead (no fake server): a
fleet node on a FerretDB of its own, which tests/outage.py stops and starts
again while test/outage/outage.test.js is retrying. `npm test` (test/*.test.js)
does not include that file.

The package is also tested the way a user gets it: `npm pack` makes the tarball,
which is installed into an empty project outside the repository, where the
README's example runs as written against a live node.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.langtest import (
    NO_API_KEY,
    live_env,
    npm_pack,
    npm_project,
    run,
    run_ok,
    suite_env,
    tarball_files,
    tls_client_env,
)
from tests.nodeproc import API_KEY, NodeProcess
from tests.outage import outage_env, outage_node, run_through_outage
from tests.wsclient import open_ws

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


@pytest.fixture(scope="session")
def node_tarball(tmp_path_factory: pytest.TempPathFactory) -> Path:
    _tool("npm")
    return npm_pack(NODE_CLIENT, tmp_path_factory.mktemp("node-pack"))


def test_tarball_carries_the_protos_and_no_tests(node_tarball: Path) -> None:
    manifest = json.loads((NODE_CLIENT / "package.json").read_text())
    assert node_tarball.name == f"pushsvc-client-{manifest['version']}.tgz"
    files = tarball_files(node_tarball)
    for needed in ("package.json", "README.md", "LICENSE", "index.d.ts", "src/index.js"):
        assert needed in files, sorted(files)
    assert "protos/pushsvc/v1/push.proto" in files, sorted(files)
    assert not [f for f in files if f.startswith(("test/", "node_modules/", "scripts/"))], files
    for key in ("files", "exports", "types", "engines"):
        assert key in manifest, f"package.json has no {key!r}"


def test_readme_example_from_the_installed_tarball(
    node: NodeProcess,
    node_tarball: Path,
    tmp_path: Path,
    node_factory: Callable[..., NodeProcess],
    tls_env: dict[str, str],
) -> None:
    """The README's example as written; then, unchanged, over TLS with PUSHSVC_TLS_CA."""
    readme = (NODE_CLIENT / "README.md").read_text()
    match = re.search(r"^## Example\n.*?```js\n(.*?)^```$", readme, re.S | re.M)
    assert match, "no ```js block under '## Example' in clients/node/README.md"
    project = npm_project(tmp_path / "app", node_tarball)
    (project / "example.mjs").write_text(match.group(1))
    node_bin = _tool("node")

    env = suite_env({"PUSHSVC_GRPC_ADDR": node.grpc_addr, "PUSHSVC_API_KEY": API_KEY})
    with open_ws(node, "alice") as ws:
        out = run_ok([node_bin, "example.mjs"], cwd=project, env=env, timeout=120)
        (frame,) = ws.messages(1)
    assert out == (
        f"stored {frame['id']} as alice's seq 1\nalice online: true (1 connections)\n"
    ), out
    assert frame["data"] == {"hello": "world"}

    # The node's own environment file works as it is: the first of PUSHSVC_API_KEYS.
    keys = suite_env({"PUSHSVC_GRPC_ADDR": node.grpc_addr, "PUSHSVC_API_KEYS": f"{API_KEY},x"})
    assert run_ok([node_bin, "example.mjs"], cwd=project, env=keys).startswith("stored ")

    bare = run([node_bin, "example.mjs"], cwd=project, env=suite_env(), timeout=120)
    assert bare.returncode == 1, bare.stdout
    assert bare.stdout.count(NO_API_KEY) == 1, bare.stdout

    # Over TLS: the CA file in PUSHSVC_TLS_CA is all it takes; the system's roots do not
    # know the test CA, so the certificate is really checked.
    tls_node = node_factory(env=tls_env)
    with open_ws(tls_node, "alice") as ws:
        env = suite_env(tls_client_env(tls_node))
        # (stderr apart: Node warns that grpc-js sends an IP address as the TLS server name)
        done = run([node_bin, "example.mjs"], cwd=project, env=env, merge_stderr=False)
        (frame,) = ws.messages(1)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith(f"stored {frame['id']} as alice's seq 1\n"), done.stdout
    untrusted = suite_env({**tls_client_env(tls_node, with_ca=False), "PUSHSVC_TLS": "1"})
    refused = run([node_bin, "example.mjs"], cwd=project, env=untrusted, timeout=120)
    assert refused.returncode == 1, refused.stdout
    assert "UNAVAILABLE" in refused.stdout, refused.stdout
