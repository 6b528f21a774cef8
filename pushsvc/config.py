"""Settings: defaults, a TOML config file, and ``PUSHSVC_<NAME>`` environment variables.

Precedence: environment over file over defaults. Every value is checked when it
is loaded; a bad one raises ``ConfigError`` naming the setting and what to do.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from pushsvc.errors import ConfigError

ENV_PREFIX = "PUSHSVC_"
ADMIN_TOKEN_MIN = 16  # characters of a configured admin token, at least


@dataclass(frozen=True, slots=True)
class Address:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def is_loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


def parse_address(text: str, name: str = "address") -> Address:
    """Parse ``host:port`` (``[v6]:port`` for IPv6); port 0 means "any free port"."""
    text = text.strip()
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise ConfigError(f"{name}: {text!r} is not host:port (example: 127.0.0.1:50051)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        port = int(port_text)
    except ValueError:
        raise ConfigError(f"{name}: port {port_text!r} in {text!r} is not a number") from None
    if not 0 <= port <= 65535:
        raise ConfigError(f"{name}: port {port} in {text!r} is outside 0-65535")
    if any(c.isspace() for c in host) or "/" in host:
        raise ConfigError(f"{name}: host {host!r} in {text!r} is not a host name or IP")
    return Address(host, port)


def _as_str(value: Any, name: str) -> str:
    if not isinstance(value, str | int | float) or isinstance(value, bool):
        raise ConfigError(f"{name}: expected a string, got {type(value).__name__}")
    return str(value)


def _as_list(value: Any, name: str) -> tuple[str, ...]:
    if isinstance(value, str):
        items = [v.strip() for v in value.split(",")]
    elif isinstance(value, list):
        items = [_as_str(v, name).strip() for v in value]
    else:
        raise ConfigError(f"{name}: expected a comma-separated string or a list")
    return tuple(i for i in items if i)


def _as_bool(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    text = _as_str(value, name).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"{name}: {value!r} is not a boolean (use true or false)")


def _auto_bool(value: Any, name: str) -> str:
    """``auto``, ``true`` or ``false`` (any boolean spelling ``_as_bool`` takes)."""
    if isinstance(value, str) and value.strip().lower() in ("auto", ""):
        return "auto"
    try:
        return "true" if _as_bool(value, name) else "false"
    except ConfigError:
        raise ConfigError(f"{name}: {value!r} is not auto, true or false") from None


def _number(kind: type, lo: float, hi: float) -> Callable[[Any, str], Any]:
    def parse(value: Any, name: str) -> Any:
        if isinstance(value, bool):
            raise ConfigError(f"{name}: expected a number, got a boolean")
        try:
            number = kind(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name}: {value!r} is not a number") from None
        if not lo <= number <= hi:
            raise ConfigError(f"{name}: {number} is outside {kind(lo)}..{kind(hi)}")
        return number

    return parse


def _choice(*choices: str, upper: bool = False) -> Callable[[Any, str], str]:
    def parse(value: Any, name: str) -> str:
        text = _as_str(value, name).strip()
        text = text.upper() if upper else text.lower()
        if text not in choices:
            raise ConfigError(f"{name}: {value!r} is not one of {', '.join(choices)}")
        return text

    return parse


def _addr(value: Any, name: str) -> Address:
    return parse_address(_as_str(value, name), name)


def _opt_str(value: Any, name: str) -> str | None:
    text = _as_str(value, name).strip()
    return text or None


def _opt_addr(value: Any, name: str) -> Address | None:
    text = _as_str(value, name).strip()
    return parse_address(text, name) if text else None


def _float(lo: float, hi: float) -> Callable[[Any, str], Any]:
    return _number(float, lo, hi)


def _int(lo: int, hi: int) -> Callable[[Any, str], Any]:
    return _number(int, lo, hi)


def _secret(min_length: int) -> Callable[[Any, str], str | None]:
    def parse(value: Any, name: str) -> str | None:
        text = _opt_str(value, name)
        if text is not None and len(text) < min_length:
            raise ConfigError(
                f"{name}: {len(text)} characters is too short: use at least {min_length} "
                "random characters (e.g. the output of: openssl rand -base64 32)"
            )
        return text

    return parse


def _setting(default: Any, parse: Callable[[Any, str], Any], doc: str) -> Any:
    return field(default=default, metadata={"parse": parse, "doc": doc})


@dataclass(frozen=True)
class Settings:
    """Every setting of a node. Env name: ``PUSHSVC_`` + the upper-cased field name."""

    ws_addr: Address = _setting(Address("0.0.0.0", 8080), _addr, "WebSocket listener")
    grpc_addr: Address = _setting(Address("127.0.0.1", 50051), _addr, "gRPC listener")
    admin_addr: Address = _setting(
        Address("127.0.0.1", 9090), _addr, "/metrics, /healthz, /readyz listener"
    )
    mongo_uri: str | None = _setting(None, _opt_str, "MongoDB URI; unset = embedded store")
    mongo_db: str = _setting("pushsvc", _as_str, "MongoDB database name")
    mongo_commit_records: str = _setting(
        "auto",
        _auto_bool,
        "commit stored batches by one record: auto = as the database's format says",
    )
    data_dir: str = _setting("./pushsvc-data", _as_str, "embedded store directory")
    jwt_secret: str | None = _setting(None, _opt_str, "HS256 secret for client tokens")
    jwt_algorithm: str = _setting(
        "HS256", _choice("HS256", "RS256", "ES256", upper=True), "token signature algorithm"
    )
    jwt_public_key_file: str | None = _setting(
        None, _opt_str, "PEM public key for RS256/ES256 tokens"
    )
    api_keys: tuple[str, ...] = _setting((), _as_list, "comma-separated keys for gRPC callers")
    cluster_key: str | None = _setting(None, _opt_str, "shared key between nodes of a fleet")
    node_id: str | None = _setting(None, _opt_str, "default <hostname>-<grpc port>")
    advertise_addr: str | None = _setting(None, _opt_str, "gRPC address peers dial")
    allowed_origins: tuple[str, ...] = _setting((), _as_list, "browser Origins allowed")
    log_level: str = _setting("info", _choice("debug", "info", "warning", "error"), "log verbosity")
    log_format: str = _setting("text", _choice("text", "json"), "text or json")
    ping_interval: float = _setting(25.0, _float(0.05, 3600), "seconds between pings")
    ping_timeout: float = _setting(60.0, _float(0.1, 7200), "close a silent connection after")
    heartbeat_interval: float = _setting(5.0, _float(0.1, 600), "node registration refresh")
    max_payload_bytes: int = _setting(65536, _int(1, 16 * 1024 * 1024), "push payload limit")
    max_frame_bytes: int = _setting(8192, _int(128, 16 * 1024 * 1024), "inbound frame limit")
    send_queue_size: int = _setting(1024, _int(1, 1_000_000), "frames queued per connection")
    max_replay: int = _setting(1000, _int(1, 1_000_000), "un-acked entries replayed")
    default_ttl_seconds: int = _setting(86400, _int(0, 365 * 86400), "inbox time-to-live")
    max_ttl_seconds: int = _setting(30 * 86400, _int(0, 365 * 86400), "largest ttl_seconds")
    client_rate: float = _setting(50.0, _float(0.1, 1e6), "frames/s a client may send")
    client_burst: int = _setting(100, _int(1, 1_000_000), "burst of client frames")
    abuse_limit: int = _setting(10, _int(1, 1_000_000), "bad frames before closing 4008")
    api_rate: float = _setting(0.0, _float(0, 1e9), "gRPC calls/s per API key, 0 = unlimited")
    api_burst: int = _setting(1000, _int(1, 1_000_000_000), "burst of gRPC calls per key")
    forward_timeout: float = _setting(2.0, _float(0.01, 60), "node-to-node deadline")
    drain_timeout: float = _setting(20.0, _float(0.1, 600), "bound on graceful shutdown")
    connect_rate: float = _setting(
        5000.0, _float(1, 1e6), "connections welcomed per second; beyond, they queue"
    )
    connect_queue: int = _setting(
        20000, _int(1, 10_000_000), "connections waiting for their welcome; beyond, 1013"
    )
    position_check: float = _setting(
        30.0, _float(0.1, 3600), "seconds between checks that live connections missed nothing"
    )
    welcome_timeout: float = _setting(
        10.0, _float(0.1, 600), "seconds a connection waits for the store before 1013"
    )
    sweep_interval: float = _setting(60.0, _float(0.1, 86400), "expired-data sweeper period")
    receipt_retention: float = _setting(
        3600.0, _float(0, 30 * 86400), "seconds receipt events are kept for StreamReceipts; 0 = off"
    )
    receipt_buffer: int = _setting(
        10000, _int(10, 10_000_000), "receipt events queued per StreamReceipts call"
    )
    receipt_subscribers: int = _setting(
        64, _int(1, 200), "StreamReceipts calls a node serves at once"
    )
    auth_hook_addr: str | None = _setting(
        None, _opt_str, "gRPC AuthService asked at connect; unset = JWTs"
    )
    auth_hook_timeout: float = _setting(2.0, _float(0.01, 60), "deadline of one AuthService call")
    auth_hook_cache_ttl: float = _setting(
        30.0, _float(0, 86400), "seconds an AuthService answer is reused"
    )
    auth_hook_cache_size: int = _setting(10000, _int(0, 10_000_000), "AuthService answers kept")
    auth_hook_cookie: str | None = _setting(
        None, _opt_str, "cookie sent to the AuthService when a client sends no token"
    )
    auth_hook_key: str | None = _setting(
        None, _opt_str, "sent to the AuthService as authorization: Bearer <key>"
    )
    demo: bool = _setting(False, _as_bool, "serve the demo page at /demo")
    # -- the admin console (admin_console.py): off unless admin_ui --------------------
    admin_ui: bool = _setting(False, _as_bool, "serve the admin console at /admin on admin_addr")
    admin_token: str | None = _setting(
        None,
        _secret(ADMIN_TOKEN_MIN),
        "bearer token of the admin console; unset: generated into data_dir (embedded store)",
    )
    # TLS (pushsvc/tls.py; docs/operations.md "TLS"). Files are read at start-up and
    # again on SIGHUP; a bad file stops the start, or keeps the current ones on SIGHUP.
    tls_cert: str | None = _setting(
        None, _opt_str, "PEM certificate chain: wss:// and gRPC over TLS (with tls_key)"
    )
    tls_key: str | None = _setting(None, _opt_str, "PEM private key of tls_cert, unencrypted")
    tls_ca: str | None = _setting(
        None, _opt_str, "PEM CA bundle that issued the nodes' certificates (peers, pushsvc CLI)"
    )
    cluster_ca: str | None = _setting(
        None, _opt_str, "PEM CA of mutual TLS between nodes: NodeService on cluster_addr"
    )
    cluster_addr: Address | None = _setting(
        None, _opt_addr, "mutual-TLS listener peers dial for NodeService (with cluster_ca)"
    )
    # -- hostile input: the WebSocket port's budgets and limits, client tokens
    handshake_timeout: float = _setting(
        10.0,
        _float(0.1, 600),
        "seconds from accept to a complete request head, TLS included; then 408",
    )
    first_frame_timeout: float = _setting(
        30.0, _float(0.2, 3600), "seconds after the upgrade for the first frame; then 1001"
    )
    max_connections: int = _setting(
        100_000, _int(1, 10_000_000), "sockets on the WebSocket port; beyond, 503"
    )
    max_connections_per_ip: int = _setting(
        10_000, _int(0, 10_000_000), "sockets per IPv4 address or IPv6 /64; beyond, 429; 0 = off"
    )
    max_header_bytes: int = _setting(
        16384, _int(1024, 1_048_576), "request line and header fields; beyond, 431 (414)"
    )
    max_header_fields: int = _setting(100, _int(1, 10_000), "header fields; beyond, 431")
    max_token_lifetime: int = _setting(
        30 * 86400, _int(0, 100 * 365 * 86400), "longest validity of a client token; 0 = any"
    )
    ws_reuse_port: bool = _setting(
        False, _as_bool, "share ws_addr with other nodes (SO_REUSEPORT); MongoDB only"
    )

    @property
    def embedded(self) -> bool:
        return self.mongo_uri is None

    def resolved_node_id(self) -> str:
        return self.node_id or f"{socket.gethostname()}-{self.grpc_addr.port}"

    def env_name(self, name: str) -> str:
        return ENV_PREFIX + name.upper()


SETTING_NAMES = frozenset(f.name for f in fields(Settings))


def load_settings(
    config_file: str | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Build Settings from defaults, then the TOML file, then the environment."""
    settings = Settings(**_parse(config_file, environ, overrides, _raise))
    _check_consistency(settings)
    return settings


def check_settings(
    config_file: str | None = None, environ: Mapping[str, str] | None = None
) -> tuple[Settings | None, list[str]]:
    """Every problem ``serve`` would refuse to start with, one message each, without
    starting anything (``pushsvc check-config``); the settings when there is none."""
    problems: list[str] = []
    values = _parse(config_file, environ, None, lambda exc: problems.append(str(exc)))
    if problems:
        return None, problems
    settings = Settings(**values)
    problems = consistency_problems(settings) + secure_problems(settings)
    return (None if problems else settings), problems


def _raise(exc: ConfigError) -> None:
    raise exc


def _parse(
    config_file: str | None,
    environ: Mapping[str, str] | None,
    overrides: Mapping[str, Any] | None,
    problem: Callable[[ConfigError], None],
) -> dict[str, Any]:
    """The parsed values given by the file, the environment and the overrides (in
    that order of precedence, lowest first); each bad one is reported to ``problem``."""
    environ = os.environ if environ is None else environ
    raw: dict[str, tuple[Any, str]] = {}
    if config_file:
        try:
            data = _read_toml(config_file)
        except ConfigError as exc:
            problem(exc)
            data = {}
        for key, value in data.items():
            if key not in SETTING_NAMES:
                problem(ConfigError(f"{config_file}: unknown setting {key!r}"))
                continue
            raw[key] = (value, f"{config_file}: {key}")
    for env_key, value in environ.items():
        if not env_key.startswith(ENV_PREFIX):
            continue
        key = env_key[len(ENV_PREFIX) :].lower()
        if key not in SETTING_NAMES:
            problem(ConfigError(f"unknown setting {env_key} in the environment"))
            continue
        raw[key] = (value, env_key)
    for key, value in (overrides or {}).items():
        raw[key] = (value, key)
    values: dict[str, Any] = {}
    for f in fields(Settings):
        if f.name in raw:
            value, where = raw[f.name]
            try:
                values[f.name] = f.metadata["parse"](value, where)
            except ConfigError as exc:
                problem(exc)
    return values


def _read_toml(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    return data


def consistency_problems(s: Settings) -> list[str]:
    """Settings that are each valid but do not go together."""
    problems = []
    if s.ping_timeout <= s.ping_interval:
        problems.append(
            f"ping_timeout ({s.ping_timeout}) must be larger than ping_interval ({s.ping_interval})"
        )
    if s.default_ttl_seconds > s.max_ttl_seconds:
        problems.append("default_ttl_seconds is larger than max_ttl_seconds")
    if s.ws_reuse_port and s.embedded:
        problems.append(
            "ws_reuse_port needs MongoDB: nodes with embedded stores sharing one port would "
            "split a user's connections between stores that do not know each other; "
            "unset PUSHSVC_WS_REUSE_PORT or set PUSHSVC_MONGO_URI"
        )
    if s.jwt_algorithm != "HS256" and not s.jwt_public_key_file:
        problems.append(
            f"jwt_algorithm {s.jwt_algorithm} needs PUSHSVC_JWT_PUBLIC_KEY_FILE (a PEM public key)"
        )
    return problems + tls_problems(s)


def tls_problems(s: Settings) -> list[str]:
    """TLS settings that do not go together (the files themselves: pushsvc.tls.load)."""
    problems = []
    if bool(s.tls_cert) != bool(s.tls_key):
        problems.append(
            "PUSHSVC_TLS_CERT and PUSHSVC_TLS_KEY go together: set both (the certificate "
            "chain and its private key) or neither"
        )
    if s.cluster_ca and not s.tls_cert:
        problems.append(
            "PUSHSVC_CLUSTER_CA (mutual TLS between nodes) needs PUSHSVC_TLS_CERT and "
            "PUSHSVC_TLS_KEY: this node's certificate, issued by that CA"
        )
    if s.cluster_ca and s.cluster_addr is None:
        problems.append(
            "PUSHSVC_CLUSTER_CA needs PUSHSVC_CLUSTER_ADDR: the listener where peers call "
            "NodeService with their client certificates (example: 10.0.0.5:50052)"
        )
    if s.cluster_addr is not None and not s.cluster_ca:
        problems.append(
            "PUSHSVC_CLUSTER_ADDR is the mutual-TLS listener between nodes: set "
            "PUSHSVC_CLUSTER_CA (and PUSHSVC_TLS_CERT, PUSHSVC_TLS_KEY) too, or unset it"
        )
    return problems


def _check_consistency(s: Settings) -> None:
    problems = consistency_problems(s)
    if problems:
        raise ConfigError(problems[0])


def secure_problems(s: Settings) -> list[str]:
    """The secure-by-default start-up rules of a node (DESIGN §2.3) it breaks."""
    problems = []
    if not s.grpc_addr.is_loopback and not s.api_keys:
        problems.append(
            f"gRPC listens on {s.grpc_addr}, beyond this host, without API keys: "
            "set PUSHSVC_API_KEYS (comma-separated) or bind PUSHSVC_GRPC_ADDR to 127.0.0.1"
        )
    if not s.embedded:
        if not s.cluster_key:
            problems.append(
                "running with MongoDB (a fleet) needs PUSHSVC_CLUSTER_KEY, the same on every node"
            )
        if s.jwt_algorithm == "HS256" and not s.jwt_secret:
            problems.append("running with MongoDB needs PUSHSVC_JWT_SECRET, the same on every node")
        if s.admin_ui and not s.admin_token:
            problems.append(
                "the admin console (PUSHSVC_ADMIN_UI) of a fleet node needs PUSHSVC_ADMIN_TOKEN"
            )
    return problems


def check_secure(s: Settings) -> None:
    problems = secure_problems(s)
    if problems:
        raise ConfigError(problems[0])


def describe() -> list[tuple[str, str, str]]:
    """(env name, default, doc) for each setting, for `pushsvc serve --help-settings`."""
    out = []
    for f in fields(Settings):
        default = f.default
        shown = ",".join(default) if isinstance(default, tuple) else str(default)
        out.append(
            (ENV_PREFIX + f.name.upper(), "" if default is None else shown, f.metadata["doc"])
        )
    return out
