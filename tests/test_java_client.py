"""The Java client (clients/java) against a real node.

``deploy/dev/install-java.sh`` prefetches every Maven artifact (quick when done
already); then Maven runs offline (``-o``): the JUnit 5 tests of ``PushClient``
(each rpc, deliveries checked on real WebSocket connections, typed errors), and
the README's example, run as written the way a user runs it: ``mvn install``
puts the release jar into the local repository, and a fresh Maven project
outside the repository depends on it by its coordinates (the README's
``<dependency>`` block, verbatim) and runs the README's ``Example.java``.

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

from tests.langtest import NO_API_KEY, live_env, run, run_ok, suite_env, tls_client_env
from tests.nodeproc import API_KEY, NodeProcess
from tests.outage import outage_env, outage_node, run_through_outage
from tests.wsclient import open_ws

ROOT = Path(__file__).resolve().parent.parent
JAVA_DIR = ROOT / "clients" / "java"
REPORTS = JAVA_DIR / "target" / "surefire-reports"
OUTAGE_TEST = "OutageRetryTest"  # needs a store outage: run by the outage test below only

# A fresh project of a user of the client: only the README's <dependency> is added. The
# plugin versions are the client's own (prefetched by install-java.sh, so Maven can
# run offline); Maven's defaults would be older ones.
CONSUMER_POM = """<?xml version="1.0" encoding="UTF-8"?>
<project xmlns="http://maven.apache.org/POM/4.0.0"
         xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
         xsi:schemaLocation="http://maven.apache.org/POM/4.0.0 https://maven.apache.org/xsd/maven-4.0.0.xsd">
  <modelVersion>4.0.0</modelVersion>
  <groupId>com.example</groupId>
  <artifactId>consumer</artifactId>
  <version>1</version>
  <properties>
    <maven.compiler.release>17</maven.compiler.release>
    <project.build.sourceEncoding>UTF-8</project.build.sourceEncoding>
  </properties>
  <dependencies>
{dependency}
  </dependencies>
  <build>
    <plugins>
      <plugin><artifactId>maven-resources-plugin</artifactId><version>3.3.1</version></plugin>
      <plugin><artifactId>maven-compiler-plugin</artifactId><version>3.13.0</version></plugin>
      <plugin><artifactId>maven-dependency-plugin</artifactId><version>3.6.1</version></plugin>
    </plugins>
  </build>
</project>
"""

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
    assert counts["tests"] >= 14 and counts["skipped"] == 0, f"{counts}\n{out}"
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


def _pom_version() -> str:
    ns = {"m": "http://maven.apache.org/POM/4.0.0"}
    version = ET.parse(JAVA_DIR / "pom.xml").getroot().findtext("m:version", namespaces=ns)
    assert version, "pom.xml has no <version>"
    return version


def _local_repository() -> Path:
    """Where `mvn install` puts artifacts: -Dmaven.repo.local in MAVEN_OPTS, else ~/.m2."""
    for opt in os.environ.get("MAVEN_OPTS", "").split():
        if opt.startswith("-Dmaven.repo.local="):
            return Path(opt.split("=", 1)[1])
    return Path.home() / ".m2" / "repository"


@pytest.fixture(scope="module")
def java_installed(java_ready: None) -> Path:
    """`mvn install` of the client, as its README says; the installed jar."""
    version = _pom_version()
    assert not version.endswith("-SNAPSHOT"), f"pom.xml version {version} is a snapshot"
    _run(["mvn", "-B", "-o", "-q", "install", "-DskipTests"])
    jar = _local_repository() / "io/pushsvc/pushsvc-client" / version
    jar = jar / f"pushsvc-client-{version}.jar"
    assert jar.is_file(), f"mvn install did not put {jar} in the local repository"
    return jar


def test_java_readme_example_in_a_fresh_project(
    java_installed: Path,
    node: NodeProcess,
    tmp_path: Path,
    node_factory: Callable[..., NodeProcess],
    tls_env: dict[str, str],
) -> None:
    """The README's example as written; then, unchanged, over TLS with PUSHSVC_TLS_CA."""
    readme = (JAVA_DIR / "README.md").read_text()
    dependency = re.search(r"```xml\n(<dependency>.*?</dependency>)\n```", readme, re.S)
    assert dependency, "README.md has no ```xml <dependency> block"
    coordinates = "".join(dependency.group(1).split())
    assert f"<version>{_pom_version()}</version>" in coordinates, dependency.group(1)
    example = re.search(r"```java\n(.*?public class Example .*?)```", readme, re.S)
    assert example, "README.md has no ```java block with class Example"
    lines = [line for line in example.group(1).splitlines() if line.strip()]
    assert len(lines) <= 15, f"the example grew to {len(lines)} lines"
    build = re.search(r"```sh\n(mvn [^\n]*build-classpath[^\n]*)\n", readme)
    assert build, "README.md does not say how to build the example"

    project = tmp_path / "consumer"
    (project / "src/main/java").mkdir(parents=True)
    (project / "pom.xml").write_text(CONSUMER_POM.format(dependency=dependency.group(1)))
    (project / "src/main/java/Example.java").write_text(example.group(1))
    # The README's command, offline: everything comes from the local repository.
    cmd = build.group(1).split()
    run_ok([cmd[0], "-o", *cmd[1:]], cwd=project, env=suite_env(), timeout=600)
    classpath = (project / "cp.txt").read_text().strip()
    assert str(java_installed) in classpath.split(os.pathsep), classpath
    java = ["java", "-cp", f"target/classes{os.pathsep}{classpath}", "Example"]

    env = suite_env({"PUSHSVC_GRPC_ADDR": node.grpc_addr, "PUSHSVC_API_KEY": API_KEY})
    with open_ws(node, "alice") as alice:
        out = run_ok(java, cwd=project, env=env, timeout=120)
        (frame,) = alice.messages(1, timeout=10)
    assert out.strip() == f"pushed {frame['id']} seqs [1]", out
    assert frame["data"] == {"hello": "world"}

    # The node's own environment file works as it is: the first of PUSHSVC_API_KEYS.
    keys = suite_env({"PUSHSVC_GRPC_ADDR": node.grpc_addr, "PUSHSVC_API_KEYS": f"{API_KEY},x"})
    assert run_ok(java, cwd=project, env=keys, timeout=120).startswith("pushed ")

    bare = run(java, cwd=project, env=suite_env(), timeout=120)
    assert bare.returncode == 1, bare.stdout
    assert bare.stdout.count(NO_API_KEY) == 1, bare.stdout

    # Over TLS: the CA file in PUSHSVC_TLS_CA is all it takes; the JVM's trust store
    # does not know the test CA, so the certificate is really checked.
    tls_node = node_factory(env=tls_env)
    with open_ws(tls_node, "alice") as alice:
        out = run_ok(java, cwd=project, env=suite_env(tls_client_env(tls_node)), timeout=120)
        (frame,) = alice.messages(1, timeout=10)
    assert out.strip() == f"pushed {frame['id']} seqs [1]", out
    untrusted = suite_env({**tls_client_env(tls_node, with_ca=False), "PUSHSVC_TLS": "1"})
    refused = run(java, cwd=project, env=untrusted, timeout=120)
    assert refused.returncode == 1, refused.stdout
    assert "UnavailableException" in refused.stdout, refused.stdout


def test_java_tests_fail_without_a_node(java_ready: None) -> None:
    """Without the PUSHSVC_TEST_* variables the JUnit tests fail, saying why."""
    proc = run(
        ["mvn", "-q", "-B", "-o", "test", "-Dtest=PushClientTest#listNodesShowsTheNode"],
        cwd=JAVA_DIR,
        env=suite_env(),
    )
    assert proc.returncode != 0, proc.stdout
    assert "not set: PUSHSVC_TEST_GRPC_ADDR" in proc.stdout, proc.stdout
