"""TLS: wss:// and gRPC over TLS, mutual TLS between nodes, reload on SIGHUP.

Certificates come from a CA made at run time (tests/pki.py). The nodes are
real ``pushsvc serve`` processes; clients check the server's certificate
against the test CA, as a deployment's clients would. The clients of every
language are run over TLS by their own test files (test_*_client.py,
test_browser.py).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from cryptography.hazmat.primitives import serialization
from websockets.sync.client import connect

from pushsvc.config import load_settings
from pushsvc.errors import ConfigError
from pushsvc.tls import TLSFiles, cleartext_warnings, load
from pushsvc_client.v1 import node_pb2, node_pb2_grpc, push_pb2
from tests.ferretdb import FerretDB, ferretdb  # noqa: F401
from tests.nodeproc import API_KEY, CLUSTER_KEY, NodeProcess, auth
from tests.pki import Issued, Pki
from tests.tlssocket import SharedTLSSocket
from tests.waiting import wait_for
from tests.wsclient import open_ws, token

# -- helpers ---------------------------------------------------------------------------------


def handshake(port: int, ca: Path | None = None, **context: object) -> ssl.SSLSocket:
    """A TLS handshake with 127.0.0.1:port (ALPN h2 and http/1.1, as gRPC and
    browsers offer); ``context`` sets attributes of the client's SSLContext."""
    ctx = ssl.create_default_context(cafile=str(ca) if ca else None)
    if ca is None:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    for name, value in context.items():
        if name == "ciphers":
            ctx.set_ciphers(str(value))
        else:
            setattr(ctx, name, value)
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        return ctx.wrap_socket(sock, server_hostname="127.0.0.1")
    except BaseException:
        sock.close()
        raise


def read_to_end(sock: socket.socket) -> bytes:
    """Everything until the peer closes (or resets) the connection."""
    data = b""
    try:
        while chunk := sock.recv(4096):
            data += chunk
    except ConnectionResetError:
        pass
    return data


def served_fingerprint(port: int, ca: Path) -> str:
    """SHA-256 of the certificate a new handshake with 127.0.0.1:port gets."""
    with handshake(port, ca) as tls:
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        return hashlib.sha256(der).hexdigest()


def replace_files(issued: Issued, cert: Path, key: Path, *, key_of: Issued | None = None) -> None:
    """Put ``issued``'s chain (and its key, or ``key_of``'s) where the node reads them,
    each file replaced in one step, as a certificate manager does."""
    for source, target in ((issued.cert, cert), ((key_of or issued).key, key)):
        tmp = target.with_suffix(".new")
        tmp.write_bytes(source.read_bytes())
        os.replace(tmp, target)


def reloaded(node: NodeProcess, issued: Issued) -> Callable[[], bool]:
    """Whether the node's log says it loaded ``issued`` (the reload's log line)."""
    return lambda: f"sha256={issued.fingerprint}" in node.log()


def no_error_lines(node: NodeProcess) -> None:
    """Failed handshakes are not errors, and gRPC's core writes nothing of its own."""
    bad = [
        line
        for line in node.log().splitlines()
        if " ERROR " in line or "CRITICAL" in line or "Handshake failed" in line
    ]
    assert not bad, bad


def deliver(
    channel: grpc.Channel, key: str = CLUSTER_KEY, node_id: str = ""
) -> node_pb2.DeliverResponse:
    stub = node_pb2_grpc.NodeServiceStub(channel)
    response: node_pb2.DeliverResponse = stub.Deliver(
        node_pb2.DeliverRequest(node_id=node_id),
        metadata=[("authorization", f"Bearer {key}")],
        timeout=10,
    )
    return response


def cluster_addr_of(node: NodeProcess) -> str:
    """The address the node advertises to its peers (ListNodes): its cluster listener."""
    with node.stub() as stub:
        nodes = stub.ListNodes(push_pb2.ListNodesRequest(), metadata=auth(), timeout=10).nodes
    (me,) = [n for n in nodes if n.node_id == node.node_id]
    return str(me.grpc_addr)


# -- loading and checking the files ----------------------------------------------------------


@pytest.fixture(scope="module")
def bad_files(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Files that must not be accepted, and two that are fine."""
    d = tmp_path_factory.mktemp("bad-tls")
    good = pki.issue("good")
    other = pki.issue("other")
    expired = pki.issue(
        "expired",
        not_after=datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5),
    )
    not_pem = d / "not.pem"
    not_pem.write_text("this is not a certificate\n")
    encrypted = d / "encrypted.key"
    key = serialization.load_pem_private_key(good.key.read_bytes(), password=None)
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    return {
        "cert": good.cert,
        "key": good.key,
        "other_key": other.key,
        "expired_cert": expired.cert,
        "expired_key": expired.key,
        "not_pem": not_pem,
        "encrypted_key": encrypted,
        "directory": d,
        "missing": d / "missing.pem",
        "ca": pki.ca,
    }


BAD_FILES = {
    # case: (cert, key, cluster CA, the message's words)
    "missing cert": ("missing", "key", None, "cannot read PUSHSVC_TLS_CERT {missing}: No such"),
    "cert is a directory": ("directory", "key", None, "cannot read PUSHSVC_TLS_CERT {directory}"),
    "cert not PEM": ("not_pem", "key", None, "PUSHSVC_TLS_CERT {not_pem} holds no PEM certificate"),
    "key not PEM": ("cert", "not_pem", None, "PUSHSVC_TLS_KEY {not_pem} holds no PEM private key"),
    "missing key": ("cert", "missing", None, "cannot read PUSHSVC_TLS_KEY {missing}"),
    "key of another certificate": (
        "cert",
        "other_key",
        None,
        "PUSHSVC_TLS_KEY {other_key} does not belong to the certificate in PUSHSVC_TLS_CERT",
    ),
    "encrypted key": ("cert", "encrypted_key", None, "{encrypted_key} is encrypted"),
    "expired": ("expired_cert", "expired_key", None, "PUSHSVC_TLS_CERT {expired_cert} expired on"),
    "cluster CA not PEM": (
        "cert",
        "key",
        "not_pem",
        "PUSHSVC_CLUSTER_CA {not_pem} holds no PEM certificate",
    ),
    "missing cluster CA": ("cert", "key", "missing", "cannot read PUSHSVC_CLUSTER_CA {missing}"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_files_are_one_clear_line(case: str, bad_files: dict[str, Path]) -> None:
    cert, key, cluster_ca, words = BAD_FILES[case]
    files = TLSFiles(
        str(bad_files[cert]),
        str(bad_files[key]),
        cluster_ca=str(bad_files[cluster_ca]) if cluster_ca else None,
    )
    with pytest.raises(ConfigError) as info:
        load(files)
    message = str(info.value)
    assert words.format(**{k: str(v) for k, v in bad_files.items()}) in message
    assert "\n" not in message


def test_good_files_load(bad_files: dict[str, Path]) -> None:
    material = load(
        TLSFiles(str(bad_files["cert"]), str(bad_files["key"]), cluster_ca=str(bad_files["ca"]))
    )
    assert material.subject == "CN=good"
    assert material.context.minimum_version == ssl.TLSVersion.TLSv1_2


SETTING_ERRORS = {
    "cert without key": ({"PUSHSVC_TLS_CERT": "c.pem"}, "go together"),
    "key without cert": ({"PUSHSVC_TLS_KEY": "k.pem"}, "go together"),
    "cluster CA without cert": ({"PUSHSVC_CLUSTER_CA": "ca.pem"}, "needs PUSHSVC_TLS_CERT"),
    "cluster CA without cluster addr": (
        {"PUSHSVC_TLS_CERT": "c", "PUSHSVC_TLS_KEY": "k", "PUSHSVC_CLUSTER_CA": "ca"},
        "needs PUSHSVC_CLUSTER_ADDR",
    ),
    "cluster addr without CA": ({"PUSHSVC_CLUSTER_ADDR": "127.0.0.1:0"}, "set PUSHSVC_CLUSTER_CA"),
}


@pytest.mark.parametrize("case", list(SETTING_ERRORS))
def test_incomplete_tls_settings_are_refused(case: str) -> None:
    env, words = SETTING_ERRORS[case]
    with pytest.raises(ConfigError, match=words):
        load_settings(environ=env)


def serve(env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("PUSHSVC_")}
    full.update(
        PUSHSVC_WS_ADDR="127.0.0.1:0",
        PUSHSVC_GRPC_ADDR="127.0.0.1:0",
        PUSHSVC_ADMIN_ADDR="127.0.0.1:0",
        PUSHSVC_DATA_DIR=str(cwd / "data"),
        PUSHSVC_API_KEYS=API_KEY,
        PUSHSVC_JWT_SECRET="test-jwt-secret-of-sufficient-length",
        **env,
    )
    return subprocess.run(
        [sys.executable, "-m", "pushsvc", "serve"],
        env=full,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("cert", "key", "words"),
    [
        ("missing", "key", "cannot read PUSHSVC_TLS_CERT"),
        ("directory", "key", "Is a directory"),
        ("cert", "other_key", "does not belong to the certificate"),
    ],
)
def test_serve_stops_on_bad_files_with_exit_2(
    cert: str, key: str, words: str, bad_files: dict[str, Path], tmp_path: Path
) -> None:
    proc = serve(
        {"PUSHSVC_TLS_CERT": str(bad_files[cert]), "PUSHSVC_TLS_KEY": str(bad_files[key])},
        tmp_path,
    )
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pushsvc: error: "), proc.stderr
    assert words in lines[0]


def test_a_bad_cluster_ca_stops_serve_with_exit_2(
    bad_files: dict[str, Path], tmp_path: Path
) -> None:
    proc = serve(
        {
            "PUSHSVC_TLS_CERT": str(bad_files["cert"]),
            "PUSHSVC_TLS_KEY": str(bad_files["key"]),
            "PUSHSVC_CLUSTER_CA": str(bad_files["not_pem"]),
            "PUSHSVC_CLUSTER_ADDR": "127.0.0.1:0",
        },
        tmp_path,
    )
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert proc.stderr.strip() == (
        f"pushsvc: error: PUSHSVC_CLUSTER_CA {bad_files['not_pem']} holds no PEM certificate"
    )


def test_check_config_checks_the_tls_files(bad_files: dict[str, Path], tmp_path: Path) -> None:
    """``pushsvc check-config`` refuses what ``serve`` would, before a start."""

    def check(key: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PUSHSVC_")}
        env.update(
            PUSHSVC_DATA_DIR=str(tmp_path / "data"),
            PUSHSVC_TLS_CERT=str(bad_files["cert"]),
            PUSHSVC_TLS_KEY=str(bad_files[key]),
        )
        return subprocess.run(
            [sys.executable, "-m", "pushsvc", "check-config"],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )

    good = check("key")
    assert good.returncode == 0 and good.stdout.startswith("config ok"), good
    bad = check("other_key")
    assert bad.returncode == 2, bad
    assert bad.stderr.startswith(f"pushsvc: error: PUSHSVC_TLS_KEY {bad_files['other_key']} does")


def test_cleartext_beyond_loopback_is_warned_about() -> None:
    open_all = load_settings(
        environ={"PUSHSVC_WS_ADDR": "0.0.0.0:8080", "PUSHSVC_GRPC_ADDR": "10.0.0.5:50051"}
    )
    ws, grpc_warning = cleartext_warnings(open_all)
    assert ws.startswith("WebSocket listens on 0.0.0.0:8080, beyond this host, without TLS")
    assert "set PUSHSVC_TLS_CERT and PUSHSVC_TLS_KEY" in ws
    assert grpc_warning.startswith("gRPC listens on 10.0.0.5:50051, beyond this host")
    tls = load_settings(
        environ={
            "PUSHSVC_WS_ADDR": "0.0.0.0:8080",
            "PUSHSVC_TLS_CERT": "c.pem",
            "PUSHSVC_TLS_KEY": "k.pem",
        }
    )
    assert cleartext_warnings(tls) == []
    assert cleartext_warnings(load_settings(environ={"PUSHSVC_WS_ADDR": "127.0.0.1:8080"})) == []
    (admin,) = cleartext_warnings(
        load_settings(
            environ={"PUSHSVC_WS_ADDR": "127.0.0.1:0", "PUSHSVC_ADMIN_ADDR": "10.0.0.5:9090"}
        )
    )
    assert "bind PUSHSVC_ADMIN_ADDR to 127.0.0.1" in admin


# -- the WebSocket listener's handshakes ---------------------------------------------------

HANDSHAKE_TIMEOUT = 3.0  # short for the test; asserted only as "not before"


def test_a_silent_or_failed_handshake_is_closed_quietly(
    node_factory: Callable[..., NodeProcess], tls_env: dict[str, str], pki: Pki
) -> None:
    """A client that sends nothing is cut at the handshake deadline (the TLS handshake
    counts against handshake_timeout); one that speaks plain HTTP gets nothing in
    clear and is closed; no error is logged; the listener goes on serving."""
    node = node_factory(env={**tls_env, "PUSHSVC_HANDSHAKE_TIMEOUT": str(HANDSHAKE_TIMEOUT)})
    opened = time.monotonic()  # before the node can have accepted either
    silent = socket.create_connection(("127.0.0.1", node.ws_port), timeout=60)
    plain = socket.create_connection(("127.0.0.1", node.ws_port), timeout=60)
    try:
        plain.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert b"HTTP" not in read_to_end(plain)  # no answer in clear, then closed
        assert read_to_end(silent) == b""  # closed at the deadline...
        assert time.monotonic() - opened >= HANDSHAKE_TIMEOUT  # ...and not before it
    finally:
        silent.close()
        plain.close()
    with handshake(node.ws_port, pki.ca) as tls_sock:
        tls_sock.sendall(b"GET /nope HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        answer = read_to_end(tls_sock)
    assert answer.startswith(b"HTTP/1.1 404 "), answer[:200]
    assert json.loads(answer.partition(b"\r\n\r\n")[2])["message"]
    assert "TLS handshake failed" in node.log()  # at debug level
    no_error_lines(node)


# -- a TLS node ------------------------------------------------------------------------------


@pytest.fixture
def tls_node(node_factory: Callable[..., NodeProcess], tls_env: dict[str, str]) -> NodeProcess:
    return node_factory(env=tls_env)


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
def test_wss_and_grpc_over_tls(tls_node: NodeProcess, pki: Pki, node_cert: Issued) -> None:
    """A push over gRPC+TLS reaches a wss:// client; both ports serve the node's
    certificate, verified against the test CA, and only TLS 1.2 or later."""
    with open_ws(tls_node, "alice") as alice, tls_node.stub() as stub:
        resp = stub.Push(
            push_pb2.PushRequest(user_ids=["alice"], payload=b'{"over":"tls"}'),
            metadata=auth(),
            timeout=10,
        )
        (msg,) = alice.messages(1)
    assert (msg["id"], msg["data"]) == (resp.message_id, {"over": "tls"})
    for port in (tls_node.ws_port, tls_node.grpc_port):
        assert served_fingerprint(port, pki.ca) == node_cert.fingerprint
        with handshake(port, pki.ca, maximum_version=ssl.TLSVersion.TLSv1_2) as tls12:
            assert tls12.version() == "TLSv1.2"
        # The same client limited to TLS 1.1 (which this OpenSSL still speaks) is refused.
        with pytest.raises((ssl.SSLError, ConnectionResetError)):
            handshake(
                port,
                pki.ca,
                minimum_version=ssl.TLSVersion.TLSv1_1,
                maximum_version=ssl.TLSVersion.TLSv1_1,
                ciphers="DEFAULT:@SECLEVEL=0",
            ).close()


def test_cleartext_clients_are_refused(tls_node: NodeProcess) -> None:
    with pytest.raises(Exception):  # noqa: B017 - whatever the library makes of a TLS answer
        connect(f"ws://127.0.0.1:{tls_node.ws_port}/ws?token={token('x')}", open_timeout=5)
    with grpc.insecure_channel(tls_node.grpc_addr) as channel:
        stub = node_pb2_grpc.NodeServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.Deliver(node_pb2.DeliverRequest(), timeout=5)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    # ... and the node goes on serving, without an error in its log.
    with open_ws(tls_node, "bob") as bob:
        assert bob.welcome["user"] == "bob"
    no_error_lines(tls_node)


def test_sighup_reloads_the_certificate_and_keeps_connections(
    node_factory: Callable[..., NodeProcess], pki: Pki, tmp_path: Path
) -> None:
    first, second, third = pki.issue("first"), pki.issue("second"), pki.issue("third")
    cert, key = tmp_path / "live.pem", tmp_path / "live.key"
    replace_files(first, cert, key)
    node = node_factory(
        env={
            "PUSHSVC_TLS_CERT": str(cert),
            "PUSHSVC_TLS_KEY": str(key),
            "PUSHSVC_TLS_CA": str(pki.ca),
        }
    )
    assert node.proc is not None
    old = open_ws(node, "carol")
    try:
        assert served_fingerprint(node.ws_port, pki.ca) == first.fingerprint

        replace_files(second, cert, key)
        node.proc.send_signal(signal.SIGHUP)
        wait_for(reloaded(node, second), timeout=20, what="the reload in the log")
        for port in (node.ws_port, node.grpc_port):  # new handshakes: the new certificate
            assert served_fingerprint(port, pki.ca) == second.fingerprint, port
        (expiry,) = [
            float(line.split()[1])
            for line in node.admin_get("/metrics")[1].splitlines()
            if line.startswith("pushsvc_tls_cert_expiry_timestamp_seconds ")
        ]
        assert expiry == second.certificate.not_valid_after_utc.timestamp()
        # The connection made before the reload is still open, still on the old one.
        old_socket = old.conn.socket
        assert isinstance(old_socket, SharedTLSSocket)
        der = old_socket.getpeercert(binary_form=True)
        assert der is not None
        assert hashlib.sha256(der).hexdigest() == first.fingerprint
        with node.stub() as stub:
            resp = stub.Push(
                push_pb2.PushRequest(user_ids=["carol"], payload=b'{"after":"reload"}'),
                metadata=auth(),
                timeout=10,
            )
        (msg,) = old.messages(1)
        assert msg["id"] == resp.message_id

        # A bad pair (the key of another certificate) changes nothing; the log says why.
        replace_files(third, cert, key, key_of=first)
        node.proc.send_signal(signal.SIGHUP)
        wait_for(
            lambda: "TLS certificate not reloaded, the current one stays" in node.log(),
            timeout=20,
            what="the refused reload in the log",
        )
        assert "does not belong to the certificate" in node.log()
        for port in (node.ws_port, node.grpc_port):
            assert served_fingerprint(port, pki.ca) == second.fingerprint, port
        assert node.admin_get("/readyz")[0] == 200
        old.send({"type": "ping"})
        assert old.recv()["type"] == "pong"
    finally:
        old.close()
    assert node.stop() == 0


# -- mutual TLS between nodes ----------------------------------------------------------------


def mtls_env(pki: Pki, node_cert: Issued) -> dict[str, str]:
    return {
        "PUSHSVC_TLS_CERT": str(node_cert.cert),
        "PUSHSVC_TLS_KEY": str(node_cert.key),
        "PUSHSVC_TLS_CA": str(pki.ca),
        "PUSHSVC_CLUSTER_CA": str(pki.ca),
        "PUSHSVC_CLUSTER_ADDR": "127.0.0.1:0",
        "PUSHSVC_CLUSTER_KEY": CLUSTER_KEY,
    }


def test_node_service_needs_a_client_certificate_of_the_cluster_ca(
    node_factory: Callable[..., NodeProcess],
    pki: Pki,
    node_cert: Issued,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    node = node_factory(env=mtls_env(pki, node_cert))
    cluster = cluster_addr_of(node)
    assert cluster != node.grpc_addr
    ca = pki.ca.read_bytes()

    def channel(addr: str, client: Issued | None = None) -> grpc.Channel:
        creds = grpc.ssl_channel_credentials(
            ca,
            private_key=client.key.read_bytes() if client else None,
            certificate_chain=client.cert.read_bytes() if client else None,
        )
        return grpc.secure_channel(addr, creds)

    # The API port: TLS without a client certificate, fine for PushService...
    with node.stub() as stub:
        stub.Push(push_pb2.PushRequest(user_ids=["dave"], payload=b"{}"), metadata=auth())
    # ... but NodeService, even with the cluster key, needs the cluster listener.
    with channel(node.grpc_addr) as plain, pytest.raises(grpc.RpcError) as info:
        deliver(plain)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "NodeService needs mutual TLS" in str(info.value.details())
    # The cluster listener: no certificate, or one of another CA, gets no handshake.
    stranger = Pki(tmp_path_factory.mktemp("stranger"), "someone else's CA").issue("stranger")
    for client in (None, stranger):
        with channel(cluster, client) as refused, pytest.raises(grpc.RpcError) as info:
            deliver(refused)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE, client
    # A peer's certificate: answered, but still only with the cluster key.
    with channel(cluster, node_cert) as peer:
        assert list(deliver(peer).connections) == []
        with pytest.raises(grpc.RpcError) as info:
            deliver(peer, key="not-the-cluster-key")
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    no_error_lines(node)


@pytest.mark.parametrize("mutual", [True, False], ids=["mutual-tls", "tls"])
def test_a_fleet_of_tls_nodes_forwards_pushes(
    mutual: bool,
    ferretdb: FerretDB,  # noqa: F811
    node_factory: Callable[..., NodeProcess],
    pki: Pki,
    tmp_path: Path,
) -> None:
    """Two nodes dial each other over TLS: the cluster listener with their own
    certificates (mutual TLS), or the gRPC port verified with PUSHSVC_TLS_CA. After
    both reload new certificates (SIGHUP), forwarding goes on with the new ones."""
    db = f"tls_{uuid.uuid4().hex[:10]}"
    nodes = []
    for name in ("a", "b"):
        issued = pki.issue(f"fleet-{name}")
        cert, key = tmp_path / f"{name}.pem", tmp_path / f"{name}.key"
        replace_files(issued, cert, key)
        tls = mtls_env(pki, issued)
        if not mutual:
            del tls["PUSHSVC_CLUSTER_CA"], tls["PUSHSVC_CLUSTER_ADDR"]
        env = {
            **tls,
            "PUSHSVC_TLS_CERT": str(cert),
            "PUSHSVC_TLS_KEY": str(key),
            "PUSHSVC_MONGO_URI": ferretdb.uri,
            "PUSHSVC_MONGO_DB": db,
            "PUSHSVC_NODE_ID": f"tls-{name}-{db[-4:]}",
            "PUSHSVC_HEARTBEAT_INTERVAL": "0.5",
            "PUSHSVC_FORWARD_TIMEOUT": "8",
        }
        nodes.append(node_factory(env=env))
    a, b = nodes
    advertised = cluster_addr_of(b)  # the address a dials to reach b
    assert (advertised != b.grpc_addr) if mutual else (advertised == b.grpc_addr)

    def push_via_a(data: dict[str, str]) -> None:
        with a.stub() as stub:
            resp = stub.Push(
                push_pb2.PushRequest(user_ids=["erin"], payload=json.dumps(data).encode()),
                metadata=auth(),
                timeout=15,
            )
        (msg,) = erin.messages(1, timeout=15)
        assert (msg["id"], msg["data"]) == (resp.message_id, data)

    with open_ws(b, "erin") as erin:

        def b_holds_erin() -> bool:
            with a.stub() as stub:
                presence = stub.GetPresence(
                    push_pb2.GetPresenceRequest(user_ids=["erin"]), metadata=auth(), timeout=10
                ).presence[0]
            return b.node_id in presence.node_ids

        wait_for(b_holds_erin, timeout=20, what="erin's presence on b, seen from a")
        push_via_a({"first": "push"})

        for name, node in zip("ab", nodes, strict=True):
            renewed = pki.issue(f"fleet-{name}-renewed")
            replace_files(renewed, tmp_path / f"{name}.pem", tmp_path / f"{name}.key")
            assert node.proc is not None
            node.proc.send_signal(signal.SIGHUP)
            wait_for(reloaded(node, renewed), timeout=20, what="the reload")
        push_via_a({"after": "reload"})
    for node in nodes:
        assert "forward failed" not in node.log()
        no_error_lines(node)


def test_the_pushsvc_command_dials_a_tls_node(tls_node: NodeProcess, tmp_path: Path) -> None:
    """With the node's own environment (its certificate and CA), or the client's
    PUSHSVC_TLS_CA alone; without either, one line that says what to set."""

    def push(**env: str) -> subprocess.CompletedProcess[str]:
        full = {k: v for k, v in os.environ.items() if not k.startswith("PUSHSVC_")}
        full.update(PUSHSVC_GRPC_ADDR=tls_node.grpc_addr, PUSHSVC_API_KEYS=API_KEY, **env)
        return subprocess.run(
            [sys.executable, "-m", "pushsvc", "push", "--user", "frank", "--data", "{}"],
            env=full,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )

    node_env = {k: v for k, v in tls_node.env.items() if k.startswith("PUSHSVC_TLS_")}
    for env in (node_env, {"PUSHSVC_TLS_CA": node_env["PUSHSVC_TLS_CA"]}):
        done = push(**env)
        assert done.returncode == 0 and done.stdout.startswith("pushed "), (env, done)
    plain = push()
    assert plain.returncode == 1
    assert "if the node serves TLS, set PUSHSVC_TLS_CA" in plain.stderr, plain.stderr
    untrusted = push(PUSHSVC_TLS="1")
    assert untrusted.returncode == 1
    assert "TLS handshake failed" in untrusted.stderr, untrusted.stderr
