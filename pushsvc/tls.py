"""TLS for the node: its certificate on every listener, and what it shows peers.

``load`` reads the files the settings name (``tls_cert``, ``tls_key``,
``tls_ca``, ``cluster_ca``) and checks them: PEM, a key that belongs to the
certificate, a certificate still valid, CA files that hold certificates. Any
failure is one ``ConfigError`` line, so a bad file stops the start with exit
code 2 and never a traceback.

``NodeTLS`` holds what was loaded and serves it to:

- the WebSocket listener (``edge.EdgeServer`` calls ``accept``): each handshake
  uses the current ``ssl.SSLContext`` (TLS 1.2 or later, no renegotiation), is
  bounded in time (within the edge's ``handshake_timeout``, which it counts
  against), and a failed one is logged at debug level, not as an error;
- the gRPC listeners (``grpc_credentials``): dynamic server credentials whose
  fetcher hands a newly loaded certificate to the next handshake;
- the node's calls to its peers (``peer_credentials``): the cluster CA and this
  node's certificate as its client certificate (mutual TLS), else the CA that
  issued the nodes' certificates (``tls_ca``), else the default roots.

``reload`` (SIGHUP) reads and checks the files again. New files that fail a
check change nothing: the current certificate stays and the log says why.
Connections already open keep the certificate they were set up with; only new
handshakes see the new one.
"""

from __future__ import annotations

import datetime
import hashlib
import logging
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from gevent import ssl as gevent_ssl

from pushsvc.config import Settings
from pushsvc.errors import ConfigError

log = logging.getLogger("pushsvc.tls")

HANDSHAKE_TIMEOUT = 10.0  # seconds a client gets to finish the TLS handshake
MIN_VERSION = ssl.TLSVersion.TLSv1_2


@dataclass(frozen=True)
class TLSFiles:
    """The files of the TLS settings (paths as given)."""

    cert: str
    key: str
    ca: str | None = None
    cluster_ca: str | None = None

    @classmethod
    def from_settings(cls, s: Settings) -> TLSFiles | None:
        if not s.tls_cert or not s.tls_key:
            return None
        return cls(s.tls_cert, s.tls_key, s.tls_ca, s.cluster_ca)


@dataclass(frozen=True)
class Material:
    """One checked set of certificate, key and CAs, as bytes and as a context."""

    chain: bytes
    key: bytes
    ca: bytes | None
    cluster_ca: bytes | None
    context: ssl.SSLContext  # the WebSocket listener's
    subject: str
    not_after: datetime.datetime
    fingerprint: str  # SHA-256 of the leaf certificate, hex

    def describe(self) -> dict[str, Any]:
        return {
            "subject": self.subject,
            "not_after": self.not_after.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "sha256": self.fingerprint,
        }


def _read(path: str, name: str) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError as exc:
        raise ConfigError(f"cannot read {name} {path}: {exc.strerror}") from None


def _certificates(data: bytes, path: str, name: str) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError:
        raise ConfigError(f"{name} {path} holds no PEM certificate") from None


def _public_der(key: Any) -> bytes:
    der: bytes = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return der


def _check_key(key_pem: bytes, leaf: x509.Certificate, files: TLSFiles) -> None:
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:
        raise ConfigError(
            f"PUSHSVC_TLS_KEY {files.key} is encrypted: give the key without a passphrase "
            "(the node reads it unattended; protect the file with its mode instead)"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise ConfigError(f"PUSHSVC_TLS_KEY {files.key} holds no PEM private key") from None
    if _public_der(key.public_key()) != _public_der(leaf.public_key()):
        raise ConfigError(
            f"PUSHSVC_TLS_KEY {files.key} does not belong to the certificate in "
            f"PUSHSVC_TLS_CERT {files.cert} (the first one in the file)"
        )


def server_context(cert: str, key: str) -> ssl.SSLContext:
    """The WebSocket listener's context: TLS 1.2 or later, HTTP/1.1, no renegotiation."""
    context = gevent_ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)  # cooperative sockets
    context.minimum_version = MIN_VERSION
    context.options |= ssl.OP_NO_RENEGOTIATION | ssl.OP_CIPHER_SERVER_PREFERENCE
    context.set_alpn_protocols(["http/1.1"])
    context.load_cert_chain(cert, key)
    return context


def load(files: TLSFiles, now: datetime.datetime | None = None) -> Material:
    """Read and check every file; ``ConfigError`` (one line) on the first problem."""
    chain = _read(files.cert, "PUSHSVC_TLS_CERT")
    key = _read(files.key, "PUSHSVC_TLS_KEY")
    leaf = _certificates(chain, files.cert, "PUSHSVC_TLS_CERT")[0]
    _check_key(key, leaf, files)
    now = now or datetime.datetime.now(datetime.UTC)
    if leaf.not_valid_after_utc <= now:
        raise ConfigError(
            f"PUSHSVC_TLS_CERT {files.cert} expired on "
            f"{leaf.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC: give a current certificate"
        )
    if leaf.not_valid_before_utc > now:
        log.warning(
            "the TLS certificate is not valid yet: check this host's clock",
            extra={"not_before": f"{leaf.not_valid_before_utc:%Y-%m-%dT%H:%M:%SZ}"},
        )
    cas: dict[str, bytes | None] = {}
    for name, path in (("PUSHSVC_TLS_CA", files.ca), ("PUSHSVC_CLUSTER_CA", files.cluster_ca)):
        if path is None:
            cas[name] = None
            continue
        data = _read(path, name)
        _certificates(data, path, name)
        try:  # what the TLS stack will do with it: verify certificates
            ssl.create_default_context(cadata=data.decode("ascii"))
        except (ssl.SSLError, UnicodeDecodeError, ValueError) as exc:
            reason = getattr(exc, "reason", None) or str(exc)
            raise ConfigError(f"{name} {path} refused by OpenSSL: {reason}") from None
        cas[name] = data
    try:
        context = server_context(files.cert, files.key)
    except (OSError, ValueError) as exc:  # ssl.SSLError, or a file gone since it was read
        reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or str(exc)
        raise ConfigError(
            f"PUSHSVC_TLS_CERT {files.cert} and PUSHSVC_TLS_KEY {files.key} refused by "
            f"OpenSSL: {reason}"
        ) from None
    return Material(
        chain=chain,
        key=key,
        ca=cas["PUSHSVC_TLS_CA"],
        cluster_ca=cas["PUSHSVC_CLUSTER_CA"],
        context=context,
        subject=leaf.subject.rfc4514_string(),
        not_after=leaf.not_valid_after_utc,
        fingerprint=hashlib.sha256(leaf.public_bytes(serialization.Encoding.DER)).hexdigest(),
    )


def cleartext_warnings(s: Settings) -> list[str]:
    """What to warn about at start-up: a listener beyond loopback without TLS (the
    node starts anyway: a proxy in front may terminate TLS)."""
    out = []
    if not s.tls_cert:
        for name, addr, what in (
            ("PUSHSVC_WS_ADDR", s.ws_addr, "WebSocket"),
            ("PUSHSVC_GRPC_ADDR", s.grpc_addr, "gRPC"),
        ):
            if not addr.is_loopback:
                out.append(
                    f"{what} listens on {addr}, beyond this host, without TLS: set "
                    f"PUSHSVC_TLS_CERT and PUSHSVC_TLS_KEY, or bind {name} to 127.0.0.1 "
                    "behind a proxy that terminates TLS"
                )
    if not s.admin_addr.is_loopback:
        out.append(
            f"the admin listener (/metrics, /healthz, /readyz) listens on {s.admin_addr}, "
            "beyond this host, and never has TLS: bind PUSHSVC_ADMIN_ADDR to 127.0.0.1 or "
            "keep it on a private network"
        )
    return out


class NodeTLS:
    """The node's current TLS material; ``reload()`` swaps in new files."""

    def __init__(self, files: TLSFiles, handshake_timeout: float = HANDSHAKE_TIMEOUT) -> None:
        self.files = files
        self.handshake_timeout = handshake_timeout
        self._material = load(files)
        self._generation = 0
        self._on_reload: list[Callable[[], None]] = []

    @property
    def mutual(self) -> bool:
        """Mutual TLS between nodes (a cluster CA)."""
        return self.files.cluster_ca is not None

    @property
    def material(self) -> Material:
        return self._material

    def on_reload(self, callback: Callable[[], None]) -> None:
        self._on_reload.append(callback)

    def reload(self) -> bool:
        """Read the files again; keep the current material if they fail a check."""
        try:
            material = load(self.files)
        except ConfigError as exc:
            log.error("TLS certificate not reloaded, the current one stays: %s", exc)
            return False
        self._material = material
        self._generation += 1
        log.info("TLS certificate reloaded", extra=material.describe())
        for callback in self._on_reload:
            try:
                callback()
            except Exception:
                log.exception("after the TLS reload")
        return True

    # -- the WebSocket listener -------------------------------------------------------

    def accept(self, sock: socket.socket) -> ssl.SSLSocket:
        """The server side of one handshake, with the current certificate, bounded in
        time; raises OSError (ssl.SSLError, TimeoutError) when it fails."""
        before = sock.gettimeout()
        sock.settimeout(self.handshake_timeout)
        tls_sock = self._material.context.wrap_socket(sock, server_side=True)
        tls_sock.settimeout(before)
        return tls_sock

    # -- gRPC -------------------------------------------------------------------------

    def _grpc_config(self, verify_clients: bool) -> grpc.ServerCertificateConfiguration:
        m = self._material
        return grpc.ssl_server_certificate_configuration(
            [(m.key, m.chain)], root_certificates=m.cluster_ca if verify_clients else None
        )

    def grpc_credentials(self, *, require_client_cert: bool = False) -> grpc.ServerCredentials:
        """Server credentials that pick up a reloaded certificate at the next handshake.

        ``require_client_cert``: the handshake needs a client certificate issued by the
        cluster CA (the cluster listener).
        """
        seen = [self._generation]

        def fetch() -> grpc.ServerCertificateConfiguration | None:
            # Called by gRPC before each handshake: None keeps the current configuration.
            if seen[0] == self._generation:
                return None
            seen[0] = self._generation
            return self._grpc_config(require_client_cert)

        return grpc.dynamic_ssl_server_credentials(
            self._grpc_config(require_client_cert),
            fetch,  # type: ignore[arg-type]  # grpc-stubs omits the None gRPC accepts
            require_client_authentication=require_client_cert,
        )

    def peer_credentials(self) -> grpc.ChannelCredentials:
        """What this node presents and trusts when it calls a peer's NodeService."""
        m = self._material
        if m.cluster_ca is not None:
            return grpc.ssl_channel_credentials(
                root_certificates=m.cluster_ca, private_key=m.key, certificate_chain=m.chain
            )
        return grpc.ssl_channel_credentials(root_certificates=m.ca)
