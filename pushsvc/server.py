"""A running node process: settings → the node and its listeners, then the lifecycle.

``build`` wires the parts from ``Settings`` (the store, the fleet, the node,
the WebSocket edge, the gRPC server, the admin listener); ``Server`` binds the
listeners (with TLS when a certificate is set), starts the housekeeping (store
probe, sweeper, systemd watchdog), reloads the TLS certificate on ``SIGHUP``
and drains on ``SIGTERM``. The process must be cooperative before anything here
runs: ``cli.serve`` monkey-patches the standard library with gevent and gives
grpcio native threads first (``nativethreads``); every gRPC call's behaviour is
handed to the event loop (``handoff``).
"""

from __future__ import annotations

import contextlib
import faulthandler
import logging
import math
import resource
import secrets
import signal
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

import gevent
import grpc
from gevent.event import Event
from grpc_health.v1 import health_pb2

from pushsvc import collector, cpuload, demo, edge, grpc_api
from pushsvc.admin import AdminApp
from pushsvc.admin_api import AdminApi, PushLimits
from pushsvc.admin_console import AdminConsole
from pushsvc.auth import ApiKeys, TokenVerifier, load_or_create_secret
from pushsvc.authhook import AuthHook
from pushsvc.config import Address, Settings, check_secure
from pushsvc.cpuload import CpuLoad
from pushsvc.errors import ConfigError, StoreUnavailable
from pushsvc.fleet import Fleet, LocalFleet
from pushsvc.handoff import Loop
from pushsvc.health import StoreHealth, within
from pushsvc.httpwire import HeadLimits
from pushsvc.hub import Hub
from pushsvc.logsetup import (
    capture_stray_output,
    configure_logging,
    journal_prefix,
    release_stray_output,
    route_gevent_errors,
)
from pushsvc.metrics import Metrics
from pushsvc.node import AdmissionLimits, Node, ReceiptStreaming
from pushsvc.owners import OwnerTags
from pushsvc.protocol import Close
from pushsvc.reloading import record_reload
from pushsvc.session import SessionLimits
from pushsvc.store.inbox import InboxStore
from pushsvc.store.receipt_log import ReceiptLog
from pushsvc.store.revocation import RevocationStore
from pushsvc.systemd import Notifier
from pushsvc.tls import NodeTLS, TLSFiles, cleartext_warnings
from pushsvc.wsgi import BoundedWSGIServer

log = logging.getLogger("pushsvc.server")

DRAIN_BATCH = 100  # connections closed per step while draining
DRAIN_PAUSE = 0.05  # seconds between two batches, at most (spreads the reconnects)
DRAIN_BATCH_WAIT = 1.0  # seconds a batch's close handshakes may hold up the next batch
GRPC_GRACE = 5.0  # seconds in-flight gRPC calls get to finish
ADMIN_TOKEN_FILE = "admin-token"  # in the data directory, when generated
STORE_STEP = 2.0  # seconds a store call may take while draining
TIDY_INTERVAL = 1.0  # seconds between clean-ups of pushes that failed in an outage
_DEFAULT_MAX_CONNECTIONS = Settings.__dataclass_fields__["max_connections"].default


def _open_inbox(s: Settings) -> InboxStore:
    if s.embedded:
        from pushsvc.store.embedded import EmbeddedStore

        return EmbeddedStore(s.data_dir)
    from pushsvc.store.mongo import MongoDatabase, MongoInbox

    assert s.mongo_uri is not None
    # This run's name on what it writes: a later run of the node recovers it.
    writer = f"{s.resolved_node_id()}/{secrets.token_hex(6)}"
    return MongoInbox(
        MongoDatabase(s.mongo_uri, s.mongo_db),
        writer=writer,
        commit_records={"true": True, "false": False}.get(s.mongo_commit_records),
    )


def _round_trips(inbox: InboxStore) -> int:
    """Every call to the database: the inbox's and, in a fleet, the registry's."""
    database = getattr(inbox, "database", None)
    return int(database.round_trips) if database is not None else inbox.round_trips


def _open_side_stores(
    s: Settings, inbox: InboxStore, node_id: str
) -> tuple[ReceiptLog | None, RevocationStore]:
    """The receipt log (None when receipt streaming is off) and the revocation list,
    beside the inbox: SQLite files in its data directory, or its MongoDB database."""
    if s.embedded:
        from pushsvc.store.embedded import EmbeddedStore
        from pushsvc.store.receipt_log import RECEIPTS_DB, SqliteReceiptLog
        from pushsvc.store.revocation import SqliteRevocationStore
        from pushsvc.store.sqlite_side import SideDatabase

        assert isinstance(inbox, EmbeddedStore)
        revocations: RevocationStore = SqliteRevocationStore(SideDatabase(inbox.path))
        if not s.receipt_retention:
            return None, revocations
        # A file of its own: its writes never hold the inbox's write lock; it reads
        # the inbox (attached) to resolve seqs and acks.
        events = SideDatabase(inbox.data_dir / RECEIPTS_DB, attach={"inbox_db": inbox.path})
        return SqliteReceiptLog(events, node_id, s.receipt_retention), revocations
    from pushsvc.store.mongo import MongoInbox
    from pushsvc.store.receipt_log import MongoReceiptLog
    from pushsvc.store.revocation import MongoRevocationStore

    assert isinstance(inbox, MongoInbox)
    revocations = MongoRevocationStore(inbox.database)
    if not s.receipt_retention:
        return None, revocations
    return MongoReceiptLog(inbox.database, node_id, s.receipt_retention), revocations


def _fleet_factory(
    s: Settings,
    inbox: InboxStore,
    hub: Hub,
    metrics: Metrics,
    health: StoreHealth,
    ready: Callable[[], None],
    tls: NodeTLS | None,
) -> Callable[[Node], Fleet]:
    def make(node: Node) -> Fleet:
        if s.embedded:
            return LocalFleet(hub, node.info)
        from pushsvc.cluster import ClusterFleet
        from pushsvc.store.mongo import MongoInbox
        from pushsvc.store.mongo_registry import MongoRegistry

        assert isinstance(inbox, MongoInbox) and s.cluster_key is not None
        fleet = ClusterFleet(
            MongoRegistry(inbox.database),
            hub,
            node.info,
            cluster_key=s.cluster_key,
            forward_timeout=s.forward_timeout,
            heartbeat_interval=s.heartbeat_interval,
            metrics=metrics,
            health=health,
            on_registered=ready,
            peer_credentials=tls.peer_credentials if tls is not None else None,
        )
        if tls is not None:
            tls.on_reload(fleet.renew_channels)  # peers see the new client certificate
        return fleet

    return make


class Server:
    """One node process: its listeners, its node, its lifecycle."""

    def __init__(self, settings: Settings) -> None:
        check_secure(settings)
        self.settings = s = settings
        files = TLSFiles.from_settings(s)
        self.tls = (  # ConfigError: bad files
            NodeTLS(files, handshake_timeout=s.handshake_timeout) if files is not None else None
        )
        self.node_id = s.resolved_node_id()
        self.metrics = Metrics()
        tls = self.tls
        if tls is not None:
            self.metrics.gauge(
                "pushsvc_tls_cert_expiry_timestamp_seconds",
                "When the certificate in use expires (Unix time); it changes on a reload",
                lambda: tls.material.not_after.timestamp(),
            )
        self.cpu_load = CpuLoad()
        self.metrics.gauge(
            "pushsvc_cpu_busy_ratio",
            "Share of one core the node used over the last second (about 1: saturated)",
            lambda: self.cpu_load.busy,
        )
        self.notifier = Notifier()
        self._reloads = 0  # SIGHUPs handled, for the answer `pushsvc reload` waits for
        self.hub = Hub()
        inbox = self.inbox = _open_inbox(s)
        self.health = StoreHealth(inbox.probe, self.metrics)
        self.metrics.total(
            "pushsvc_store_round_trips",
            "Calls to the store (MongoDB: commands sent; SQLite: hand-offs to its thread)",
            lambda: float(_round_trips(inbox)),
        )
        jwt_secret, api_keys = self._secrets()
        self.verifier = TokenVerifier.from_settings(
            s.jwt_algorithm, jwt_secret, s.jwt_public_key_file, s.max_token_lifetime
        )
        self.receipt_log, self.revocation_store = _open_side_stores(s, inbox, self.node_id)
        self.auth_hook = (
            AuthHook(
                s.auth_hook_addr,
                timeout=s.auth_hook_timeout,
                cache_ttl=s.auth_hook_cache_ttl,
                cache_size=s.auth_hook_cache_size,
                key=s.auth_hook_key,
                node_id=self.node_id,
                cookie=s.auth_hook_cookie,
                registry=self.metrics.registry,
            )
            if s.auth_hook_addr
            else None
        )
        self._ready_sent = False
        self.node = Node(
            self.node_id,
            inbox,
            self.hub,
            _fleet_factory(
                s, inbox, self.hub, self.metrics, self.health, self._on_registered, self.tls
            ),
            self.metrics,
            self.health,
            AdmissionLimits(s.connect_rate, s.connect_queue, s.welcome_timeout),
            ping_interval=s.ping_interval,
            heartbeat_interval=s.heartbeat_interval,
            position_check=s.position_check,
            receipt_streaming=ReceiptStreaming(
                self.receipt_log, s.receipt_buffer, s.receipt_subscribers
            ),
            revocation_store=self.revocation_store,
        )
        self.edge_app = edge.EdgeApp(
            edge.EdgeConfig(
                node_id=self.node_id,
                allowed_origins=s.allowed_origins,
                max_frame_bytes=s.max_frame_bytes,
                handshake_timeout=s.handshake_timeout,
                first_frame_timeout=s.first_frame_timeout,
                head_limits=HeadLimits(s.max_header_bytes, s.max_header_fields),
                max_connections=s.max_connections,
                max_connections_per_ip=s.max_connections_per_ip,
                limits=SessionLimits(
                    send_queue_size=s.send_queue_size,
                    max_replay=s.max_replay,
                    ping_interval=s.ping_interval,
                    ping_timeout=s.ping_timeout,
                    client_rate=s.client_rate,
                    client_burst=s.client_burst,
                    abuse_limit=s.abuse_limit,
                ),
            ),
            self.verifier,
            self.node,
            self.metrics,
            extra_routes=demo.routes() if s.demo else None,
            auth_hook=self.auth_hook,
        )
        self.grpc_server, self.grpc_health = grpc_api.make_server(
            self.node,
            grpc_api.Limits(s.max_payload_bytes, s.default_ttl_seconds, s.max_ttl_seconds),
            ApiKeys(api_keys),
            s.cluster_key,
            grpc_api.CallerLimits(s.api_rate, s.api_burst),
            OwnerTags(self._owner_secret()),
            Loop(),
            mutual_tls=self.tls is not None and self.tls.mutual,
        )
        self.admin_console = self._admin_console() if s.admin_ui else None
        self._stop = Event()
        self._draining = False
        self._greenlets: list[gevent.Greenlet] = []
        self._watchdog: gevent.Greenlet | None = None
        self.ws_server: edge.EdgeServer | None = None
        self.admin_server: BoundedWSGIServer | None = None
        self.ws_port = self.grpc_port = self.admin_port = self.cluster_port = 0

    def _secrets(self) -> tuple[str | None, tuple[str, ...]]:
        """The JWT secret and API keys; generated into the data directory when unset
        (the embedded store only: check_secure refuses a fleet without them)."""
        s = self.settings
        jwt_secret, api_keys = s.jwt_secret, s.api_keys
        data_dir = Path(s.data_dir)
        if s.jwt_algorithm == "HS256" and not jwt_secret:
            jwt_secret, created = load_or_create_secret(data_dir / "jwt-secret")
            if created:
                log.warning("generated a JWT secret in %s", data_dir / "jwt-secret")
        if not api_keys:
            key, created = load_or_create_secret(data_dir / "api-key")
            api_keys = (key,)
            if created:
                log.warning("generated an API key in %s", data_dir / "api-key")
        return jwt_secret, api_keys

    def _admin_console(self) -> AdminConsole:
        """The admin console, with its token: configured, or generated into the data
        directory (the embedded store only: check_secure refuses a fleet without one)."""
        s = self.settings
        token = s.admin_token
        if token is None:
            path = Path(s.data_dir) / ADMIN_TOKEN_FILE
            token, created = load_or_create_secret(path)
            if created:
                log.warning("generated an admin token in %s", path)
        limits = PushLimits(s.max_payload_bytes, s.default_ttl_seconds, s.max_ttl_seconds)
        api = AdminApi(self.node, limits, self.readiness)
        return AdminConsole(api, token, s.max_payload_bytes)

    def _owner_secret(self) -> str:
        """What owner tags of API keys are derived with: the cluster key (the same on
        every node), or a secret generated into the data directory of a node alone."""
        if self.settings.cluster_key:
            return self.settings.cluster_key
        secret, _ = load_or_create_secret(Path(self.settings.data_dir) / "owner-secret")
        return secret

    # -- start ----------------------------------------------------------------------------

    def start(self) -> None:
        s = self.settings
        if self.notifier.watchdog_interval is not None:
            self._watchdog = gevent.spawn(self._watchdog_loop, self.notifier.watchdog_interval)
        tls = self.tls
        ws_sock = _listen(s.ws_addr, "PUSHSVC_WS_ADDR", reuse_port=s.ws_reuse_port)
        admin_sock = _listen(s.admin_addr, "PUSHSVC_ADMIN_ADDR")
        self.grpc_port = _listen_grpc(
            self.grpc_server,
            s.grpc_addr,
            "PUSHSVC_GRPC_ADDR",
            tls.grpc_credentials() if tls is not None else None,
        )
        if s.cluster_addr is not None and tls is not None:
            self.cluster_port = _listen_grpc(
                self.grpc_server,
                s.cluster_addr,
                "PUSHSVC_CLUSTER_ADDR",
                tls.grpc_credentials(require_client_cert=True),
            )
        self._warn_cleartext()
        self.ws_port = ws_sock.getsockname()[1]
        self.admin_port = admin_sock.getsockname()[1]
        self.node.ws_addr = f"{s.ws_addr.host}:{self.ws_port}"
        self.node.grpc_addr = self._advertise()
        self._fit_connections_to_open_files()
        self.ws_server = edge.make_server(ws_sock, self.edge_app, tls)
        self.admin_server = BoundedWSGIServer(
            admin_sock,
            AdminApp(self.metrics, self.readiness, self.admin_console),
            s.handshake_timeout,
        )
        self.health.check()  # readiness reflects the store from the first answer
        self.health.start()
        self.cpu_load.start()
        self.node.prepare()  # the revocation list, before the first connect
        self.ws_server.start()
        self.admin_server.start()
        self.grpc_server.start()
        self.node.start()  # registers in a fleet (or, with the store down, keeps trying)
        self._greenlets = [
            gevent.spawn(self._sweep_loop),
            gevent.spawn(self._status_loop),
            gevent.spawn(self._tidy_loop),
            gevent.spawn(self._collect_loop),
        ]
        self.grpc_health.set("", health_pb2.HealthCheckResponse.SERVING)
        log.info(
            "node listening"
            if self.node.fleet.registered
            else "node listening, not registered yet",
            extra={
                "node": self.node_id,
                "ws": f"{s.ws_addr.host}:{self.ws_port}",
                "grpc": f"{s.grpc_addr.host}:{self.grpc_port}",
                "admin": f"{s.admin_addr.host}:{self.admin_port}",
                "store": "embedded" if s.embedded else "mongodb",
                "tls": "off" if tls is None else "mutual" if tls.mutual else "on",
                "cluster": f"{s.cluster_addr.host}:{self.cluster_port}" if s.cluster_addr else "",
                "max_connections": self.edge_app.config.max_connections,
            },
        )
        if self.admin_console is not None:
            log.info(
                "admin console on http://%s:%d/admin",
                _dial_host(s.admin_addr.host),
                self.admin_port,
            )
        if tls is not None:
            log.info("TLS certificate loaded", extra=tls.material.describe())
        if self.node.fleet.registered:
            self._on_registered()
        else:
            self.notifier.status(self._status())

    def _fit_connections_to_open_files(self) -> None:
        """max_connections within the open-files limit, with room for everything else
        (listeners, gRPC peers and callers, the store): a node out of descriptors
        fails its accepts instead of answering 503."""
        files = _raise_open_files_limit()
        room = files - max(256, files // 10)
        config = self.edge_app.config
        if room < config.max_connections:
            # Said only when the lowered value was asked for explicitly; the
            # "node listening" line always says the value in force.
            if self.settings.max_connections == _DEFAULT_MAX_CONNECTIONS:
                config.max_connections = max(1, room)
                return
            log.warning(
                "max_connections lowered to fit the open-files limit: raise LimitNOFILE= "
                "(or ulimit -n) to hold more",
                extra={
                    "max_connections": max(1, room),
                    "configured": config.max_connections,
                    "open_files_limit": files,
                },
            )
            config.max_connections = max(1, room)

    def _on_registered(self) -> None:
        """READY=1 once the listeners are bound and the node is registered."""
        if not self._ready_sent and self.ws_server is not None:
            self._ready_sent = True
            log.info("node ready", extra={"node": self.node_id})
            self.notifier.ready(self._status())

    def _advertise(self) -> str:
        """The address peers dial for NodeService: the cluster listener under mutual
        TLS, else the gRPC listener."""
        s = self.settings
        if s.advertise_addr:
            return s.advertise_addr
        addr, port = (
            (s.cluster_addr, self.cluster_port)
            if s.cluster_addr is not None
            else (s.grpc_addr, self.grpc_port)
        )
        host = addr.host
        if host in ("0.0.0.0", "::", ""):
            host = socket.gethostname()
        return f"{host}:{port}"

    def _warn_cleartext(self) -> None:
        for warning in cleartext_warnings(self.settings):
            log.warning(warning)

    # -- reload ------------------------------------------------------------------------------

    def reload(self) -> None:
        """SIGHUP (``systemctl reload``): read the TLS certificate and key again. New
        handshakes use them; open connections keep theirs. Files that fail a check
        change nothing (logged). The outcome goes to the data directory last, for
        ``pushsvc reload`` (the unit's ExecReload=), which waits for it."""
        ready = self._ready_sent  # systemd hears of a reload only once it heard READY=1
        if ready:
            self.notifier.notify("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")
        ok = True
        if self.tls is None:
            log.info("SIGHUP: nothing to reload (no TLS certificate configured)")
        else:
            ok = self.tls.reload()
        if ready:
            self.notifier.ready(self._status())
        self._reloads += 1
        record_reload(self.settings.data_dir, self._reloads, ok)

    # -- housekeeping -----------------------------------------------------------------------

    def _status(self) -> str:
        if self._draining:
            state = "draining"
        elif self._ready_sent:
            state = "ready"
        elif not self.node.fleet.registered:
            state = "starting, waiting for the store to register"
        else:
            state = "starting"
        return (
            f"{state}: {self.node.connection_count} connections, "
            f"{self.node.user_count} users (node {self.node_id})"
        )

    def _status_loop(self) -> None:
        while not self._stop.wait(self.settings.heartbeat_interval):
            self.notifier.status(self._status())

    def _watchdog_loop(self, interval: float) -> None:
        """WATCHDOG=1 from the event loop: a blocked loop stops it and systemd restarts us."""
        self.notifier.watchdog()
        while True:
            gevent.sleep(interval)  # the watchdog's period, not synchronisation
            self.notifier.watchdog()

    def _sweep_loop(self) -> None:
        while not self._stop.wait(self.settings.sweep_interval):
            try:
                removed = self.node.sweep(time.time())
                if removed:
                    log.debug("swept %d expired records", removed)
            except StoreUnavailable as exc:
                self.health.failed(exc)

    def _collect_loop(self) -> None:
        """Once an hour, one full garbage-collector pass over everything, the objects
        frozen after earlier passes included (collector.py)."""
        while not self._stop.wait(collector.RELEASE_INTERVAL):
            found = collector.release()
            if found:
                log.info("garbage collector: full pass", extra={"unreachable": found})

    def _tidy_loop(self) -> None:
        """While the store is healthy: first abandon what an earlier run of this
        node left in flight, then keep finishing the clean-up of pushes that failed
        during an outage -- until then their leftovers hold their users' replays."""
        recovered = False
        while not self._stop.wait(TIDY_INTERVAL):
            if not self.health.ok:
                continue
            try:
                if not recovered:
                    n = self.inbox.recover()
                    recovered = True
                    if n:
                        log.info("abandoned pushes an earlier run left in flight", extra={"n": n})
                finished = self.inbox.tidy()
            except StoreUnavailable as exc:
                self.health.failed(exc)
                continue
            if finished:
                log.info("finished cleaning up pushes failed in an outage", extra={"n": finished})

    def readiness(self) -> tuple[bool, str]:
        if self._draining:
            return False, "draining"
        if not self.health.ok:
            return False, self.health.reason
        return True, "ok"

    # -- stop ----------------------------------------------------------------------------------

    def request_stop(self) -> None:
        """SIGTERM/SIGINT: not ready from this instant; ``wait()`` returns and drains."""
        if self._stop.is_set():
            log.info("already draining")
            return
        self._begin_drain()
        self._stop.set()

    def _begin_drain(self) -> None:
        if self._draining:
            return
        self._draining = True  # /readyz answers 503 from now on
        self.edge_app.accepting = False  # handshakes in progress get 503
        self.grpc_health.enter_graceful_shutdown()  # gRPC health NOT_SERVING
        self.notifier.stopping(self._status())

    def wait(self) -> None:
        self._stop.wait()

    def drain(self) -> None:
        """Refuse new work, hand connections to other nodes in batches, finish in-flight
        RPCs, flush acks; everything within ``drain_timeout``."""
        budget = self.settings.drain_timeout
        deadline = time.monotonic() + budget

        def left(reserve: float = 0.0) -> float:
            return max(0.0, deadline - reserve - time.monotonic())

        self._begin_drain()
        self._stop.set()
        log.info("draining", extra={"connections": self.node.connection_count})
        if self.ws_server is not None:
            self.ws_server.close()  # stop accepting; existing connections go on
        for g in self._greenlets:
            g.kill(block=True, timeout=min(1.0, left()))
        # Leave the fleet first: peers stop routing here before the connections go.
        try:
            within(min(STORE_STEP, left()), "leaving the fleet", self.node.stop_fleet)
        except StoreUnavailable as exc:
            log.warning("leaving the fleet: %s (the registration expires by itself)", exc)
        self.node.end_streams()  # StreamReceipts callers resume elsewhere, from their cursor
        # Keep time for the in-flight RPCs and the last flush after the connections.
        tail = min(GRPC_GRACE + 1.0, 0.3 * budget)
        closed = self._close_connections(deadline - tail)
        log.info("connections closed", extra={"closed": closed, "open": self.node.connection_count})
        grace = min(GRPC_GRACE, left(0.1 * budget))
        stopped = self.grpc_server.stop(grace=grace)  # a native event: waited off the loop
        done = gevent.get_hub().threadpool.apply(stopped.wait, (left(0.05 * budget),))
        log.info("grpc stopped", extra={"grace": round(grace, 3), "in_time": bool(done)})
        try:
            within(max(0.01, left(0.02 * budget)), "the last flush", self.node.stop)
            within(max(0.01, left(0.01 * budget)), "the last clean-up", self.inbox.tidy)
        except StoreUnavailable as exc:
            log.warning("acks, receipts or clean-up not flushed: %s", exc)
        self.health.stop()
        if self.admin_server is not None:
            self.admin_server.stop(timeout=min(1.0, left()))
        self.node.fleet.close()
        if self.receipt_log is not None:
            self.receipt_log.close()
        self.revocation_store.close()
        if self.auth_hook is not None:
            self.auth_hook.close()
        self.inbox.close()
        self.notifier.status(f"stopped: {closed} connections handed over (node {self.node_id})")
        if self._watchdog is not None:
            self._watchdog.kill(block=False)
        self.cpu_load.stop()
        self.notifier.close()
        log.info("stopped", extra={"closed": closed, "seconds": round(budget - left(), 3)})

    def _close_connections(self, until: float) -> int:
        """Close every connection with 1012, DRAIN_BATCH at a time: a batch's close
        handshakes finish (or DRAIN_BATCH_WAIT passes) and a short pause follows before
        the next batch, so clients reconnect elsewhere spread out, not all at once."""
        total = self.node.connection_count
        batches = max(1, math.ceil(total / DRAIN_BATCH))
        window = max(0.0, until - time.monotonic())
        pause = min(DRAIN_PAUSE, 0.25 * window / batches) if batches > 1 else 0.0
        closed = 0
        while True:
            out_of_time = time.monotonic() >= until
            batch = self.node.close_connections(Close.RESTART, None if out_of_time else DRAIN_BATCH)
            closed += len(batch)
            if not batch:
                break
            remaining = until - time.monotonic()
            self.node.wait_closed(batch, max(0.0, min(DRAIN_BATCH_WAIT, remaining)))
            if out_of_time:
                break
            self.notifier.status(self._status())
            gevent.sleep(pause)  # pacing the reconnects, not synchronisation
        late = self.node.close_connections(Close.RESTART)  # handshakes already past
        self.node.wait_closed(late, max(0.0, until - time.monotonic()))
        return closed + len(late)


def _dial_host(host: str) -> str:
    """Where a browser on this host reaches a listener bound to ``host``."""
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def _raise_open_files_limit() -> int:
    """Every socket is a file: take the hard limit the service manager allows
    (``LimitNOFILE=``), as Go programs do, instead of the soft 1024 of a shell.
    Returns the limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (OSError, ValueError):
            pass  # keep the soft limit
    return 1 << 30 if soft == resource.RLIM_INFINITY else soft


def _listen(addr: Address, name: str, reuse_port: bool = False) -> socket.socket:
    try:
        return edge.listen_socket(addr, reuse_port=reuse_port)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {name} {addr}: {exc.strerror}") from None


def _listen_grpc(
    server: grpc.Server, addr: Address, name: str, credentials: grpc.ServerCredentials | None
) -> int:
    """Add a port to the gRPC server; the bound port. gRPC says only that binding
    failed (and prints its own line), so the address is tried with a plain socket
    first, which gives the reason in the words the other listeners use."""
    _listen(addr, name).close()
    try:
        if credentials is None:
            port = server.add_insecure_port(str(addr))
        else:
            port = server.add_secure_port(str(addr), credentials)
    except RuntimeError:
        port = 0  # grpcio >= 1.60 raises where older releases returned 0
    if port == 0:
        raise ConfigError(f"cannot listen on {name} {addr}: address in use or not local")
    return port


def run_server(settings: Settings, announce: Callable[[Server], None] | None = None) -> int:
    """Run a node until SIGTERM/SIGINT, then drain. Returns the exit code."""
    configure_logging(settings.log_level, settings.log_format)
    route_gevent_errors(gevent.get_hub())
    # SIGUSR1: every thread's Python stack, written by the signal handler itself
    # straight to the real stderr (the journal) -- it works on a stuck event loop.
    # Without a stderr to write to (closed, or not a file), there is nothing to dump.
    with contextlib.suppress(RuntimeError, ValueError, OSError, AttributeError):
        faulthandler.register(signal.SIGUSR1, file=sys.stderr, all_threads=True)
    sys.setswitchinterval(cpuload.SHORT)  # then set by the node's CPU share (cpuload.py)
    try:
        server = Server(settings)
        server.start()
        collector.tune()
    except ConfigError as exc:
        print(f"{journal_prefix()}pushsvc: error: {exc}", file=sys.stderr)
        return 2
    except StoreUnavailable as exc:
        print(f"{journal_prefix()}pushsvc: error: {exc}", file=sys.stderr)
        return 1
    # From here on, whatever a library prints to stderr is logged as an event.
    capture_stray_output(gevent.get_hub().loop.run_callback_threadsafe)
    try:
        if announce is not None:
            announce(server)
        for sig in (signal.SIGTERM, signal.SIGINT):
            gevent.signal_handler(sig, server.request_stop)
        gevent.signal_handler(signal.SIGHUP, server.reload)
        server.wait()
        server.drain()
    finally:
        release_stray_output()
    return 0
