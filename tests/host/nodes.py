"""Instances of pushsvc@.service in the booted host, configured as an operator does:
``/etc/pushsvc/pushsvc.env`` (the shipped file plus the test's settings) and
``/etc/pushsvc/N.env``. Clients and gRPC callers run on the test machine and reach
the instances over the shared network.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from pushsvc.auth import mint_token
from pushsvc_client.v1 import push_pb2, push_pb2_grpc
from tests.host.machine import Host, service_ports
from tests.nodeproc import API_KEY, CLUSTER_KEY, JWT_SECRET, auth
from tests.pki import Issued
from tests.wsclient import Client, dial

SHIPPED_ENV = "/root/pushsvc-etc.shipped/pushsvc.env"


def env_lines(settings: dict[str, str]) -> str:
    return "".join(f"{key}={value}\n" for key, value in settings.items())


def configure_shared(host: Host, ws_port: int, **settings: str) -> None:
    """The shipped pushsvc.env with the test's settings appended (later lines win)."""
    base = {
        "PUSHSVC_WS_ADDR": f"127.0.0.1:{ws_port}",
        "PUSHSVC_JWT_SECRET": JWT_SECRET,
        "PUSHSVC_API_KEYS": API_KEY,
    }
    text = host.read(SHIPPED_ENV) + "\n# tests\n" + env_lines({**base, **settings})
    host.write("/etc/pushsvc/pushsvc.env", text, 0o640)


def fleet_settings(mongo_uri: str, database: str) -> dict[str, str]:
    return {
        "PUSHSVC_MONGO_URI": mongo_uri,
        "PUSHSVC_MONGO_DB": database,
        "PUSHSVC_CLUSTER_KEY": CLUSTER_KEY,
        "PUSHSVC_HEARTBEAT_INTERVAL": "1",
        # The instances of a fleet host share the WebSocket port: asked for explicitly.
        "PUSHSVC_WS_REUSE_PORT": "true",
    }


def connect_ws(
    port: int,
    user: str,
    *,
    since: int | None = None,
    secret: str = JWT_SECRET,
    ca: Path | None = None,
    token: str | None = None,
) -> Client:
    """A WebSocket client of ``user`` (with ``token``, else one signed with ``secret``):
    ``wss://``, trusting ``ca``, when it is given."""
    scheme = "ws" if ca is None else "wss"
    if token is None:
        token = mint_token(secret, user, 3600, None)
    url = f"{scheme}://127.0.0.1:{port}/ws?token={token}"
    if since is not None:
        url += f"&since={since}"
    context = None if ca is None else ssl.create_default_context(cafile=str(ca))
    return Client(dial(url, context))


TLS_DIR = "/etc/pushsvc/tls"


def install_tls(host: Host, issued: Issued, ca: Path, *, key_of: Issued | None = None) -> None:
    """``issued``'s chain and key (or ``key_of``'s key) and the CA in TLS_DIR, as the
    operations guide says: 0640 root:pushsvc in a 0750 root:pushsvc directory, each
    file written aside and renamed into place (never half a file)."""
    host.run(f"install -d -m 0750 -o root -g pushsvc {TLS_DIR}")
    for source, name in (
        (ca, "ca.pem"),
        ((key_of or issued).key, "node.key"),
        (issued.cert, "node.pem"),
    ):
        host.run(
            f"install -m 0640 -o root -g pushsvc /dev/stdin {TLS_DIR}/{name}.new && "
            f"mv {TLS_DIR}/{name}.new {TLS_DIR}/{name}",
            input=source.read_text(),
        )


def tls_settings() -> dict[str, str]:
    """pushsvc.env's lines for the files of ``install_tls``."""
    return {
        "PUSHSVC_TLS_CERT": f"{TLS_DIR}/node.pem",
        "PUSHSVC_TLS_KEY": f"{TLS_DIR}/node.key",
        "PUSHSVC_TLS_CA": f"{TLS_DIR}/ca.pem",
    }


@dataclass
class Instance:
    """``pushsvc@<name>.service`` with its own gRPC and admin ports."""

    host: Host
    name: str
    ws_port: int
    grpc_port: int = field(default_factory=service_ports)
    admin_port: int = field(default_factory=service_ports)
    ca: Path | None = None  # the instance serves TLS: its clients trust this CA

    @property
    def unit(self) -> str:
        return f"pushsvc@{self.name}.service"

    @property
    def grpc_addr(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def configure(self, **settings: str) -> None:
        base = {
            "PUSHSVC_GRPC_ADDR": self.grpc_addr,
            "PUSHSVC_ADMIN_ADDR": f"127.0.0.1:{self.admin_port}",
            "PUSHSVC_DATA_DIR": f"/var/lib/pushsvc/{self.name}",
        }
        self.host.write(f"/etc/pushsvc/{self.name}.env", env_lines({**base, **settings}), 0o640)

    def state(self) -> dict[str, str]:
        return self.host.show(
            self.unit, "ActiveState", "SubState", "Result", "MainPID", "NRestarts", "StatusText"
        )

    def main_pid(self) -> int:
        return self.host.main_pid(self.unit)

    @contextmanager
    def stub(self) -> Iterator[push_pb2_grpc.PushServiceStub]:
        if self.ca is None:
            channel = grpc.insecure_channel(self.grpc_addr)
        else:
            credentials = grpc.ssl_channel_credentials(self.ca.read_bytes())
            channel = grpc.secure_channel(self.grpc_addr, credentials)
        try:
            yield push_pb2_grpc.PushServiceStub(channel)
        finally:
            channel.close()

    def push(self, user: str, data: Any, ttl: int | None = 3600) -> push_pb2.PushResponse:
        request = push_pb2.PushRequest(user_ids=[user], payload=json.dumps(data).encode())
        if ttl is not None:
            request.ttl_seconds = ttl
        with self.stub() as stub:
            response: push_pb2.PushResponse = stub.Push(request, metadata=auth(), timeout=30)
        return response

    def connect(self, user: str, since: int | None = None) -> Client:
        return connect_ws(self.ws_port, user, since=since, ca=self.ca)


def one_client_per_node(
    ws_port: int,
    node_ids: set[str],
    clients: list[Client],
    secret: str = JWT_SECRET,
    ca: Path | None = None,
    users: str = "user",
) -> dict[str, tuple[str, Client]]:
    """Connect to a WebSocket port the instances share until each of ``node_ids`` holds
    a client: node id → (user, client), users named ``<users>-<n>``. The kernel picks
    the instance per connection."""
    held: dict[str, tuple[str, Client]] = {}
    for attempt in range(200):
        user = f"{users}-{attempt}"
        client = connect_ws(ws_port, user, secret=secret, ca=ca)
        clients.append(client)
        node_id = client.welcome["node"]
        if node_id not in held:
            held[node_id] = (user, client)
        if set(held) == node_ids:
            return held
    raise AssertionError(f"200 connections reached {sorted(held)} only, not {sorted(node_ids)}")


def assert_restarted_one_at_a_time(entries: list[dict[str, Any]], units: list[str]) -> None:
    """systemd's journal shows each unit stopped and started again, one unit after the
    other: the next is stopped only once the previous has started (said READY=1), so
    one instance of the host serves at every moment."""
    order = []
    for entry in entries:
        unit = entry.get("UNIT")
        message = str(entry.get("MESSAGE", ""))
        if unit in units and entry.get("_TRANSPORT") == "journal":
            if message.startswith("Stopping "):
                order.append((unit, "stopping"))
            elif message.startswith("Started "):
                order.append((unit, "started"))
    restarted = [unit for unit, event in order if event == "stopping"]
    assert sorted(restarted) == sorted(units), order
    assert order == [(u, e) for u in restarted for e in ("stopping", "started")], order
