"""docs/operations.md, run: every ``sh`` block of the guide is a command the test runs
in the booted bookworm host, checking after each step that it did what the guide
says.

Each block carries a name (``<!-- test: NAME -->`` on the line above it), and the
guide gives no command outside its blocks. The guide is run twice from a host
without the package: as a single-node host (install, one node and a client of its
token, a longer drain, back up and restore, a failed start read from the journal,
TLS and a certificate rotation, uninstall) and as a fleet host (install, generate
the secrets, configure and start two instances on FerretDB, logs and a failed call
found by its request id, upgrade and roll back, take the host out and back, raise
the store's format, TLS, mutual TLS between the instances and a change of CA,
uninstall). Only the site's own values differ from what an operator types: the
``fleet-site`` and ``tls-site`` blocks are replaced by the test's values (same
variable names; the secrets are the ones ``fleet-secrets`` printed), the shipped
ports of the single node are moved to free ones (the guide says to edit them to
change them), an example value in a block (the request id) is replaced by the real
one, and the files the blocks name (packages, certificates from the test's CAs) are
put in the directory the blocks run in.

What the guide describes without a command of its own is checked elsewhere:
``tests/host/test_package.py`` covers the unit's behaviour listed in section 1 (the
watchdog's ``Watchdog timeout`` in the journal, a failed ``systemctl reload``, the
reload of ``pushsvc.target``, ``systemctl status`` during a drain), and ``make deb``,
which builds the package the guide installs, is what ``package`` requires. The
PromQL of sections 7 and 8 and the nginx directives of sections 3 and 10 are not
commands for the host: no test here runs Prometheus or nginx.
"""

from __future__ import annotations

import json
import re
import socket
import ssl
import subprocess
from pathlib import Path
from typing import Any

import pymongo
import pytest

from tests.ferretdb import FerretDB
from tests.host.conftest import repack
from tests.host.machine import PRIORITIES, Host, package_version, poll, service_ports
from tests.host.nodes import (
    TLS_DIR,
    assert_restarted_one_at_a_time,
    connect_ws,
    one_client_per_node,
)
from tests.pki import Issued, Pki
from tests.wsclient import Client

pytestmark = pytest.mark.timeout(900)

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "operations.md"
WORKDIR = "/root/doc"  # where the operator downloaded the packages; the blocks run here
SINGLE = ["install", "single-start", "single-token", "single-try", "drain-timeout"]
SINGLE += ["backup", "restore", "why"]
SINGLE += ["tls-install", "tls-journal", "tls-check", "tls-rotate", "remove", "purge"]
FLEET = ["install", "fleet-secrets", "fleet-configure", "fleet-start", "logs", "request-log"]
FLEET += ["upgrade", "rollback", "host-out", "host-back", "store-format"]
FLEET += ["tls-install", "tls-mutual", "ca-add", "tls-rotate", "tls-check", "ca-remove"]
FLEET += ["remove", "purge"]
SITES = ["fleet-site", "tls-site"]  # blocks of the site's values, which the tests set
# openssl x509 -fingerprint -sha256: "sha256 Fingerprint=AB:CD:...".
FINGERPRINT = re.compile(r"(?i)^sha256 Fingerprint=([0-9A-F:]+)$", re.M)
BLOCK = re.compile(r"<!-- test: ([\w-]+)[^>]*-->\n```sh\n(.*?)\n```", re.S)
DEB_NAME = re.compile(r"\./(pushsvc_([^_\s]+)_amd64\.deb)")
REQUEST_ID = re.compile(r"request id ([0-9a-f]+) in the log")
EXAMPLE_REQUEST_ID = "5e0c1a9b7f2d"  # the id the guide shows, replaced by a real one
INSTANCE_1_ENV = "set -a; . /etc/pushsvc/pushsvc.env; . /etc/pushsvc/1.env; set +a; "
# A client's HTTP/2 connection preface, then its (empty) SETTINGS frame.
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])


def guide_blocks() -> dict[str, str]:
    text = GUIDE.read_text()
    blocks: dict[str, str] = {}
    for name, body in BLOCK.findall(text):
        assert name not in blocks, f"two blocks named {name} in {GUIDE.name}"
        blocks[name] = body
    # No command escapes the test: every sh block is named and run.
    assert text.count("```sh\n") == len(blocks), f"an sh block of {GUIDE.name} has no test name"
    assert set(blocks) == {*SITES, *SINGLE, *FLEET}, sorted(blocks)
    return blocks


def deb_named(block: str) -> tuple[str, str]:
    """The package file a block installs: (file name, version)."""
    match = DEB_NAME.search(block)
    assert match, block
    return match.group(1), match.group(2)


class Guide:
    """The guide's blocks, run in the host as root from WORKDIR, after the values of
    ``sites`` (site block name → the test's values for its variables)."""

    def __init__(self, host: Host, sites: dict[str, dict[str, str]]) -> None:
        self.host = host
        self.blocks = guide_blocks()
        self.prefix = ""
        for name, values in sites.items():
            assigned = set(re.findall(r"^([A-Z_]+)=", self.blocks[name], re.M))
            assert assigned == set(values), f"{name} sets {sorted(assigned)}"
            self.prefix += "".join(f"{k}={v}\n" for k, v in values.items())

    def script(self, name: str, fill: dict[str, str] | None = None) -> str:
        """Block ``name`` after the site's values, its example values replaced by the
        real ones of ``fill`` (example → value)."""
        body = self.blocks[name]
        for example, value in (fill or {}).items():
            assert example in body, f"{name} has no {example!r}"
            body = body.replace(example, value)
        return self.prefix + body

    def run(self, name: str, fill: dict[str, str] | None = None) -> str:
        return self.host.run(self.script(name, fill), cwd=WORKDIR, timeout=600).stdout

    def shows(self, name: str, words: str, fill: dict[str, str] | None = None) -> str:
        """Run block ``name`` until its output has ``words`` (a journal read: journald
        stores a line a moment after the node wrote it, and journalctl -g fails while
        nothing matches, and systemctl status fails for a unit that is not active);
        its output then."""

        last = ""

        def attempt() -> str | None:
            nonlocal last
            done = self.host.run(self.script(name, fill), cwd=WORKDIR, check=False)
            last = done.stdout + done.stderr
            return done.stdout if words in done.stdout else None

        try:
            return poll(attempt, 60, f"{words!r} from {name}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; it printed:\n{last}") from None


@pytest.fixture
def bare_host(host: Host, package: Path, tmp_path: Path) -> Host:
    """The host without the package, and in WORKDIR the packages the guide names: the
    one built, and the same under the version the upgrade block names."""
    blocks = guide_blocks()
    installed, version = deb_named(blocks["install"])
    assert installed == package.name, (
        f"{GUIDE.name} installs {installed}, but make deb built {package.name}: "
        "update the guide's package names"
    )
    assert deb_named(blocks["rollback"])[0] == package.name
    newer, newer_version = deb_named(blocks["upgrade"])
    subprocess.run(["dpkg", "--compare-versions", newer_version, "gt", version], check=True)
    host.copy_in(package, WORKDIR)
    host.copy_in(repack(package, newer_version, tmp_path), WORKDIR)
    assert newer in host.run(["ls", WORKDIR]).stdout
    host.run("apt purge -y pushsvc", timeout=300)
    return host


def units_active(host: Host) -> dict[str, str]:
    out = host.run(
        ["systemctl", "list-units", "--plain", "--no-legend", "--all", "pushsvc@*.service"]
    ).stdout
    return {line.split()[0]: line.split()[2] for line in out.splitlines() if line.strip()}


def gone(host: Host, *paths: str) -> bool:
    return all(host.run(["test", "-e", path], check=False).returncode == 1 for path in paths)


def via_instance_1(host: Host, command: str) -> str:
    """``command``'s output, run with instance 1's settings loaded, as the guide does."""
    return host.run(INSTANCE_1_ENV + command).stdout


def node_events(host: Host, after: str) -> list[dict[str, Any]]:
    """The instances' log events (JSON lines) since the journal cursor ``after``."""
    return [
        json.loads(str(entry["MESSAGE"]))
        for entry in host.journal(after=after)
        if str(entry.get("_SYSTEMD_UNIT", "")).startswith("pushsvc@")
        and str(entry.get("MESSAGE", "")).startswith("{")
    ]


def stops(entries: list[dict[str, Any]], units: list[str]) -> list[tuple[str, str]]:
    """systemd's journal lines about stopping ``units``, in order: (unit, event)."""
    order = []
    for entry in entries:
        unit, message = entry.get("UNIT"), str(entry.get("MESSAGE", ""))
        if unit in units and entry.get("_TRANSPORT") == "journal":
            if message.startswith("Stopping "):
                order.append((str(unit), "stopping"))
            elif message.startswith("Stopped "):
                order.append((str(unit), "stopped"))
    return order


def reloaded_every_instance(host: Host, after: str, units: list[str]) -> None:
    """Each of ``units`` logged ``TLS certificate reloaded`` since the cursor ``after``
    (journald stores the lines a moment after ``systemctl reload`` returned)."""

    def reloaded() -> list[str] | None:
        found = sorted(
            str(entry["_SYSTEMD_UNIT"])
            for entry in host.journal(after=after)
            if '"TLS certificate reloaded"' in str(entry.get("MESSAGE", ""))
        )
        return found if found == sorted(units) else None

    poll(reloaded, 60, f"TLS certificate reloaded by {units}")


def reaches_every_node(host: Host, held: dict[str, tuple[str, Client]], tag: str) -> None:
    """An online-only push through instance 1 reaches the user each node holds: for the
    other instance's, only by a Deliver call between the nodes, since nothing of an
    online-only push is stored or replayed."""
    for node_id, (user, client) in held.items():

        def online(user: str = user, node_id: str = node_id) -> bool:
            return f"on {node_id}" in via_instance_1(host, f"pushsvc presence {user}")

        poll(online, 60, f"{user} online on {node_id}, as instance 1 reads it")
        out = via_instance_1(
            host, f"""pushsvc push --user {user} --ttl 0 --data '{{"{tag}": "{user}"}}'"""
        )
        assert out.startswith("online-only push "), out
        [message] = client.messages(1, timeout=30)
        assert message["data"] == {tag: user}


def cluster_accepts(port: int, client: Issued, ca: Path) -> bool:
    """Whether the cluster listener on ``port`` takes a peer that shows ``client``'s
    certificate: it answers the HTTP/2 preface (its SETTINGS frame), or it ends the
    TLS session (the handshake, or, with TLS 1.3, right after it)."""
    context = ssl.create_default_context(cafile=str(ca))
    context.load_cert_chain(str(client.cert), str(client.key))
    context.set_alpn_protocols(["h2"])
    with socket.create_connection(("127.0.0.1", port), timeout=30) as raw:
        try:
            with context.wrap_socket(raw, server_hostname="localhost") as tls:
                tls.sendall(H2_PREFACE)
                return len(tls.recv(9)) > 0
        except (ssl.SSLError, ConnectionError):
            return False


def fingerprint(checked: str) -> str:
    """The SHA-256 fingerprint the guide's check printed, as hex (Issued.fingerprint)."""
    match = FINGERPRINT.search(checked)
    assert match, checked
    return match.group(1).replace(":", "").lower()


def test_single_node_host_as_documented(bare_host: Host, pki: Pki, clients: list[Client]) -> None:
    host = bare_host
    ws, grpc_port, admin = service_ports(), service_ports(), service_ports()
    guide = Guide(
        host, {"tls-site": {"PUBLIC_NAME": "localhost", "PUBLIC_ADDR": f"127.0.0.1:{ws}"}}
    )

    out = guide.run("install")
    # Installing downloads nothing: the package's Depends come from Debian's packages
    # already on the host (here: in apt's cache), everything else is in the package.
    assert not re.search(r"^Get:\d+ (https?|ftp)://", out, re.M), out
    assert host.run(["dpkg-query", "-W", "-f=${db:Status-Status}", "pushsvc"]).stdout == (
        "installed"
    )
    assert "active" not in units_active(host).values()  # installing starts nothing
    # The shipped ports, as the guide states them, moved to free ones for the test.
    shared = host.read("/etc/pushsvc/pushsvc.env")
    instance = host.read("/etc/pushsvc/1.env")
    assert "\nPUSHSVC_WS_ADDR=0.0.0.0:8080\n" in shared
    assert "\nPUSHSVC_GRPC_ADDR=127.0.0.1:50051\n" in instance
    assert "\nPUSHSVC_ADMIN_ADDR=127.0.0.1:9091\n" in instance
    host.run(
        f"sed -i 's/^PUSHSVC_WS_ADDR=.*/PUSHSVC_WS_ADDR=127.0.0.1:{ws}/' /etc/pushsvc/pushsvc.env\n"
        f"sed -i -e 's/:50051$/:{grpc_port}/' -e 's/:9091$/:{admin}/' /etc/pushsvc/1.env"
    )

    out = guide.run("single-start")
    assert units_active(host) == {"pushsvc@1.service": "active"}
    assert host.run(["systemctl", "is-enabled", "pushsvc@1"]).stdout.strip() == "enabled"
    assert "Active: active (running)" in out and "ready: 0 connections" in out, out
    # The node generated its secret, and the guide's token is signed with it: a client
    # connects with that token, in the URL the guide gives.
    secret = host.read("/var/lib/pushsvc/1/jwt-secret").strip()
    token = guide.run("single-token").strip()
    clients.append(alice := connect_ws(ws, "alice", token=token))
    assert alice.welcome["user"] == "alice", alice.welcome

    out = guide.run("single-try")
    assert out.startswith("pushed ") and "alice: online" in out, out
    [message] = alice.messages(1, timeout=30)
    assert message["data"] == {"hello": "world"}

    # A longer drain: the drop-in and the setting, in force in the restarted instance.
    out = guide.run("drain-timeout")
    assert out.splitlines() == ["TimeoutStopUSec=1min 5s"], out
    assert alice.close_code(timeout=60)[0] == 1012  # the restart drained it
    assert units_active(host) == {"pushsvc@1.service": "active"}
    pid = host.main_pid("pushsvc@1.service")
    environ = host.read(f"/proc/{pid}/environ").split("\0")
    assert "PUSHSVC_DRAIN_TIMEOUT=60" in environ, environ
    assert "Drop-In: /etc/systemd/system/pushsvc@.service.d" in guide.run("single-start")
    clients.append(alice := connect_ws(ws, "alice", secret=secret, since=1))

    out = guide.run("backup")
    assert out.startswith("backed up /var/lib/pushsvc/1"), out
    assert alice.barrier() == []  # the node kept serving: its client is still there
    assert units_active(host) == {"pushsvc@1.service": "active"}
    copied = host.run(["ls", "/var/backups/pushsvc-1"]).stdout.split()
    assert {"pushsvc.db", "jwt-secret", "api-key"} <= set(copied), copied
    # After the backup: another message, which the restore takes back.
    after = via_instance_1(host, """pushsvc push --user alice --data '{"after": "backup"}'""")
    assert after.strip().endswith("alice seq 2"), after
    guide.run("restore")
    assert alice.close_code(timeout=60)[0] == 1012  # the stop drained it
    assert units_active(host) == {"pushsvc@1.service": "active"}
    # The restored node has the same secret (old tokens work) and the backed-up inbox.
    assert host.read("/var/lib/pushsvc/1/jwt-secret").strip() == secret
    clients.append(again := connect_ws(ws, "alice", secret=secret, since=0))
    assert again.welcome["seq"] == 1  # alice's latest: the message pushed after is gone
    assert [m["data"] for m in again.messages(1, timeout=30)] == [{"hello": "world"}]

    # A bad setting: the instance stops at once, is not restarted, and the guide's
    # commands show why.
    host.run("echo 'PUSHSVC_HEARTBEAT_INTERVAL=soon' >> /etc/pushsvc/1.env")
    assert host.systemctl("restart", "pushsvc@1", check=False).returncode != 0
    assert again.close_code(timeout=60)[0] == 1012
    out = guide.shows("why", "pushsvc: error: PUSHSVC_HEARTBEAT_INTERVAL: 'soon' is not a number")
    assert "Active: failed" in out and "status=2" in out, out
    assert host.prop("pushsvc@1.service", "NRestarts") == "0"
    host.run("sed -i '/^PUSHSVC_HEARTBEAT_INTERVAL=soon$/d' /etc/pushsvc/1.env")
    # The test starts this unit more often than StartLimitBurst= lets a host do in
    # two minutes: forget the count, as after a fixed failure.
    host.systemctl("reset-failed", "pushsvc@1")
    host.systemctl("start", "pushsvc@1")
    clients.append(again := connect_ws(ws, "alice", secret=secret, since=1))

    # TLS: the operator's files from its CA, in the directory the guide runs in.
    first, renewed = pki.issue("doc-node"), pki.issue("doc-node-renewed")
    for name, source in (
        ("node.pem", first.cert),
        ("node.key", first.key),
        ("ca.pem", pki.ca),
        ("new.pem", renewed.cert),
        ("new.key", renewed.key),
    ):
        host.write(f"{WORKDIR}/{name}", source.read_text(), 0o600)
    guide.run("tls-install")
    assert again.close_code(timeout=60)[0] == 1012  # the restart drained it
    out = guide.shows("tls-journal", first.fingerprint)
    [loaded] = [json.loads(line) for line in out.splitlines() if first.fingerprint in line]
    assert (loaded["msg"], loaded["subject"]) == ("TLS certificate loaded", "CN=doc-node")
    assert units_active(host) == {"pushsvc@1.service": "active"}
    modes = host.run("stat -c '%a %U %G %n' /etc/pushsvc/tls /etc/pushsvc/tls/*").stdout
    assert modes.splitlines() == [
        "750 root pushsvc /etc/pushsvc/tls",
        "640 root pushsvc /etc/pushsvc/tls/ca.pem",
        "640 root pushsvc /etc/pushsvc/tls/node.key",
        "640 root pushsvc /etc/pushsvc/tls/node.pem",
    ], modes
    checked = guide.run("tls-check")
    assert fingerprint(checked) == first.fingerprint and "CN = doc-node\n" in checked, checked
    # wss:// now, and the guide's own push, which reads PUSHSVC_TLS_CA from pushsvc.env.
    clients.append(alice := connect_ws(ws, "alice", secret=secret, ca=pki.ca))
    out = guide.run("single-try")
    assert out.startswith("pushed ") and "alice: online" in out, out
    assert [m["data"] for m in alice.messages(1, timeout=30)] == [{"hello": "world"}]

    guide.run("tls-rotate")
    # `systemctl reload` returned once the node had reloaded: the check sees it at once.
    assert fingerprint(guide.run("tls-check")) == renewed.fingerprint
    out = guide.shows("tls-journal", renewed.fingerprint)
    [reloaded] = [json.loads(line) for line in out.splitlines() if renewed.fingerprint in line]
    assert reloaded["msg"] == "TLS certificate reloaded", reloaded
    # The connection made before the rotation is still there, and still served.
    out = guide.run("single-try")
    assert out.startswith("pushed ") and "alice: online" in out, out
    assert [m["data"] for m in alice.messages(1, timeout=30)] == [{"hello": "world"}]

    guide.run("remove")
    assert alice.close_code(timeout=60)[0] == 1012
    assert host.prop("pushsvc@1.service", "ActiveState") == "inactive"
    assert not gone(host, "/etc/pushsvc/pushsvc.env", "/var/lib/pushsvc/1/pushsvc.db")
    assert host.run(["id", "pushsvc"], check=False).returncode == 0

    guide.run("purge")
    assert gone(host, "/etc/pushsvc", "/var/lib/pushsvc", "/opt/pushsvc", "/usr/bin/pushsvc")
    assert host.run(["id", "pushsvc"], check=False).returncode != 0


def test_fleet_host_as_documented(
    bare_host: Host, ferretdb: FerretDB, pki: Pki, clients: list[Client], tmp_path: Path
) -> None:
    host = bare_host
    ws = service_ports()
    unset = Guide(host, {})  # the blocks that come before the site's values
    unset.run("install")
    # The fleet's secrets, as the guide generates them: the site's values below.
    printed = unset.run("fleet-secrets")
    secrets = dict(line.split("=", 1) for line in printed.splitlines())
    assert sorted(secrets) == ["API_KEY", "CLUSTER_KEY", "JWT_SECRET"], printed
    assert all(re.fullmatch("[0-9a-f]{64}", v) for v in secrets.values()), printed
    assert len(set(secrets.values())) == 3, printed
    jwt_secret = secrets["JWT_SECRET"]
    site = {
        "MONGO_URI": ferretdb.uri,
        **secrets,
        "ALLOWED_ORIGINS": "https://app.example.com",
        "HOST": "doc-host",
        "ADVERTISE_HOST": "127.0.0.1",
        "INSTANCES": "2",
        "WS_PORT": str(ws),
        "GRPC_PORT": str(service_ports(2) - 1),  # instance n: GRPC_PORT + n
        "ADMIN_PORT": str(service_ports(2) - 1),
        "CLUSTER_PORT": str(service_ports(2) - 1),
    }
    tls_site = {"PUBLIC_NAME": "localhost", "PUBLIC_ADDR": f"127.0.0.1:{ws}"}
    guide = Guide(host, {"fleet-site": site, "tls-site": tls_site})
    units = ["pushsvc@1.service", "pushsvc@2.service"]
    node_ids = {"doc-host-1", "doc-host-2"}
    built = package_version()

    guide.run("fleet-configure")
    out = guide.run("fleet-start")
    assert units_active(host) == dict.fromkeys(units, "active")
    assert host.prop("pushsvc.target", "ActiveState") == "active"
    for node_id in node_ids:
        assert node_id in out, out  # pushsvc nodes lists both
    held = one_client_per_node(ws, node_ids, clients, secret=jwt_secret)
    # Pushed through instance 1 with the fleet's key, delivered by whichever holds the user.
    for user, client in held.values():
        via_instance_1(host, f"""pushsvc push --user {user} --data '{{"to": "{user}"}}'""")
        [message] = client.messages(1, timeout=30)
        assert message["data"] == {"to": user}

    out = guide.run("logs")
    lines = out.splitlines()
    [entry] = [n for n, line in enumerate(lines) if '"__CURSOR"' in line]  # -o json
    # -o cat: instance 1's last 5 entries, its events (one JSON object each) and
    # systemd's lines about the unit ("Started ...").
    assert len(lines[:entry]) == 5, out
    events = [json.loads(line) for line in lines[:entry] if line.startswith("{")]
    assert events and all({"ts", "level", "logger", "msg"} <= set(e) for e in events), out
    # -o json: the event is the MESSAGE, its level the PRIORITY.
    last = json.loads(lines[entry])
    assert last["_SYSTEMD_UNIT"] in units, last
    event = json.loads(last["MESSAGE"])
    assert int(last["PRIORITY"]) == PRIORITIES[event["level"]], last
    # -p warning: warnings and errors alone, here the fleet's listeners beyond the
    # host without TLS (the host's journal also holds earlier tests' runs, and
    # systemd's own warnings about the units, which are not JSON).
    warned = [
        json.loads(line[line.index(": {") + 2 :]) for line in lines[entry + 1 :] if ": {" in line
    ]
    assert warned and all(e["level"] in ("WARNING", "ERROR") for e in warned), out
    assert any(e["msg"].startswith(f"WebSocket listens on 0.0.0.0:{ws},") for e in warned), out

    # A call that fails unexpectedly: a presence record the node cannot read, written
    # into the store behind its back. The caller's error names a request id, and the
    # guide's journalctl, with that id in place of its example, finds the event.
    broken = {"user_id": "broken", "node_id": "doc-host-1", "connections": "many"}
    mongo: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(ferretdb.uri)
    try:
        presence = mongo["pushsvc"]["presence"]  # the database the guide's fleet uses
        inserted = presence.insert_one(broken).inserted_id
        try:
            failed = host.run(INSTANCE_1_ENV + "pushsvc presence broken", check=False)
        finally:
            presence.delete_one({"_id": inserted})
    finally:
        mongo.close()
    said = failed.stdout + failed.stderr
    match = REQUEST_ID.search(said)
    assert failed.returncode != 0 and match, said
    request_id = match.group(1)
    out = guide.shows("request-log", request_id, fill={EXAMPLE_REQUEST_ID: request_id})
    [event] = [json.loads(line) for line in out.splitlines() if request_id in line]
    assert (event["msg"], event["rpc"], event["request"]) == (
        "rpc failed",
        "GetPresence",
        request_id,
    ), event
    assert "ValueError" in event["exc"], event  # the traceback, in the same line

    def reconnected(live: list[tuple[str, Client]], told: bool = True) -> list[tuple[str, Client]]:
        """Every client, asked to reconnect (close code 1012) unless ``told`` is
        False, connects again and gets what was stored for it: the new clients."""
        again_all = []
        for user, client in live:
            if told:
                assert client.close_code(timeout=60)[0] == 1012
            clients.append(again := connect_ws(ws, user, since=0, secret=jwt_secret))
            assert [m["data"] for m in again.messages(1, timeout=30)] == [{"to": user}]
            again_all.append((user, again))
        return again_all

    live = list(held.values())
    for name, version in (("upgrade", deb_named(guide.blocks["upgrade"])[1]), ("rollback", built)):
        cursor = host.cursor()
        guide.run(name)
        assert host.run(["dpkg-query", "-W", "-f=${Version}", "pushsvc"]).stdout == version
        assert units_active(host) == dict.fromkeys(units, "active")
        assert_restarted_one_at_a_time(host.journal(after=cursor), units)
        # Every client was asked to reconnect, and what was stored for it is replayed.
        live = reconnected(live)

    # The host taken out, one instance after the other, then back.
    cursor = host.cursor()
    guide.run("host-out")
    assert "active" not in units_active(host).values()
    assert host.prop("pushsvc.target", "ActiveState") == "inactive"
    assert stops(host.journal(after=cursor), units) == [
        (unit, event) for unit in units for event in ("stopping", "stopped")
    ]
    for _, client in live:
        assert client.close_code(timeout=60)[0] == 1012
    out = guide.run("host-back")
    assert units_active(host) == dict.fromkeys(units, "active")
    assert host.prop("pushsvc.target", "ActiveState") == "active"
    assert all(unit in out for unit in units), out
    live = reconnected(live, told=False)  # their close codes were read above

    # The store's format raised (a no-op when the fleet's database started in it), the
    # instances restarted one at a time; what is stored is replayed, and a push stored
    # after the restart is delivered. (Their fifth start in two minutes: forget the
    # count, as below.)
    host.systemctl("reset-failed", *units)
    cursor = host.cursor()
    out = guide.run("store-format")
    assert re.search(r"format (1|unrecorded) -> 2|already format 2", out), out
    assert out.strip().splitlines()[-1].startswith("MongoDB database pushsvc: format 2 ("), out
    assert_restarted_one_at_a_time(host.journal(after=cursor), units)
    live = reconnected(live)
    user, client = live[0]
    via_instance_1(host, f"""pushsvc push --user {user} --data '{{"after": "format"}}'""")
    assert [m["data"] for m in client.messages(1, timeout=30)] == [{"after": "format"}]

    # TLS, then mutual TLS between the instances, from the test's CA: it issues node
    # certificates only, so it is the cluster CA too. Each certificate names 127.0.0.1,
    # the host the instances advertise (ADVERTISE_HOST), and serves as a client one.
    issued = pki.issue("doc-fleet")
    for name, source in (
        ("node.pem", issued.cert),
        ("node.key", issued.key),
        ("ca.pem", pki.ca),
        ("cluster-ca.pem", pki.ca),
    ):
        host.write(f"{WORKDIR}/{name}", source.read_text(), 0o600)
    # The test starts these units more often than StartLimitBurst= lets a host do in
    # two minutes (a start loop stays down): forget the count, as an operator may.
    host.systemctl("reset-failed", *units)
    cursor = host.cursor()
    guide.run("tls-install")
    assert_restarted_one_at_a_time(host.journal(after=cursor), units)
    for _, client in live:
        assert client.close_code(timeout=60)[0] == 1012
    cursor = host.cursor()
    out = guide.run("tls-mutual")
    assert_restarted_one_at_a_time(host.journal(after=cursor), units)
    assert units_active(host) == dict.fromkeys(units, "active")
    # Each node advertises its cluster listener: the address its peers dial.
    cluster_port = int(site["CLUSTER_PORT"])
    for n in (1, 2):
        assert f"doc-host-{n}: grpc 127.0.0.1:{cluster_port + n}," in out, out
    listening = [e for e in node_events(host, cursor) if e["msg"] == "node listening"]
    assert sorted((e["node"], e["tls"], e["cluster"]) for e in listening) == [
        (f"doc-host-{n}", "mutual", f"0.0.0.0:{cluster_port + n}") for n in (1, 2)
    ], listening
    # An online-only push through instance 1 (wss:// clients now) reaches the user held by
    # each instance: for instance 2's, only by a Deliver call over mutual TLS, since
    # nothing of an online-only push is stored or replayed. New users: nothing is waiting
    # in their inboxes.
    held = one_client_per_node(ws, node_ids, clients, jwt_secret, pki.ca, users="mtls")
    reaches_every_node(host, held, "mutual")

    # Another CA: trusted beside the old one, then certificates from it, then alone.
    # Throughout, instance 1 forwards to instance 2 over mutual TLS, and the clients
    # connected before stay connected.
    new_ca = Pki(tmp_path / "new-ca", "pushsvc new test CA")
    renewed = new_ca.issue("doc-fleet-new")
    for name, source in (
        ("new-ca.pem", new_ca.ca),
        ("new.pem", renewed.cert),
        ("new.key", renewed.key),
    ):
        host.write(f"{WORKDIR}/{name}", source.read_text(), 0o600)
    cluster_1 = cluster_port + 1  # instance 1's cluster listener
    cursor = host.cursor()
    guide.run("ca-add")
    both = pki.ca.read_text() + new_ca.ca.read_text()
    for ca in ("ca.pem", "cluster-ca.pem"):
        assert host.read(f"{TLS_DIR}/{ca}") == both
    reloaded_every_instance(host, cursor, units)
    reaches_every_node(host, held, "both CAs")

    cursor = host.cursor()
    guide.run("tls-rotate")
    reloaded_every_instance(host, cursor, units)
    host.write(f"{WORKDIR}/ca.pem", new_ca.ca.read_text(), 0o600)  # the check's CA: the new one
    assert fingerprint(guide.run("tls-check")) == renewed.fingerprint
    reaches_every_node(host, held, "new certificates")
    assert cluster_accepts(cluster_1, issued, new_ca.ca)  # the old CA's, still trusted

    cursor = host.cursor()
    guide.run("ca-remove")
    for ca in ("ca.pem", "cluster-ca.pem"):
        assert host.read(f"{TLS_DIR}/{ca}") == new_ca.ca.read_text()
    reloaded_every_instance(host, cursor, units)
    assert not cluster_accepts(cluster_1, issued, new_ca.ca)
    assert cluster_accepts(cluster_1, renewed, new_ca.ca)
    reaches_every_node(host, held, "new CA only")
    clients.append(connect_ws(ws, "carol", secret=jwt_secret, ca=new_ca.ca))
    live = list(held.values())

    guide.run("remove")
    assert "active" not in units_active(host).values()
    for _, client in live:
        assert client.close_code(timeout=60)[0] == 1012
    guide.run("purge")
    assert gone(
        host, "/etc/pushsvc", "/var/lib/pushsvc", "/etc/systemd/system/pushsvc.target.wants"
    )
