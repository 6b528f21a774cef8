"""One version for every artifact: VERSION at the top, and everything that names it.

A release bumps VERSION and each place listed here; this test names every place
that still says otherwise. The license is checked the same way: one text, copied
into each client directory (an npm tarball, a Go module zip and a jar carry only
their own directory's files).
"""

from __future__ import annotations

import json
import re
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLIENTS = ROOT / "clients"
SEMVER = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)$")


def _version() -> str:
    version = (ROOT / "VERSION").read_text().strip()
    assert SEMVER.match(version), f"VERSION holds {version!r}, not X.Y.Z"
    return version


def _declared() -> dict[str, str]:
    """Every version an artifact declares, by where it is declared."""
    out: dict[str, str] = {}
    for pyproject in (ROOT / "pyproject.toml", CLIENTS / "python" / "pyproject.toml"):
        if pyproject.is_file():
            project = tomllib.loads(pyproject.read_text())["project"]
            out[str(pyproject.relative_to(ROOT))] = project["version"]
    server = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = [d for d in server["dependencies"] if d.startswith("pushsvc-client")]
    out["pyproject.toml (the server's pushsvc-client)"] = (
        pins[0].removeprefix("pushsvc-client==") if len(pins) == 1 else f"{pins}"
    )
    for pkg in ("node", "js"):
        manifest = CLIENTS / pkg / "package.json"
        out[str(manifest.relative_to(ROOT))] = json.loads(manifest.read_text())["version"]
    lock = json.loads((CLIENTS / "node" / "package-lock.json").read_text())
    out["clients/node/package-lock.json"] = lock["version"]
    out["clients/node/package-lock.json (packages[''])"] = lock["packages"][""]["version"]
    ns = {"m": "http://maven.apache.org/POM/4.0.0"}
    pom = ET.parse(CLIENTS / "java" / "pom.xml").getroot()
    out["clients/java/pom.xml"] = pom.findtext("m:version", default="", namespaces=ns)
    go = re.search(r'const Version = "([^"]*)"', (CLIENTS / "go" / "env.go").read_text())
    out["clients/go/env.go (Version)"] = go.group(1) if go else "missing"
    return out


def _mentioned() -> dict[str, str]:
    """Versions the docs tell users to install, by file and phrase."""
    patterns = [
        r"@v(\d+\.\d+\.\d+)",  # go get ...@vX.Y.Z
        r"clients/go/v(\d+\.\d+\.\d+)",  # the Go tag
        r"pushsvc-(?:client|browser)-(\d+\.\d+\.\d+)\.tgz",  # npm pack output
        r"<version>(\d+\.\d+\.\d+[^<]*)</version>",  # Maven coordinates
        r"pushsvc-client:(\d+\.\d+\.\d+\S*)`",  # io.pushsvc:pushsvc-client:X.Y.Z
        r"pushsvc_client-(\d+\.\d+\.\d+)-py3",  # the wheel's name
        r"version (\d+\.\d+\.\d+)",  # "version X.Y.Z (the repository's VERSION)"
    ]
    out: dict[str, str] = {}
    docs = [ROOT / "README.md", ROOT / "docs" / "clients.md", *CLIENTS.glob("*/README.md")]
    for doc in docs:
        text = doc.read_text()
        for pattern in patterns:
            for match in re.finditer(pattern, text):
                out[f"{doc.relative_to(ROOT)}: {match.group(0)}"] = match.group(1)
    return out


def test_every_artifact_has_the_version_in_VERSION() -> None:
    version = _version()
    declared = _declared()
    assert len(declared) >= 7, declared
    wrong = {where: v for where, v in declared.items() if v != version}
    assert not wrong, f"VERSION is {version}, but: {wrong}"


def test_the_docs_install_the_version_in_VERSION() -> None:
    version = _version()
    mentioned = _mentioned()
    # Each client's README names the version it installs.
    for client in ("go", "node", "js", "java"):
        assert any(k.startswith(f"clients/{client}/README.md") for k in mentioned), client
    wrong = {where: v for where, v in mentioned.items() if v != version}
    assert not wrong, f"VERSION is {version}, but the docs say: {wrong}"


def test_the_changelog_describes_the_version() -> None:
    version = _version()
    changelog = (ROOT / "CHANGELOG.md").read_text()
    releases = re.findall(r"^## \[(\d+\.\d+\.\d+)\]", changelog, re.M)
    assert releases and releases[0] == version, (
        f"the newest release in CHANGELOG.md is {releases[:1]}, VERSION is {version}"
    )


def test_one_license_everywhere() -> None:
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["license"] == (
        "Apache-2.0"
    )
    for client in sorted(p for p in CLIENTS.iterdir() if p.is_dir()):
        copy = client / "LICENSE"
        assert copy.is_file() and copy.read_text() == text, f"{copy} differs from LICENSE"
    for pkg in ("node", "js"):
        assert json.loads((CLIENTS / pkg / "package.json").read_text())["license"] == "Apache-2.0"
    pom = (CLIENTS / "java" / "pom.xml").read_text()
    assert "<name>Apache-2.0</name>" in pom
