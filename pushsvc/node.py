"""A running node: the listeners, the store, the hub and the housekeeping greenlets.

Importing this module makes the process cooperative: gevent monkey-patches the
standard library and gRPC is switched to its gevent mode, so the WebSocket
edge, the gRPC server and the store clients share one event loop.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

from grpc.experimental import gevent as grpc_gevent  # type: ignore[attr-defined]  # noqa: E402

grpc_gevent.init_gevent()

import importlib.util  # noqa: E402
import logging  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import gevent  # noqa: E402
from gevent.event import Event  # noqa: E402
from gevent.pywsgi import WSGIServer  # noqa: E402
from grpc_health.v1 import health_pb2  # noqa: E402

from pushsvc import demo, edge, grpc_api  # noqa: E402
from pushsvc.admin import AdminApp  # noqa: E402
from pushsvc.auth import ApiKeys, TokenVerifier, load_or_create_secret  # noqa: E402
from pushsvc.cluster import Fleet  # noqa: E402
from pushsvc.config import Address, Settings, check_secure  # noqa: E402
from pushsvc.dispatcher import Dispatcher  # noqa: E402
from pushsvc.errors import ConfigError, StoreUnavailable  # noqa: E402
from pushsvc.hub import Hub  # noqa: E402
from pushsvc.logsetup import configure_logging, route_gevent_errors  # noqa: E402
from pushsvc.metrics import Metrics  # noqa: E402
from pushsvc.protocol import Close  # noqa: E402
from pushsvc.receipts import Receipts  # noqa: E402
from pushsvc.session import SessionLimits  # noqa: E402
from pushsvc.store import NodeInfo, Store  # noqa: E402
from pushsvc.systemd import Notifier  # noqa: E402

log = logging.getLogger("pushsvc.node")

DRAIN_BATCH = 100  # connections closed per step while draining
DRAIN_PAUSE = 0.05  # seconds between two batches, at most (spreads the reconnects)
DRAIN_BATCH_WAIT = 1.0  # seconds a batch's close handshakes may hold up the next batch
GRPC_GRACE = 5.0  # seconds in-flight gRPC calls get to finish
STORE_STEP = 2.0  # seconds a store call may take while draining


class Node:
    def __init__(self, settings: Settings) -> None:
        check_secure(settings)
        self.settings = s = settings
        self.node_id = s.resolved_node_id()
        self.metrics = Metrics()
        self.hub = Hub()
        self.store = self._open_store()
        jwt_secret = s.jwt_secret
        api_keys = s.api_keys
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
        self.verifier = TokenVerifier.from_settings(
            s.jwt_algorithm, jwt_secret, s.jwt_public_key_file
        )
        self.receipts = Receipts(self.store, self.metrics)
        self.fleet: Fleet | None = None
        if self.store.clustered:
            assert s.cluster_key is not None  # check_secure insists on it
            self.fleet = Fleet(
                self.store, self.hub, self.node_id, s.cluster_key, s.forward_timeout, self.metrics
            )
        self.dispatcher = Dispatcher(self.node_id, self.store, self.hub, self.metrics, self.fleet)
        self.edge_app = edge.EdgeApp(
            edge.EdgeConfig(
                node_id=self.node_id,
                allowed_origins=s.allowed_origins,
                max_frame_bytes=s.max_frame_bytes,
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
            self.hub,
            self.store,
            self.receipts,
            self.metrics,
            extra_routes=demo.routes() if s.demo else None,
        )
        self.grpc_server, self.health = grpc_api.make_server(
            self.dispatcher,
            grpc_api.Limits(s.max_payload_bytes, s.default_ttl_seconds, s.max_ttl_seconds),
            ApiKeys(api_keys),
            s.cluster_key,
            grpc_api.CallerLimits(s.api_rate, s.api_burst),
        )
        self.notifier = Notifier()
        self._stop = Event()
        self._draining = False
        self._store_ok = True
        self._registered = False
        self._ready_sent = False
        self._greenlets: list[gevent.Greenlet] = []
        self._watchdog: gevent.Greenlet | None = None
        self.ws_server: WSGIServer | None = None
        self.admin_server: WSGIServer | None = None
        self.started_at = time.time()

    def _open_store(self) -> Store:
        s = self.settings
        if s.embedded:
            from pushsvc.store.embedded import EmbeddedStore

            return EmbeddedStore(s.data_dir)
        from pushsvc.store.mongo import MongoStore

        assert s.mongo_uri is not None
        return MongoStore(s.mongo_uri, s.mongo_db)

    # -- start ----------------------------------------------------------------------------

    def start(self) -> None:
        s = self.settings
        if self.notifier.watchdog_interval is not None:
            self._watchdog = gevent.spawn(self._watchdog_loop, self.notifier.watchdog_interval)
        ws_sock = _listen(s.ws_addr, "PUSHSVC_WS_ADDR", reuse_port=True)
        admin_sock = _listen(s.admin_addr, "PUSHSVC_ADMIN_ADDR")
        grpc_port = self.grpc_server.add_insecure_port(str(s.grpc_addr))
        if grpc_port == 0:
            raise ConfigError(
                f"cannot listen on PUSHSVC_GRPC_ADDR {s.grpc_addr}: address in use or not local"
            )
        self.ws_port = ws_sock.getsockname()[1]
        self.grpc_port = grpc_port
        self.admin_port = admin_sock.getsockname()[1]
        self.ws_server = edge.make_server(ws_sock, self.edge_app)
        self.admin_server = WSGIServer(admin_sock, AdminApp(self.metrics, self.readiness), log=None)
        self.ws_server.start()
        self.admin_server.start()
        self.grpc_server.start()
        self.receipts.start()
        self._register()
        self._greenlets = [
            gevent.spawn(self._heartbeat_loop),
            gevent.spawn(self._sweep_loop),
        ]
        if self.fleet is not None:
            self._greenlets.append(gevent.spawn(self.fleet.presence_writer.run, 0.2))
        self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        self._announce()
        if self._registered:
            self._notify_ready()
        else:
            self.notifier.status(self._status() + ": waiting for the store to register")

    def _advertise(self) -> str:
        s = self.settings
        if s.advertise_addr:
            return s.advertise_addr
        host = s.grpc_addr.host
        if host in ("0.0.0.0", "::", ""):
            host = socket.gethostname()
        return f"{host}:{self.grpc_port}"

    def _registration(self) -> NodeInfo:
        now = time.time()
        ws_host = self.settings.ws_addr.host
        return NodeInfo(
            node_id=self.node_id,
            grpc_addr=self._advertise(),
            ws_addr=f"{ws_host}:{self.ws_port}",
            started_at=self.started_at,
            expires_at=now + 3 * self.settings.heartbeat_interval,
            connections=self.hub.connection_count,
        )

    def _register(self) -> None:
        try:
            self.store.register_node(self._registration())
            self._store_ok = True
            self._registered = True
        except StoreUnavailable as exc:
            self._store_ok = False
            self.metrics.store_errors.inc()
            log.error("node registration failed: %s", exc)

    def _announce(self) -> None:
        s = self.settings
        ws_host = "127.0.0.1" if s.ws_addr.host in ("0.0.0.0", "::") else s.ws_addr.host
        log.info(
            "node ready" if self._registered else "node listening, not registered yet",
            extra={
                "node": self.node_id,
                "ws": f"{s.ws_addr.host}:{self.ws_port}",
                "grpc": f"{s.grpc_addr.host}:{self.grpc_port}",
                "admin": f"{s.admin_addr.host}:{self.admin_port}",
                "store": "embedded" if s.embedded else "mongodb",
            },
        )
        if s.log_format != "text" or not (sys.stderr.isatty() or s.demo):
            return  # the banner is for a person at a terminal, not for a log collector
        env = ""
        if self.grpc_port != 50051 or s.grpc_addr.host != "127.0.0.1":
            env = f"PUSHSVC_GRPC_ADDR={s.grpc_addr.host}:{self.grpc_port} "
        if s.embedded and s.data_dir != "./pushsvc-data":
            env += f"PUSHSVC_DATA_DIR={s.data_dir} "
        cli = _cli_name()
        connect = "a WebSocket client to "
        if importlib.util.find_spec("websockets") is not None:
            connect = f"{os.path.relpath(sys.executable)} -m websockets "
        lines = [
            f"pushsvc node {self.node_id} is up. Try it:",
            f"  mint a token:  TOKEN=$({env}{cli} token --user alice)",
            f'  connect:       {connect}"ws://{ws_host}:{self.ws_port}/ws?token=$TOKEN"',
            f"  push:          {env}{cli} push --user alice --data '{{\"hello\": 1}}'",
        ]
        if s.demo:
            lines.append(f"  or open http://{ws_host}:{self.ws_port}/demo?token=$TOKEN")
        print("\n".join(lines), file=sys.stderr, flush=True)

    # -- housekeeping -----------------------------------------------------------------------

    def _status(self) -> str:
        state = "draining" if self._draining else "ready" if self._ready_sent else "starting"
        return (
            f"{state}: {self.hub.connection_count} connections, "
            f"{self.hub.user_count} users (node {self.node_id})"
        )

    def _notify_ready(self) -> None:
        """READY=1 once the listeners are bound and the node is registered."""
        if not self._ready_sent:
            self._ready_sent = True
            self.notifier.ready(self._status())

    def _watchdog_loop(self, interval: float) -> None:
        """WATCHDOG=1 from the event loop: a blocked loop stops it and systemd restarts us."""
        self.notifier.watchdog()
        while True:
            gevent.sleep(interval)
            self.notifier.watchdog()

    def _heartbeat_loop(self) -> None:
        interval = self.settings.heartbeat_interval
        while not self._stop.wait(interval):
            if not self._registered:
                self._register()  # the store was down at start: register in full now
                if self._registered:
                    log.info("node registered", extra={"node": self.node_id})
                    self._notify_ready()
                self.notifier.status(self._status())
                continue
            reg = self._registration()
            try:
                self.store.refresh_node(reg.node_id, reg.expires_at, reg.connections)
                if not self._store_ok:
                    log.info("store reachable again")
                    if self.fleet is not None:
                        self.fleet.presence_writer.mark_resync()
                self._store_ok = True
            except StoreUnavailable as exc:
                if self._store_ok:
                    log.error("store unreachable: %s", exc)
                self._store_ok = False
                self.metrics.store_errors.inc()
            self.notifier.status(self._status())

    def _sweep_loop(self) -> None:
        while not self._stop.wait(self.settings.sweep_interval):
            try:
                removed = self.store.sweep(time.time())
                if removed:
                    log.debug("swept %d expired records", removed)
            except StoreUnavailable as exc:
                self.metrics.store_errors.inc()
                log.warning("sweep failed: %s", exc)

    def readiness(self) -> tuple[bool, str]:
        if self._draining:
            return False, "draining"
        if not self._store_ok:
            return False, "store unreachable"
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
        self.health.enter_graceful_shutdown()  # gRPC health NOT_SERVING
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
        log.info("draining", extra={"connections": self.hub.connection_count})
        if self.ws_server is not None:
            self.ws_server.close()  # stop accepting; existing connections go on
        # No heartbeat may re-create the registration, no presence write may follow it.
        for g in self._greenlets:
            g.kill(block=True, timeout=min(1.0, left()))
        with gevent.Timeout(min(STORE_STEP, left()), False):
            try:
                self.store.deregister_node(self.node_id)
            except StoreUnavailable as exc:
                log.warning("deregistration failed (the registration expires by itself): %s", exc)
        # Keep time for the in-flight RPCs and the last flush after the connections.
        tail = min(GRPC_GRACE + 1.0, 0.3 * budget)
        closed = self._close_connections(deadline - tail)
        log.info("connections closed", extra={"closed": closed, "open": self.hub.connection_count})
        grace = min(GRPC_GRACE, left(0.1 * budget))
        stopped = self.grpc_server.stop(grace=grace)
        done = stopped.wait(left(0.05 * budget))
        log.info("grpc stopped", extra={"grace": round(grace, 3), "in_time": bool(done)})
        with gevent.Timeout(max(0.01, left(0.02 * budget)), False):
            self.receipts.stop()  # flushes pending acks and receipts
        if self.fleet is not None:
            self.fleet.close()
        if self.admin_server is not None:
            self.admin_server.stop(timeout=min(1.0, left()))
        self.store.close()
        self.notifier.status(f"stopped: {closed} connections handed over (node {self.node_id})")
        if self._watchdog is not None:
            self._watchdog.kill(block=False)
        self.notifier.close()
        log.info("stopped", extra={"closed": closed, "seconds": round(budget - left(), 3)})

    def _close_connections(self, until: float) -> int:
        """Close every connection with 1012, DRAIN_BATCH at a time: a batch's close
        handshakes finish (or DRAIN_BATCH_WAIT passes) and a short pause follows before
        the next batch, so clients reconnect elsewhere spread out, not all at once."""
        sessions = self.hub.sessions()
        batches = math.ceil(len(sessions) / DRAIN_BATCH)
        window = max(0.0, until - time.monotonic())
        pause = min(DRAIN_PAUSE, 0.25 * window / batches) if batches > 1 else 0.0
        for i in range(batches):
            batch = sessions[i * DRAIN_BATCH : (i + 1) * DRAIN_BATCH]
            if time.monotonic() >= until:
                batch = sessions[i * DRAIN_BATCH :]  # out of time: tell everyone at once
            for session in batch:
                session.close(Close.RESTART)
            remaining = until - time.monotonic()
            gevent.wait(
                [s.closed for s in batch], timeout=max(0.0, min(DRAIN_BATCH_WAIT, remaining))
            )
            if len(batch) > DRAIN_BATCH or i == batches - 1:
                break
            self.notifier.status(self._status())
            gevent.sleep(pause)  # pacing the reconnects, not synchronisation
        late = [s for s in self.hub.sessions() if not s.closing]  # handshakes already past
        for session in late:
            session.close(Close.RESTART)
        everyone = sessions + late
        gevent.wait([s.closed for s in everyone], timeout=max(0.0, until - time.monotonic()))
        return len(everyone)


def _cli_name() -> str:
    """How the person at this terminal can run the command line again."""
    argv0 = sys.argv[0]
    if os.path.basename(argv0) == "pushsvc" and shutil.which("pushsvc") != argv0:
        return os.path.relpath(argv0) if not argv0.startswith("/") else argv0
    return "pushsvc"


def _listen(addr: Address, name: str, reuse_port: bool = False) -> socket.socket:
    try:
        return edge.listen_socket(addr, reuse_port=reuse_port)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {name} {addr}: {exc.strerror}") from None


def run_node(settings: Settings) -> int:
    configure_logging(settings.log_level, settings.log_format)
    route_gevent_errors(gevent.get_hub())
    # The embedded store runs SQLite on its own OS thread; a short switch interval
    # hands the GIL back to it quickly while the event loop is busy.
    sys.setswitchinterval(0.0005)
    try:
        node = Node(settings)
        node.start()
    except ConfigError as exc:
        print(f"pushsvc: error: {exc}", file=sys.stderr)
        return 2
    except StoreUnavailable as exc:
        print(f"pushsvc: error: {exc}", file=sys.stderr)
        return 1
    for sig in (signal.SIGTERM, signal.SIGINT):
        gevent.signal_handler(sig, node.request_stop)
    node.wait()
    node.drain()
    return 0
