"""The Java client (clients/java) against a real node.

``deploy/dev/install-java.sh`` prefetches every Maven artifact (quick when done
already); then Maven runs offline (``-o``): the JUnit 5 tests of ``PushClient``
(each rpc, deliveries checked on real WebSocket connections, typed errors), and
the README's example, run as written.

The retry test (``OutageRetryTest``) runs against a real store outage instead:
a fleet node on a FerretDB of its own, which tests/outage.py stops and starts
again while the Java test's pushes are retrying. The plain live run leaves it
out (Surefire ``<excludes>`` in pom.xml; ``-Dtest=`` overrides them).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.langtest import live_env, run, run_ok, suite_env
from tests.nodeproc import API_KEY, NodeProcess
from tests.outage import outage_env, outage_node, run_through_outage
from tests.wsclient import open_ws

ROOT = Path(__file__).resolve().parent.parent
JAVA_DIR = ROOT / "clients" / "java"
REPORTS = JAVA_DIR / "target" / "surefire-reports"
OUTAGE_TEST = "OutageRetryTest"  # needs a store outage: run by the outage test below only

pytestmark = pytest.mark.timeout(900)


def _junit_counts() -> dict[str, dict[str, int]]:
    """Per test class of the last Surefire run: tests, failures, errors, skipped."""
    out: dict[str, dict[str, int]] = {}
    for report in REPORTS.glob("TEST-*.xml"):
        suite = ET.parse(report).getroot()
        out[suite.get("name", report.stem)] = {
            key: int(suite.get(key, "0")) for key in ("tests", "failures", "errors", "skipped")
        }
    return out


def _dumps() -> str:
    """Surefire's dump files (a crashed forked JVM), for a failure message."""
    return "".join(
        f"\n--- {dump.name}:\n{dump.read_text(errors='replace')[-20000:]}"
        for dump in sorted(REPORTS.glob("*.dump*"))
    )


def _run(cmd: list[str], env: dict[str, str] | None = None, timeout: float = 600) -> str:
    """Run ``cmd`` in clients/java; fail with its output unless it exits 0."""
    return run_ok(cmd, cwd=JAVA_DIR, env=suite_env(env), timeout=timeout, detail=_dumps)


@pytest.fixture(scope="module")
def java_ready() -> Iterator[None]:
    for tool in ("java", "mvn"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} not found: the Java client needs a JDK 17 and Maven 3.8+")
    # Two test runs in the same checkout would build in the same target/: take turns.
    digest = hashlib.sha256(str(JAVA_DIR).encode()).hexdigest()[:12]
    lock_path = Path(tempfile.gettempdir()) / f"pushsvc-java-client-{digest}.lock"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            _run(["bash", str(ROOT / "deploy" / "dev" / "install-java.sh")], timeout=900)
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def test_java_client_against_live_node(java_ready: None, node: NodeProcess) -> None:
    shutil.rmtree(REPORTS, ignore_errors=True)
    out = _run(["mvn", "-q", "-B", "-o", "test"], env=live_env(node))
    per_class = _junit_counts()
    counts = {
        key: sum(c[key] for c in per_class.values())
        for key in ("tests", "failures", "errors", "skipped")
    }
    print(out, f"JUnit: {counts}")
    assert counts["tests"] >= 12 and counts["skipped"] == 0, f"{counts}\n{out}"
    assert counts["failures"] == counts["errors"] == 0, f"{counts}\n{out}"
    assert not any(OUTAGE_TEST in name for name in per_class), per_class  # run below only


def test_java_client_retries_through_a_store_outage(
    java_ready: None, node_factory: Callable[..., NodeProcess]
) -> None:
    shutil.rmtree(REPORTS, ignore_errors=True)
    with outage_node(node_factory) as (db, node):
        output = run_through_outage(
            ["mvn", "-B", "-o", "test", f"-Dtest={OUTAGE_TEST}"],
            cwd=JAVA_DIR,
            env=suite_env(outage_env(node)),
            db=db,
            node=node,
        )
    per_class = _junit_counts()
    assert per_class == {
        f"io.pushsvc.client.{OUTAGE_TEST}": {"tests": 1, "failures": 0, "errors": 0, "skipped": 0}
    }, f"{per_class}\n{output}"


def test_java_outage_test_fails_without_an_outage(java_ready: None, node: NodeProcess) -> None:
    """Selected without PUSHSVC_TEST_OUTAGE=1, the outage test fails; it does not skip."""
    shutil.rmtree(REPORTS, ignore_errors=True)
    proc = run(
        ["mvn", "-q", "-B", "-o", "test", f"-Dtest={OUTAGE_TEST}"],
        cwd=JAVA_DIR,
        env=suite_env({**outage_env(node), "PUSHSVC_TEST_OUTAGE": ""}),
    )
    assert proc.returncode != 0, proc.stdout
    assert "PUSHSVC_TEST_OUTAGE=1 is not set" in proc.stdout, proc.stdout
    counts = _junit_counts()
    assert counts == {
        f"io.pushsvc.client.{OUTAGE_TEST}": {"tests": 1, "failures": 1, "errors": 0, "skipped": 0}
    }, f"{counts}\n{proc.stdout}"


def test_java_readme_example_runs_as_written(
    java_ready: None, node: NodeProcess, tmp_path: Path
) -> None:
    readme = (JAVA_DIR / "README.md").read_text()
    match = re.search(r"```java\n(.*?public class Example .*?)```", readme, re.S)
    assert match, "README.md has no ```java block with class Example"
    lines = [line for line in match.group(1).splitlines() if line.strip()]
    assert len(lines) <= 15, f"the example grew to {len(lines)} lines"
    example = tmp_path / "Example.java"
    example.write_text(match.group(1))

    _run(["mvn", "-q", "-B", "-o", "compile"])
    classpath = (JAVA_DIR / "target" / "classpath.txt").read_text().strip()
    alice = open_ws(node, "alice")
    try:
        out = _run(
            ["java", "-cp", f"target/classes{os.pathsep}{classpath}", str(example)],
            env={"PUSHSVC_GRPC_ADDR": node.grpc_addr, "PUSHSVC_API_KEY": API_KEY},
            timeout=120,
        )
        found = re.search(r"pushed (\S+) seqs \[1\]", out)
        assert found, out
        frame = alice.messages(1, timeout=10)[0]
        assert frame["id"] == found.group(1)
        assert frame["data"] == {"hello": "world"}
    finally:
        alice.close()


def test_java_tests_fail_without_a_node(java_ready: None) -> None:
    """Without the PUSHSVC_TEST_* variables the JUnit tests fail, saying why."""
    proc = run(
        ["mvn", "-q", "-B", "-o", "test", "-Dtest=PushClientTest#listNodesShowsTheNode"],
        cwd=JAVA_DIR,
        env=suite_env(),
    )
    assert proc.returncode != 0, proc.stdout
    assert "not set: PUSHSVC_TEST_GRPC_ADDR" in proc.stdout, proc.stdout
