"""The Debian package under a real systemd: PID 1 of a booted bookworm container
(``tests/host/machine.py``) starts, watches, restarts and stops the shipped units.

- the package installs what it says (files dpkg can verify, conffiles, the user, the
  command on the PATH), its Depends pull in what it needs, and systemd itself rates
  the loaded unit's sandbox at most 2.0;
- ``systemctl start`` returns with the unit active once the node said READY=1, and
  the unit stays ``activating`` while the node cannot register;
- the node runs inside the unit's sandbox (seccomp, no capabilities, read-only
  system, no W+X memory, ...) with grpcio and gevent working: a push reaches a
  WebSocket client;
- the watchdog kills a stopped node and ``Restart=on-failure`` brings it back, as
  after ``kill -9``; stored messages survive both;
- ``systemctl stop`` drains: clients get 1012, the node exits 0 before
  ``TimeoutStopSec=``, nothing stored is lost;
- ``pushsvc.target`` runs two instances sharing the WebSocket port on a fleet store;
- upgrading the package restarts running instances one at a time;
- the journal holds one entry per event, JSON that parses with ``PUSHSVC_LOG_FORMAT=json``,
  at the event's level as its priority (``journalctl -p warning`` finds warnings);
- ``systemctl reload`` (of an instance, of ``pushsvc.target``, of ``'pushsvc@*'``)
  swaps the TLS certificate once the new files pass the node's checks, and returns
  when that is done; open connections stay up; a bad pair fails the reload.

Behaviour, not timing: every wait polls a condition with a generous deadline.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from pathlib import Path
from typing import Any

import grpc
import pytest

from pushsvc_client.v1 import push_pb2
from tests.ferretdb import FerretDB
from tests.host.conftest import DEB_DIR, install
from tests.host.machine import PRIORITIES, Host, package_version, poll, service_ports
from tests.host.nodes import (
    TLS_DIR,
    Instance,
    assert_restarted_one_at_a_time,
    configure_shared,
    fleet_settings,
    install_tls,
    one_client_per_node,
    tls_settings,
)
from tests.nodeproc import auth
from tests.pki import Pki
from tests.test_tls import served_fingerprint
from tests.tlssocket import SharedTLSSocket
from tests.wsclient import Client

pytestmark = pytest.mark.timeout(600)

PROBE = Path(__file__).with_name("probe.py")
MAX_EXPOSURE = 2.0
# A text log line: timestamp, level, logger, message (tests/test_logs.py).
TEXT_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ (DEBUG|INFO|WARNING|ERROR|CRITICAL) \S+ ")


def proc_status(host: Host, pid: int) -> dict[str, str]:
    text = host.read(f"/proc/{pid}/status")
    return {k: v.strip() for k, _, v in (line.partition(":") for line in text.splitlines())}


def mounts(host: Host, pid: int) -> dict[str, set[str]]:
    """Mount point → options of the mount on top, as the process sees its filesystem."""
    out: dict[str, set[str]] = {}
    for line in host.read(f"/proc/{pid}/mountinfo").splitlines():
        fields = line.split()
        out[fields[4]] = set(fields[5].split(","))
    return out


def service_entries(host: Host, unit: str, invocation: str) -> list[dict[str, Any]]:
    """The journal entries of what the process of one run of ``unit`` wrote."""
    entries = []
    for entry in host.journal(unit):
        if (
            entry.get("_TRANSPORT") == "stdout"
            and entry.get("_SYSTEMD_INVOCATION_ID") == invocation
        ):
            assert isinstance(entry["MESSAGE"], str), entry  # journald stores bytes as a list
            entries.append(entry)
    return entries


def service_output(host: Host, unit: str, invocation: str) -> list[str]:
    """What the process of one run of ``unit`` wrote, one journal entry each."""
    return [str(entry["MESSAGE"]) for entry in service_entries(host, unit, invocation)]


def unit_messages(entries: list[dict[str, Any]], unit: str) -> list[str]:
    """systemd's own messages about ``unit`` (not the service's output)."""
    return [
        str(e.get("MESSAGE"))
        for e in entries
        if e.get("UNIT") == unit and e.get("_TRANSPORT") == "journal"
    ]


# -- the package -------------------------------------------------------------------


def test_package_installs_what_it_says(host: Host) -> None:
    version = package_version()
    assert host.run(
        ["dpkg-query", "-W", "-f=${Version} ${db:Status-Status}", "pushsvc"]
    ).stdout == (f"{version} installed")
    # Every shipped file is as packaged (md5sums), conffiles included.
    assert host.run(["dpkg", "--verify", "pushsvc"]).stdout == ""
    conffiles = host.run(["dpkg-query", "-W", "-f=${Conffiles}", "pushsvc"]).stdout
    assert "/etc/pushsvc/pushsvc.env" in conffiles and "/etc/pushsvc/1.env" in conffiles
    # Depends brought the interpreter: apt installed python3.11 for the package.
    assert "python3.11" in host.run(["apt-mark", "showauto"]).stdout.split()
    venv_python = host.run(["readlink", "-f", "/opt/pushsvc/venv/bin/python"]).stdout.strip()
    assert venv_python == "/usr/bin/python3.11"
    # `pushsvc` on the PATH.
    assert host.run(["sh", "-c", "command -v pushsvc"]).stdout.strip() == "/usr/bin/pushsvc"
    assert "serve" in host.run(["pushsvc", "--help"]).stdout
    # A system user without a shell; /etc/pushsvc for root and the group only.
    user = host.run(["getent", "passwd", "pushsvc"]).stdout.strip().split(":")
    assert int(user[2]) < 1000 and user[6] == "/usr/sbin/nologin", user
    modes = host.run(
        [
            "stat",
            "-c",
            "%n %a %U %G",
            "/etc/pushsvc",
            "/etc/pushsvc/pushsvc.env",
            "/etc/pushsvc/1.env",
        ]
    ).stdout.splitlines()
    assert modes == [
        "/etc/pushsvc 750 root pushsvc",
        "/etc/pushsvc/pushsvc.env 640 root pushsvc",
        "/etc/pushsvc/1.env 640 root pushsvc",
    ]
    # The units, as installed, load without a complaint (the executable exists here)...
    verify = host.run(
        ["systemd-analyze", "verify", "--man=false", "pushsvc@1.service", "pushsvc.target"],
        check=False,
    )
    assert verify.returncode == 0 and "pushsvc" not in verify.stdout + verify.stderr, verify
    # ...and systemd rates the sandbox of the loaded unit, not a file on the side.
    security = host.run(["systemd-analyze", "security", "--no-pager", "pushsvc@1.service"])
    match = re.search(
        r"Overall exposure level for pushsvc@1.service: (\d+(?:\.\d+)?)", security.stdout
    )
    assert match and float(match.group(1)) <= MAX_EXPOSURE, security.stdout
    # Installing starts nothing.
    assert host.prop("pushsvc@1.service", "ActiveState") == "inactive"


# -- start, READY=1, the sandbox --------------------------------------------------------


def test_start_returns_active_and_the_sandboxed_node_delivers(
    host: Host, clients: list[Client]
) -> None:
    node = Instance(host, "1", ws_port=service_ports())
    configure_shared(host, node.ws_port)
    node.configure()
    host.systemctl("start", node.unit)  # Type=notify: returns after READY=1
    state = node.state()
    assert (state["ActiveState"], state["SubState"]) == ("active", "running"), state
    assert state["StatusText"].startswith("ready: 0 connections"), state
    # READY=1 came after the listeners were bound: a client connects at once.
    clients.append(alice := node.connect("alice"))

    # The process runs as the unit says.
    pid = node.main_pid()
    status = proc_status(host, pid)
    uid = host.run(["id", "-u", "pushsvc"]).stdout.strip()
    assert status["Uid"].split() == [uid] * 4
    assert status["NoNewPrivs"] == "1"
    assert status["Seccomp"] == "2"  # a seccomp filter: SystemCallFilter=, MDWE, ...
    assert int(status["Seccomp_filters"]) >= 1
    for caps in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(status[caps], 16) == 0, (caps, status[caps])
    view = mounts(host, pid)
    assert "ro" in view["/"]  # ProtectSystem=strict
    assert "rw" in view["/var/lib/pushsvc/1"]  # StateDirectory=
    assert "/tmp" in view and "/dev" in view  # PrivateTmp=, PrivateDevices=
    assert "/home" in view and "/root" in view  # ProtectHome=

    # grpcio and gevent work in there: a push from here reaches the client.
    pushed = node.push("alice", {"over": "grpc"})
    [message] = alice.messages(1, timeout=30)
    assert message["seq"] == pushed.seqs[0] and message["data"] == {"over": "grpc"}
    # And `pushsvc push` on the host, with the instance's files loaded.
    host.run(
        "set -a; . /etc/pushsvc/pushsvc.env; . /etc/pushsvc/1.env; set +a; "
        """pushsvc push --user alice --data '{"over": "cli"}'"""
    )
    [message] = alice.messages(1, timeout=30)
    assert message["data"] == {"over": "cli"}
    assert node.main_pid() == pid  # nothing was restarted meanwhile


def test_unit_stays_activating_until_the_node_says_ready(host: Host) -> None:
    """With the fleet store down the node listens but cannot register, so it does not
    say READY=1: systemd keeps the unit activating, then active once it registers."""
    db = FerretDB()  # its port reserved, not started yet
    node = Instance(host, "2", ws_port=service_ports())
    try:
        configure_shared(
            host, node.ws_port, **fleet_settings(db.uri, f"ready_{uuid.uuid4().hex[:8]}")
        )
        node.configure()
        host.systemctl("start", "--no-block", node.unit)
        waiting = poll(
            lambda: (s := node.state()) and "waiting for the store" in s["StatusText"] and s,
            120,
            "the node to report it waits for the store",
        )
        assert (waiting["ActiveState"], waiting["SubState"]) == ("activating", "start"), waiting
        assert host.run(["systemctl", "is-active", node.unit], check=False).stdout.strip() == (
            "activating"
        )
        db.start()
        ready = host.wait_state(node.unit, "active", timeout=120)
        assert ready["StatusText"].startswith("ready:"), ready
        # The same process, not a restart.
        assert ready["NRestarts"] == "0", host.journal_text(node.unit, 80)
    finally:
        db.cleanup()


def test_sandbox_refuses_what_the_unit_forbids(host: Host) -> None:
    """The shipped unit with only ExecStart= replaced by a probe: what the node's
    sandbox allows, tried from inside it."""
    host.write("/usr/local/lib/pushsvc-test/probe.py", PROBE.read_text())
    host.write(
        "/etc/systemd/system/pushsvc@probe.service.d/probe.conf",
        "[Service]\nExecStart=\n"
        "ExecStart=/opt/pushsvc/venv/bin/python /usr/local/lib/pushsvc-test/probe.py\n",
    )
    host.write("/etc/pushsvc/probe.env", "", 0o640)
    host.systemctl("daemon-reload")
    host.systemctl("start", "pushsvc@probe.service")
    invocation = host.prop("pushsvc@probe.service", "InvocationID")
    lines = poll(
        lambda: service_output(host, "pushsvc@probe.service", invocation),
        60,
        "the probe's report in the journal",
    )
    report = json.loads(lines[0])
    host.systemctl("stop", "pushsvc@probe.service")

    assert report["uid"] != 0
    assert report["mmap_write_execute"] == "EPERM"  # MemoryDenyWriteExecute=
    assert report["mprotect_execute"] == "EPERM"
    assert report["setpriority"] == "EPERM"  # SystemCallFilter=~@resources
    assert report["personality"] == "EPERM"  # LockPersonality=
    assert report["unshare_user"] == "EPERM"  # RestrictNamespaces=
    assert report["socket_netlink"] == "EAFNOSUPPORT"  # RestrictAddressFamilies=
    assert report["socket_packet"] == "EAFNOSUPPORT"
    assert report["socket_tcp"] == "allowed"
    assert report["write_usr"] == "EROFS"  # ProtectSystem=strict
    assert report["write_etc"] == "EROFS"
    assert report["write_var_lib"] == "EROFS"
    assert report["write_state"] == "allowed"  # StateDirectory=
    assert report["list_home"] == "EACCES"  # ProtectHome=
    assert not {"mem", "kmsg", "vda", "sda", "loop0"} & set(report["dev"]), report["dev"]
    assert {"null", "zero", "urandom"} <= set(report["dev"])  # PrivateDevices=


# -- the watchdog, Restart= ---------------------------------------------------------------


def test_watchdog_and_kill_restart_the_node_and_keep_stored_messages(host: Host) -> None:
    node = Instance(host, "1", ws_port=service_ports())
    configure_shared(host, node.ws_port)
    node.configure()
    host.systemctl("start", node.unit)
    first = node.push("carol", {"n": 1}, ttl=3600)

    # A stopped process feeds no watchdog: after WatchdogSec= systemd kills it
    # (SIGABRT) and Restart=on-failure starts a new one.
    pid = node.main_pid()
    cursor = host.cursor()
    host.run(f"kill -STOP {pid}")
    restarted = poll(
        lambda: (
            (s := node.state())
            and s["ActiveState"] == "active"
            and int(s["MainPID"]) not in (0, pid)
            and s
        ),
        180,
        "systemd to restart the stopped node",
    )
    assert restarted["NRestarts"] == "1", restarted
    said = unit_messages(host.journal(node.unit, after=cursor), node.unit)
    assert any("Watchdog timeout" in m for m in said), said
    assert any("Failed with result 'watchdog'" in m for m in said), said

    with node.connect("carol", since=0) as carol:
        [message] = carol.messages(1, timeout=30)
        assert (message["seq"], message["data"]) == (first.seqs[0], {"n": 1})
    second = node.push("carol", {"n": 2}, ttl=3600)

    # kill -9: the same, without the watchdog.
    pid = int(restarted["MainPID"])
    cursor = host.cursor()
    host.run(f"kill -KILL {pid}")
    again = poll(
        lambda: (
            (s := node.state())
            and s["ActiveState"] == "active"
            and int(s["MainPID"]) not in (0, pid)
            and s
        ),
        180,
        "systemd to restart the killed node",
    )
    assert again["NRestarts"] == "2", again
    said = unit_messages(host.journal(node.unit, after=cursor), node.unit)
    assert any("Failed with result 'signal'" in m for m in said), said

    with node.connect("carol", since=0) as carol:
        replayed = carol.messages(2, timeout=30)
        assert [(m["seq"], m["data"]) for m in replayed] == [
            (first.seqs[0], {"n": 1}),
            (second.seqs[0], {"n": 2}),
        ]


# -- systemctl stop ---------------------------------------------------------------------


def test_stop_drains_within_the_stop_timeout(host: Host) -> None:
    node = Instance(host, "1", ws_port=service_ports())
    configure_shared(host, node.ws_port)
    node.configure()
    host.systemctl("start", node.unit)
    dave = node.connect("dave")
    try:
        pushed = [node.push("dave", {"n": n}, ttl=3600) for n in (1, 2, 3)]
        assert [m["data"] for m in dave.messages(3, timeout=30)] == [{"n": 1}, {"n": 2}, {"n": 3}]
        invocation = host.prop(node.unit, "InvocationID")
        cursor = host.cursor()
        host.systemctl("stop", node.unit)
        code, _ = dave.close_code(timeout=30)
        assert code == 1012
    finally:
        dave.close()
    state = host.show(node.unit, "ActiveState", "Result")
    # Result=success: the node exited 0 by itself; had systemd to SIGKILL it at
    # TimeoutStopSec=, that would read Result=timeout and the journal would say so.
    assert state == {"ActiveState": "inactive", "Result": "success"}, state
    said = unit_messages(host.journal(node.unit, after=cursor), node.unit)
    assert any("Deactivated successfully" in m for m in said), said
    assert not [m for m in said if "timed out" in m or "Killing" in m or "code=" in m], said
    events = poll(
        lambda: (
            (e := [json.loads(line)["msg"] for line in service_output(host, node.unit, invocation)])
            and "stopped" in e
            and e
        ),
        60,
        "the drain's last log line in the journal",
    )
    assert events.index("draining") < events.index("connections closed") < events.index("stopped")

    # Nothing stored was lost: a new process replays all of it.
    host.systemctl("start", node.unit)
    with node.connect("dave", since=0) as again:
        replayed = again.messages(3, timeout=30)
        assert [m["seq"] for m in replayed] == [p.seqs[0] for p in pushed]


# -- pushsvc.target: a fleet host -------------------------------------------------------


def start_fleet(
    host: Host,
    db: FerretDB,
    names: tuple[str, ...] = ("1", "2"),
    ca: Path | None = None,
    settings: dict[str, str] | None = None,
) -> list[Instance]:
    """Enabled instances sharing one WebSocket port, started with pushsvc.target;
    ``settings`` go to pushsvc.env, ``ca`` is what clients trust for a TLS fleet."""
    ws_port = service_ports()
    nodes = [Instance(host, name, ws_port, ca=ca) for name in names]
    configure_shared(
        host,
        ws_port,
        **fleet_settings(db.uri, f"fleet_{uuid.uuid4().hex[:8]}"),
        **(settings or {}),
    )
    for node in nodes:
        node.configure(PUSHSVC_NODE_ID=f"fleet-{node.name}")
        host.systemctl("enable", node.unit)
    # The target is ordered after what it wants: this returns once all said READY=1.
    host.systemctl("start", "pushsvc.target")
    for node in nodes:
        state = node.state()
        assert state["ActiveState"] == "active" and state["StatusText"].startswith("ready"), state
    return nodes


def test_target_runs_two_instances_sharing_the_port_on_a_fleet_store(
    host: Host, ferretdb: FerretDB, clients: list[Client]
) -> None:
    nodes = start_fleet(host, ferretdb)
    held = one_client_per_node(nodes[0].ws_port, {f"fleet-{n.name}" for n in nodes}, clients)
    # Any instance takes a push for any user: one holds the user, the other forwards.
    for node in nodes:
        for node_id, (user, client) in held.items():
            pushed = node.push(user, {"via": node.name, "to": node_id})
            [message] = client.messages(1, timeout=30)
            assert (message["seq"], message["data"]) == (
                pushed.seqs[0],
                {"via": node.name, "to": node_id},
            )
    with nodes[0].stub() as stub:
        listed = stub.ListNodes(push_pb2.ListNodesRequest(), metadata=auth(), timeout=30)
    assert sorted(n.node_id for n in listed.nodes) == ["fleet-1", "fleet-2"]

    # Stopping the target stops (drains) every instance.
    host.systemctl("stop", "pushsvc.target")
    for _, client in held.values():
        assert client.close_code(timeout=60)[0] == 1012
    for node in nodes:
        # systemctl waits for the target's own stop job; the instances' jobs follow it.
        assert host.wait_state(node.unit, "inactive", timeout=120)["Result"] == "success"


def test_upgrade_restarts_running_instances_one_at_a_time(
    host: Host, ferretdb: FerretDB, upgrade_package: Path, clients: list[Client]
) -> None:
    nodes = start_fleet(host, ferretdb)
    held = one_client_per_node(nodes[0].ws_port, {f"fleet-{n.name}" for n in nodes}, clients)
    stored = {user: nodes[0].push(user, {"before": "upgrade"}) for user, _ in held.values()}
    for _, client in held.values():
        client.messages(1, timeout=30)
    pids = {node.name: node.main_pid() for node in nodes}
    new = host.copy_in(upgrade_package, DEB_DIR)
    cursor = host.cursor()

    output = install(host, new)

    version = host.run(["dpkg-query", "-W", "-f=${Version}", "pushsvc"]).stdout
    assert version == f"{package_version()}+upgrade1"
    assert_restarted_one_at_a_time(host.journal(after=cursor), [node.unit for node in nodes])
    assert "restarting pushsvc@1.service" in output and "restarting pushsvc@2.service" in output
    for node in nodes:
        state = node.state()
        assert state["ActiveState"] == "active" and int(state["MainPID"]) != pids[node.name], state
        assert state["NRestarts"] == "0"  # restarted by the upgrade, not after a failure
    # Each client was asked to reconnect (1012) and misses nothing when it does.
    for user, client in held.values():
        assert client.close_code(timeout=60)[0] == 1012
        with nodes[1].connect(user, since=0) as again:
            [message] = again.messages(1, timeout=30)
            assert message["seq"] == stored[user].seqs[0]


def test_remove_stops_instances_and_purge_deletes_state(host: Host, clients: list[Client]) -> None:
    node = Instance(host, "1", ws_port=service_ports())
    configure_shared(host, node.ws_port)
    node.configure()
    host.systemctl("enable", "--now", node.unit)
    clients.append(erin := node.connect("erin"))
    node.push("erin", {"n": 1})
    erin.messages(1, timeout=30)

    host.run("apt remove -y pushsvc", timeout=300)
    assert erin.close_code(timeout=60)[0] == 1012  # drained, not killed
    assert host.prop(node.unit, "ActiveState") == "inactive"
    running = host.run("cat /proc/[0-9]*/cmdline 2>/dev/null | tr '\\0' ' '", check=False).stdout
    assert "pushsvc serve" not in running
    # Kept: configuration, state, the user; a reinstall carries on.
    kept = host.run("ls /etc/pushsvc /var/lib/pushsvc/1; id -u pushsvc").stdout
    assert "pushsvc.env" in kept and "pushsvc.db" in kept

    host.run("apt purge -y pushsvc", timeout=300)
    for path in ("/etc/pushsvc", "/var/lib/pushsvc", "/etc/systemd/system/pushsvc.target.wants"):
        assert host.run(["test", "-e", path], check=False).returncode == 1, path
    assert host.run(["getent", "passwd", "pushsvc"], check=False).returncode == 2
    assert host.run(["getent", "group", "pushsvc"], check=False).returncode == 2
    assert host.run(["dpkg-statoverride", "--list", "/etc/pushsvc*"], check=False).stdout == ""


# -- logs ---------------------------------------------------------------------------------


def test_journal_has_one_entry_per_event(host: Host) -> None:
    """One entry per event, at the event's level as journald's priority."""
    node = Instance(host, "1", ws_port=service_ports())
    # The shipped PUSHSVC_LOG_FORMAT=json, and the WebSocket port beyond loopback
    # without TLS, which the node warns about at start.
    configure_shared(host, node.ws_port, PUSHSVC_WS_ADDR=f"0.0.0.0:{node.ws_port}")

    def session() -> tuple[str, int]:
        """Run the node through connections, a push and a refused call; its invocation."""
        host.systemctl("restart", node.unit)
        invocation = host.prop(node.unit, "InvocationID")
        for user in ("frank", "grace"):
            with node.connect(user) as client:
                node.push(user, {"secret-payload": "never logged"})
                client.messages(1, timeout=30)
        with node.stub() as stub, pytest.raises(grpc.RpcError) as refused:
            stub.Push(push_pb2.PushRequest(user_ids=[], payload=b"{}"), metadata=auth(), timeout=30)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        return invocation, 2

    node.configure()
    invocation, connections = session()
    lines = poll(
        lambda: (
            (out := service_output(host, node.unit, invocation))
            and sum("connection closed" in line for line in out) == connections
            and out
        ),
        60,
        "the connections' log lines in the journal",
    )
    events = [json.loads(line) for line in lines]  # every entry is one JSON event
    for event in events:
        assert {"ts", "level", "logger", "msg"} <= set(event), event
    assert [e["msg"] for e in events].count("connection opened") == connections
    assert any(e["msg"] == "rpc refused" for e in events), events
    assert not [line for line in lines if "never logged" in line]
    # journald took each line's priority from its prefix (and stripped the prefix).
    entries = service_entries(host, node.unit, invocation)[: len(events)]
    assert [int(e["PRIORITY"]) for e in entries] == [PRIORITIES[e["level"]] for e in events]
    [warning] = [e for e in events if e["level"] == "WARNING"]
    assert "beyond this host, without TLS" in warning["msg"], warning
    shown = host.run(
        ["journalctl", f"_SYSTEMD_INVOCATION_ID={invocation}", "-p", "warning", "-o", "cat"]
    ).stdout.splitlines()
    assert [json.loads(line) for line in shown] == [warning]

    node.configure(PUSHSVC_LOG_FORMAT="text")
    invocation, connections = session()
    lines = poll(
        lambda: (
            (out := service_output(host, node.unit, invocation))
            and sum("connection closed" in line for line in out) == connections
            and out
        ),
        60,
        "the connections' log lines in the journal",
    )
    for line in lines:
        assert TEXT_LINE.match(line), f"not one event per line: {line!r}"
    assert sum(" connection opened " in line for line in lines) == connections
    for entry in service_entries(host, node.unit, invocation)[: len(lines)]:
        level = TEXT_LINE.match(str(entry["MESSAGE"]))
        assert level and int(entry["PRIORITY"]) == PRIORITIES[level.group(1)], entry


# -- systemctl reload: TLS certificates ---------------------------------------------------


def reload_lines(host: Host, unit: str, after: str) -> list[dict[str, Any]]:
    """What the unit's processes (the node, and ``pushsvc reload`` for systemd) said
    about the certificate since ``after``: the node's JSON events, the other lines as
    ``{"line": ...}``; each with its PRIORITY."""
    events = []
    for entry in host.journal(unit, after=after):
        message = str(entry["MESSAGE"])
        if entry.get("_TRANSPORT") == "stdout" and "TLS certificate" in message:
            event = json.loads(message) if message.startswith("{") else {"line": message}
            events.append({**event, "PRIORITY": entry["PRIORITY"]})
    return events


def test_reload_swaps_tls_certificates_without_dropping_connections(
    host: Host, pki: Pki, clients: list[Client]
) -> None:
    """An instance serving TLS from files installed as the guide says; its certificate
    rotated with `systemctl reload` while a wss:// client stays connected; a bad pair
    refused, the reload failed, the node still serving the current certificate."""
    first, second, third = (pki.issue(f"host-{n}") for n in (1, 2, 3))
    install_tls(host, first, pki.ca)
    node = Instance(host, "1", ws_port=service_ports(), ca=pki.ca)
    configure_shared(host, node.ws_port, **tls_settings())
    node.configure()
    host.systemctl("start", node.unit)
    modes = host.run(["stat", "-c", "%a %U %G %n", TLS_DIR, *tls_settings().values()])
    assert modes.stdout.split("\n")[:4] == [
        f"750 root pushsvc {TLS_DIR}",
        f"640 root pushsvc {TLS_DIR}/node.pem",
        f"640 root pushsvc {TLS_DIR}/node.key",
        f"640 root pushsvc {TLS_DIR}/ca.pem",
    ]
    clients.append(alice := node.connect("alice"))  # wss://, through the sandboxed node
    for port in (node.ws_port, node.grpc_port):
        assert served_fingerprint(port, pki.ca) == first.fingerprint
    pid = node.main_pid()

    install_tls(host, second, pki.ca)
    cursor = host.cursor()
    host.systemctl("reload", node.unit)
    # `systemctl reload` returned once the node had reloaded: nothing to wait for.
    for port in (node.ws_port, node.grpc_port):
        assert served_fingerprint(port, pki.ca) == second.fingerprint, port
    state = node.state()
    assert (state["ActiveState"], state["MainPID"], state["NRestarts"]) == ("active", str(pid), "0")
    poll(
        lambda: any(
            m.startswith("Reloaded ")
            for m in unit_messages(host.journal(node.unit, after=cursor), node.unit)
        ),
        30,
        "systemd's 'Reloaded' in the journal",
    )
    [loaded] = poll(lambda: reload_lines(host, node.unit, cursor), 30, "the reload's log line")
    assert (loaded["msg"], loaded["sha256"], loaded["PRIORITY"]) == (
        "TLS certificate reloaded",
        second.fingerprint,
        "6",
    )
    # The connection made before stays up, on the certificate it was set up with.
    tls_socket = alice.conn.socket
    assert isinstance(tls_socket, SharedTLSSocket)
    der = tls_socket.getpeercert(binary_form=True)
    assert der is not None and hashlib.sha256(der).hexdigest() == first.fingerprint
    pushed = node.push("alice", {"after": "reload"})  # gRPC over TLS, new handshake
    [message] = alice.messages(1, timeout=30)
    assert (message["seq"], message["data"]) == (pushed.seqs[0], {"after": "reload"})

    # A bad pair (the key of another certificate): the reload fails, nothing changes.
    install_tls(host, third, pki.ca, key_of=first)
    cursor = host.cursor()
    refused = host.systemctl("reload", node.unit, check=False)
    assert refused.returncode != 0, refused
    poll(
        lambda: any(
            m.startswith("Reload failed ")
            for m in unit_messages(host.journal(node.unit, after=cursor), node.unit)
        ),
        30,
        "systemd's 'Reload failed' in the journal",
    )
    logged = poll(
        lambda: len(lines := reload_lines(host, node.unit, cursor)) == 2 and lines,
        30,
        "the refusal's log lines",
    )
    # The node's, and the line of `pushsvc reload` (ExecReload=) for systemd.
    [kept], [helper] = [e for e in logged if "msg" in e], [e for e in logged if "line" in e]
    assert kept["msg"].startswith("TLS certificate not reloaded, the current one stays: ")
    assert "does not belong to the certificate" in kept["msg"] and kept["PRIORITY"] == "3"
    assert helper["line"].startswith(f"pushsvc: error: node {pid} kept its current TLS")
    assert helper["PRIORITY"] == "3"
    assert host.run(
        ["journalctl", "-u", node.unit, "-p", "err", "-g", "TLS certificate not reloaded"]
    ).stdout
    for port in (node.ws_port, node.grpc_port):
        assert served_fingerprint(port, pki.ca) == second.fingerprint, port
    state = node.state()
    assert (state["ActiveState"], state["MainPID"], state["NRestarts"]) == ("active", str(pid), "0")
    pushed = node.push("alice", {"after": "refused reload"})
    [message] = alice.messages(1, timeout=30)
    assert message["seq"] == pushed.seqs[0]


def test_reloading_the_target_reloads_every_instance(
    host: Host, ferretdb: FerretDB, pki: Pki, clients: list[Client]
) -> None:
    """Both forms of "every instance": the target (ReloadPropagatedFrom=) and the
    glob. The instances keep forwarding to each other over TLS, with the new
    certificates, and their clients stay connected."""
    first, second, third = (pki.issue(f"fleet-{n}") for n in (1, 2, 3))
    install_tls(host, first, pki.ca)
    nodes = start_fleet(host, ferretdb, ca=pki.ca, settings=tls_settings())
    held = one_client_per_node(
        nodes[0].ws_port, {f"fleet-{n.name}" for n in nodes}, clients, ca=pki.ca
    )
    pids = [node.main_pid() for node in nodes]
    for issued, how in ((second, "pushsvc.target"), (third, "pushsvc@*")):
        install_tls(host, issued, pki.ca)
        host.systemctl("reload", how)
        for node in nodes:  # each instance, on its own gRPC port
            assert served_fingerprint(node.grpc_port, pki.ca) == issued.fingerprint, (how, node)
        # Through either instance (one holds the user, the other forwards over TLS).
        for node in nodes:
            for user, client in held.values():
                pushed = node.push(user, {"via": node.name, "after": how})
                [message] = client.messages(1, timeout=30)
                assert message["seq"] == pushed.seqs[0], (how, node.name, user)
    assert [node.main_pid() for node in nodes] == pids
    for node in nodes:
        assert node.state()["NRestarts"] == "0"
