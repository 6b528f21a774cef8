"""Fixtures of the systemd-host tests: one booted bookworm host for the whole run.

Booting and installing take well under a minute (the root comes from a cached
tarball), so the host is session-scoped; each test gets it back in a known state:
the package installed, no instance running or enabled, the shipped
``/etc/pushsvc`` and no state. A missing tool or package is a failure that says
what to run, never a skip: ``make test`` installs the tools and builds the package.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from tests.ferretdb import ferretdb  # noqa: F401 (a fixture of these tests)
from tests.host.machine import (
    Host,
    HostError,
    built_package,
    missing_tools,
    package_version,
    root_tarball,
)
from tests.wsclient import Client

PRISTINE_ETC = "/root/pushsvc-etc.shipped"
DEB_DIR = "/root/debs"
JOURNAL_LINES = 300  # of pushsvc's units, in a failed test's report


def install(host: Host, deb: str, *options: str) -> str:
    """``apt install ./pushsvc_*.deb``, as an operator does; returns apt's output."""
    directory, _, name = deb.rpartition("/")
    out = host.run(["apt", "install", "-y", *options, f"./{name}"], cwd=directory, timeout=300)
    return out.stdout


def reset(host: Host) -> None:
    """No instance running, enabled or remembered; the shipped configuration; no state."""
    host.run(
        f"""
        if systemctl cat pushsvc.target >/dev/null 2>&1; then
          systemctl stop pushsvc.target 'pushsvc@*.service'
        fi
        systemctl reset-failed 'pushsvc@*.service' pushsvc.target 2>/dev/null || true
        rm -rf /etc/systemd/system/pushsvc* /etc/systemd/system/*.wants/pushsvc*
        systemctl daemon-reload
        rm -rf /var/lib/pushsvc/*
        if dpkg-query -W -f='${{db:Status-Status}}' pushsvc 2>/dev/null | grep -qx installed; then
          rm -rf /etc/pushsvc/*
          cp -a {PRISTINE_ETC}/. /etc/pushsvc/
          # As the package's statoverrides say (the group may be new since the copy).
          chown root:pushsvc /etc/pushsvc/pushsvc.env /etc/pushsvc/1.env
        fi
        """,
        timeout=180,
    )


def ensure_installed(host: Host, deb: str) -> None:
    status = host.run(
        ["dpkg-query", "-W", "-f=${db:Status-Status} ${Version}", "pushsvc"], check=False
    ).stdout
    if status != f"installed {package_version()}":
        # Back from a test's upgrade, or after a test removed it.
        install(host, deb, "--allow-downgrades")
    if host.run(["test", "-d", PRISTINE_ETC], check=False).returncode != 0:
        host.run(f"cp -a /etc/pushsvc {PRISTINE_ETC}")


@pytest.fixture(scope="session")
def package() -> Path:
    try:
        return built_package()
    except HostError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def booted_host(package: Path) -> Iterator[Host]:
    """The container, booted once for the run and powered off and deleted at the end."""
    missing = missing_tools()
    if missing:
        pytest.fail(
            f"missing {', '.join(missing)}: run `make tools` "
            "(deploy/dev/install-systemd-host.sh installs them)",
            pytrace=False,
        )
    tarball = root_tarball()
    workdir = Path(tempfile.mkdtemp(prefix="pushsvc-host-", dir="/var/tmp"))
    host = Host(workdir)
    try:
        host.unpack(tarball)
        host.boot()
        host.copy_in(package, DEB_DIR)
        yield host
    finally:
        host.shutdown()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def host(booted_host: Host, package: Path) -> Iterator[Host]:
    """The booted host with the package installed and nothing of pushsvc running."""
    ensure_installed(booted_host, f"{DEB_DIR}/{package.name}")
    reset(booted_host)
    yield booted_host
    reset(booted_host)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A failed test's report carries the journal of pushsvc's units on the host (the
    host is reset after the test): what the nodes said when the test saw it fail."""
    report = yield
    host = getattr(item, "funcargs", {}).get("host")
    if report.when == "call" and report.failed and isinstance(host, Host):
        report.sections.append(("pushsvc's journal on the host", _journal_tail(host)))
        report.sections.append(("pushsvc's threads on the host (SIGUSR1)", _stacks(host)))
    return report


def _stacks(host: Host) -> str:
    """Every running node's threads, as SIGUSR1 makes it write them to the journal:
    where a node that stopped answering is stuck."""
    try:
        cursor = host.cursor()
        host.run(
            ["systemctl", "kill", "--signal=SIGUSR1", "--kill-whom=main", "pushsvc*.service"],
            check=False,
        )
        deadline = time.monotonic() + 15
        seen: list[str] = []
        while True:
            lines = [
                str(e.get("MESSAGE", ""))
                for e in host.journal(after=cursor)
                if str(e.get("_SYSTEMD_UNIT", "")).startswith("pushsvc")
            ]
            # Done once some node wrote its threads and nothing more came since the
            # last read (journald stores lines a moment after they were written).
            settled = lines == seen and any("most recent call first" in x for x in lines)
            if settled or time.monotonic() > deadline:
                return "\n".join(lines) or "(no node wrote its threads)"
            seen = lines
            time.sleep(0.5)  # polling the journal with a deadline
    except Exception as exc:  # a diagnostic: it must not break the report it adds to
        return f"(the threads could not be read: {exc!r})"


def _journal_tail(host: Host) -> str:
    try:
        return host.journal_text("pushsvc*", JOURNAL_LINES)
    except (HostError, OSError, subprocess.SubprocessError) as exc:
        return f"(the journal could not be read: {exc})"


@pytest.fixture
def clients() -> Iterator[list[Client]]:
    """WebSocket clients a test opened; closed at the end."""
    opened: list[Client] = []
    yield opened
    for client in opened:
        client.close()


@pytest.fixture(scope="session")
def upgrade_package(package: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same package under a higher version, to upgrade to."""
    return repack(package, f"{package_version()}+upgrade1", tmp_path_factory.mktemp("upgrade"))


def repack(deb: Path, version: str, directory: Path) -> Path:
    """``deb`` rebuilt with another Version (and file name); its contents unchanged."""
    tree = directory / "tree"
    subprocess.run(["dpkg-deb", "-R", str(deb), str(tree)], check=True, timeout=300)
    control = tree / "DEBIAN" / "control"
    lines = [
        f"Version: {version}" if line.startswith("Version:") else line
        for line in control.read_text().splitlines()
    ]
    control.write_text("\n".join(lines) + "\n")
    out = directory / f"pushsvc_{version}_amd64.deb"
    # Uncompressed: quick to build, and the contents are what is tested.
    subprocess.run(
        ["dpkg-deb", "--root-owner-group", "-Znone", "-b", str(tree), str(out)],
        check=True,
        timeout=300,
        capture_output=True,
    )
    shutil.rmtree(tree)
    return out
