"""The ``pushsvc`` command: run a node, mint client tokens, and call a node's API.

    pushsvc serve [--config FILE]
    pushsvc token --user alice [--ttl 3600] [--topic 'news*']
    pushsvc push --user alice --data '{"hello":1}' [--ttl 0]
    pushsvc publish --topic news --data ...
    pushsvc presence alice [bob ...]
    pushsvc nodes
    pushsvc status <message id>
    pushsvc disconnect alice [--reason R]
    pushsvc check-config [--config FILE] [--env-file FILE ...]
    pushsvc gen-config [--output FILE]
    pushsvc backup PATH
    pushsvc store-format [--set {1,2}]
    pushsvc reload --pid PID

Client commands reach ``--addr`` or ``PUSHSVC_GRPC_ADDR`` (default 127.0.0.1:50051)
with ``--api-key``, else ``PUSHSVC_API_KEY``, else the first of ``PUSHSVC_API_KEYS``
(as every pushsvc client does), else the key a node generated into
``<PUSHSVC_DATA_DIR>/api-key``. They dial with TLS when ``PUSHSVC_TLS_CA`` (the
CA file to verify the node with), ``PUSHSVC_TLS=1`` (the system's roots) or the
node's own ``PUSHSVC_TLS_CERT`` is set. They read only those variables, so an
environment file meant for the node does not trip them up.

Exit status: 0 success, 1 the call failed, 2 bad arguments or configuration,
130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pushsvc import __version__
from pushsvc.errors import ConfigError

PROG = "pushsvc"
DEFAULT_GRPC_ADDR = "127.0.0.1:50051"
DEFAULT_DATA_DIR = "./pushsvc-data"
API_KEY_FILE = "api-key"
JWT_SECRET_FILE = "jwt-secret"
ADMIN_TOKEN_FILE = "admin-token"
NO_SECRET = (
    "no JWT secret: start the node once (it generates one in DATA_DIR) or set PUSHSVC_JWT_SECRET"
)


# -- settings the client commands need -------------------------------------------


def _env(name: str) -> str | None:
    value = os.environ.get(name, "").strip()
    return value or None


def _dial_target(text: str, where: str) -> str:
    """A gRPC target for a host:port; wildcard listen addresses dial this host."""
    if "://" in text or text.startswith("unix:"):
        return text  # a gRPC target URI (dns:///, unix:...), passed as it is
    from pushsvc.config import Address, parse_address

    addr = parse_address(text, where)
    if addr.host in ("", "0.0.0.0"):
        addr = Address("127.0.0.1", addr.port)
    elif addr.host == "::":
        addr = Address("::1", addr.port)
    if addr.port == 0:
        raise ConfigError(f"{where}: port 0 cannot be dialed; give the node's real port")
    return str(addr)


def _read_generated(data_dir: str, name: str) -> str | None:
    """A secret a node generated into its data directory; None if there is none."""
    path = Path(data_dir) / name
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    return text or None


class _Target:
    def __init__(self, addr: str, api_key: str | None, key_source: str) -> None:
        self.addr = addr
        self.api_key = api_key
        self.key_source = key_source


def _client_target(args: argparse.Namespace) -> _Target:
    if args.config:
        from pushsvc.config import load_settings

        settings = load_settings(args.config)
        addr = (
            _dial_target(args.addr, "--addr")
            if args.addr
            else _dial_target(str(settings.grpc_addr), "grpc_addr")
        )
        if args.api_key:
            return _Target(addr, args.api_key, "--api-key")
        if settings.api_keys:
            return _Target(addr, settings.api_keys[0], "api_keys")
        data_dir = settings.data_dir
    else:
        if args.addr:
            addr = _dial_target(args.addr, "--addr")
        else:
            env_addr = _env("PUSHSVC_GRPC_ADDR")
            addr = _dial_target(env_addr, "PUSHSVC_GRPC_ADDR") if env_addr else DEFAULT_GRPC_ADDR
        if args.api_key:
            return _Target(addr, args.api_key, "--api-key")
        from pushsvc_client import api_key_from_env

        key = api_key_from_env()
        if key is not None:
            source = "PUSHSVC_API_KEY" if _env("PUSHSVC_API_KEY") else "PUSHSVC_API_KEYS"
            return _Target(addr, key, source)
        data_dir = _env("PUSHSVC_DATA_DIR") or DEFAULT_DATA_DIR
    key = _read_generated(data_dir, API_KEY_FILE)
    source = str(Path(data_dir) / API_KEY_FILE)
    return _Target(addr, key, source if key else "")


def _client_tls(args: argparse.Namespace) -> tuple[bool, str | None]:
    """(TLS or not, CA file) for the client commands: the node's settings with
    --config; else the client's variables, or the node's own certificate setting
    (an environment file of a TLS node: dial it with TLS)."""
    if args.config:
        from pushsvc.config import load_settings

        settings = load_settings(args.config)
        return bool(settings.tls_cert or settings.tls_ca), settings.tls_ca
    from pushsvc_client import tls_from_env

    tls, ca = tls_from_env()
    return tls or bool(_env("PUSHSVC_TLS_CERT")), ca


# -- output ------------------------------------------------------------------------


def _print_json(message: Any) -> None:
    from google.protobuf.json_format import MessageToDict

    obj = MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    print(json.dumps(obj, separators=(",", ":"), ensure_ascii=False))


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _uptime(started_at: float) -> str:
    if started_at <= 0:
        return "start time unknown"
    seconds = max(0, int(time.time() - started_at))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"up {days}d{hours}h"
    if hours:
        return f"up {hours}h{minutes:02d}m"
    if minutes:
        return f"up {minutes}m{secs:02d}s"
    return f"up {secs}s"


# -- commands ----------------------------------------------------------------------


def _cmd_serve(args: argparse.Namespace) -> int:
    from pushsvc.config import describe, load_settings

    if args.help_settings:
        rows = describe()
        width = max(len(name) for name, _, _ in rows)
        dwidth = min(24, max(len(default) for _, default, _ in rows))
        print(f"{'SETTING':<{width}}  {'DEFAULT':<{dwidth}}  DESCRIPTION")
        for name, default, doc in rows:
            print(f"{name:<{width}}  {default or '-':<{dwidth}}  {doc}")
        print("\nEvery setting is also a key of the --config TOML file (lower case, no prefix);")
        print("the environment wins over the file.")
        return 0
    overrides = {"demo": True} if args.dev else None
    settings = load_settings(args.config, overrides=overrides)
    # gRPC's core writes its own lines straight to fd 2, past the log formatter: one per
    # failed TLS handshake at INFO, one per malformed HTTP/2 header at ERROR (a peer's
    # fault, which the node survives). None by default, so every line on stderr stays a
    # formatted event; GRPC_VERBOSITY set in the environment still asks for them.
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    from pushsvc.nativethreads import cooperate

    cooperate()  # before anything of the node is imported
    from pushsvc.server import run_server

    return run_server(settings, announce=_banner)


def _banner(server: Any) -> None:
    """For a person at a terminal (or ``make run``): how to try the node."""
    import importlib.util
    import shutil

    s = server.settings
    if s.log_format != "text" or not (sys.stderr.isatty() or s.demo):
        return  # the banner is for a person at a terminal, not for a log collector
    ws_host = "127.0.0.1" if s.ws_addr.host in ("0.0.0.0", "::") else s.ws_addr.host
    env = ""
    if server.grpc_port != 50051 or s.grpc_addr.host != "127.0.0.1":
        env = f"PUSHSVC_GRPC_ADDR={s.grpc_addr.host}:{server.grpc_port} "
    if s.embedded and s.data_dir != DEFAULT_DATA_DIR:
        env += f"PUSHSVC_DATA_DIR={s.data_dir} "
    ws, http, trust = "ws", "http", ""
    if s.tls_cert:  # the client commands and the WebSocket client verify the node's certificate
        ws, http = "wss", "https"
        env += f"PUSHSVC_TLS_CA={s.tls_ca} " if s.tls_ca else "PUSHSVC_TLS=1 "
        trust = f"SSL_CERT_FILE={s.tls_ca} " if s.tls_ca else ""
    argv0 = sys.argv[0]
    cli = PROG
    if os.path.basename(argv0) == PROG and shutil.which(PROG) != argv0:
        cli = os.path.relpath(argv0) if not argv0.startswith("/") else argv0
    connect = "a WebSocket client to "
    if importlib.util.find_spec("websockets") is not None:
        connect = f"{os.path.relpath(sys.executable)} -m websockets "
    lines = [
        f"pushsvc node {server.node_id} is up. Try it:",
        f"  mint a token:  TOKEN=$({env}{cli} token --user alice)",
        f'  connect:       {trust}{connect}"{ws}://{ws_host}:{server.ws_port}/ws?token=$TOKEN"',
        f"  push:          {env}{cli} push --user alice --data '{{\"hello\": 1}}'",
    ]
    if s.demo:
        lines.append(f"  or open {http}://{ws_host}:{server.ws_port}/demo?token=$TOKEN")
    if server.admin_console is not None:
        admin_host = "127.0.0.1" if s.admin_addr.host in ("0.0.0.0", "::") else s.admin_addr.host
        where = "PUSHSVC_ADMIN_TOKEN"
        if not s.admin_token:
            where = os.path.join(s.data_dir, ADMIN_TOKEN_FILE)
        lines.append(
            f"  admin console: http://{admin_host}:{server.admin_port}/admin (token: {where})"
        )
    print("\n".join(lines), file=sys.stderr, flush=True)


def _cmd_token(args: argparse.Namespace) -> int:
    from pushsvc.auth import mint_token

    if args.config:
        from pushsvc.config import load_settings

        settings = load_settings(args.config)
        secret, algorithm = settings.jwt_secret, settings.jwt_algorithm
        mongo_uri, data_dir = settings.mongo_uri, settings.data_dir
    else:
        secret = _env("PUSHSVC_JWT_SECRET")
        algorithm = (_env("PUSHSVC_JWT_ALGORITHM") or "HS256").upper()
        mongo_uri = _env("PUSHSVC_MONGO_URI")
        data_dir = _env("PUSHSVC_DATA_DIR") or DEFAULT_DATA_DIR
    if algorithm != "HS256":
        raise ConfigError(
            f"the node checks {algorithm} tokens: pushsvc token mints HS256 tokens only; "
            "sign tokens with your private key"
        )
    if not secret:
        if mongo_uri:
            raise ConfigError("no JWT secret: set PUSHSVC_JWT_SECRET, the same as the fleet's")
        secret = _read_generated(data_dir, JWT_SECRET_FILE)
        if not secret:
            raise ConfigError(NO_SECRET)
    if len(secret.encode()) < 32:
        print(
            f"{PROG}: warning: the JWT secret is {len(secret.encode())} bytes long; "
            "use at least 32 random bytes",
            file=sys.stderr,
        )
    topics = list(args.topic or [])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PyJWT's own short-key warning: said above
        token = mint_token(secret, args.user, args.ttl, topics or None)
    if args.json:
        exp = int(time.time()) + args.ttl
        print(json.dumps({"token": token, "sub": args.user, "exp": exp, "topics": topics}))
    else:
        print(token)
    return 0


def _read_data(args: argparse.Namespace) -> bytes:
    if args.data is not None:
        return str(args.data).encode("utf-8")
    if args.data_file == "-":
        return sys.stdin.buffer.read()
    try:
        return Path(args.data_file).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read --data-file {args.data_file}: {exc.strerror}") from None


def _cmd_push(args: argparse.Namespace, client: Any) -> int:
    payload = _read_data(args)
    resp = client.push(
        args.user,
        payload,
        content_type=args.content_type,
        ttl_seconds=args.ttl,
        idempotency_key=args.idempotency_key,
    )
    if args.json:
        _print_json(resp)
    elif resp.duplicate:
        print(f"duplicate of {resp.message_id}: idempotency key seen before, nothing sent again")
    elif not resp.seqs:
        users = ", ".join(args.user)
        print(f"online-only push {resp.message_id}: sent to live connections of {users}")
    elif len(resp.seqs) == len(args.user):
        pairs = ", ".join(f"{u} seq {s}" for u, s in zip(args.user, resp.seqs, strict=True))
        print(f"pushed {resp.message_id}: {pairs}")
    else:
        print(f"pushed {resp.message_id}: seqs {', '.join(str(s) for s in resp.seqs)}")
    return 0


def _cmd_publish(args: argparse.Namespace, client: Any) -> int:
    resp = client.publish(args.topic, _read_data(args), content_type=args.content_type)
    if args.json:
        _print_json(resp)
    else:
        subs = _plural(resp.local_subscribers, "subscriber connection")
        print(f"published {resp.message_id} to {args.topic}: {subs} on the node that took it")
    return 0


def _cmd_presence(args: argparse.Namespace, client: Any) -> int:
    resp = client.presence(args.users)
    if args.json:
        _print_json(resp)
        return 0
    for p in resp.presence:
        if p.online:
            nodes = ", ".join(p.node_ids) or "?"
            print(f"{p.user_id}: online, {_plural(p.connections, 'connection')} on {nodes}")
        else:
            print(f"{p.user_id}: offline")
    return 0


def _cmd_nodes(args: argparse.Namespace, client: Any) -> int:
    resp = client.list_nodes()
    if args.json:
        _print_json(resp)
        return 0
    if not resp.nodes:
        print("no live nodes")
    for n in resp.nodes:
        print(
            f"{n.node_id}: grpc {n.grpc_addr or '?'}, ws {n.ws_addr or '?'}, "
            f"{_plural(n.connections, 'connection')}, {_uptime(n.started_at)}"
        )
    return 0


def _cmd_status(args: argparse.Namespace, client: Any) -> int:
    resp = client.message_status(args.message_id)
    if args.json:
        _print_json(resp)
        return 0
    if not resp.recipients:
        print(f"{args.message_id}: no recipients")
    for r in resp.recipients:
        if r.acked:
            state = "acked"
        elif r.delivered:
            state = "delivered, not acked yet"
        else:
            state = "stored, not delivered yet"
        print(f"{r.user_id} seq {r.seq}: {state}")
    return 0


def _cmd_disconnect(args: argparse.Namespace, client: Any) -> int:
    resp = client.disconnect(args.user, reason=args.reason)
    if args.json:
        _print_json(resp)
    else:
        closed = _plural(resp.connections_closed, "connection")
        print(f"disconnected {args.user}: {closed} closed")
    return 0


def _cmd_check_config(args: argparse.Namespace) -> int:
    from pushsvc.config_check import check

    report = check(args.config, args.env_file or ())
    for warning in report.warnings:
        print(f"{PROG}: warning: {warning}", file=sys.stderr)
    if report.settings is None:
        for problem in report.problems:
            print(f"{PROG}: error: {problem}", file=sys.stderr)
        return 2
    s = report.settings
    sources = [args.config or "defaults", *(args.env_file or ())]
    if report.from_env:
        sources.append(_plural(report.from_env, "PUSHSVC_* variable"))
    store = f"embedded store in {s.data_dir}" if s.embedded else f"MongoDB database {s.mongo_db}"
    console = f", admin console on {s.admin_addr}" if s.admin_ui else ""
    print(f"config ok ({', '.join(sources)}): node {s.resolved_node_id()}, {store}{console}")
    return 0


def _cmd_gen_config(args: argparse.Namespace) -> int:
    from pushsvc.config_gen import render

    text = render(__version__)
    if not args.output or args.output == "-":
        sys.stdout.write(text)
        return 0
    try:
        with open(args.output, "x") as out:
            out.write(text)
    except FileExistsError:
        raise ConfigError(
            f"{args.output} exists: not overwritten (remove it or give another path)"
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot write {args.output}: {exc.strerror}") from None
    print(f"wrote {args.output}: check it with {PROG} check-config --config {args.output}")
    return 0


def _cmd_reload(args: argparse.Namespace) -> int:
    from pushsvc.logsetup import journal_prefix
    from pushsvc.reloading import ReloadFailed, signal_and_wait

    data_dir = args.data_dir or _env("PUSHSVC_DATA_DIR") or DEFAULT_DATA_DIR
    try:
        signal_and_wait(args.pid, data_dir, timeout=args.timeout)
    except (ReloadFailed, OSError) as exc:
        reason = str(exc) if isinstance(exc, ReloadFailed) else f"cannot reload {args.pid}: {exc}"
        print(f"{journal_prefix()}{PROG}: error: {reason}", file=sys.stderr)
        return 1
    return 0


def _cmd_backup(args: argparse.Namespace) -> int:
    from pushsvc.backup import backup_data_dir
    from pushsvc.errors import StoreUnavailable

    if args.config:
        from pushsvc.config import load_settings

        settings = load_settings(args.config)
        mongo_uri, data_dir = settings.mongo_uri, settings.data_dir
    else:
        mongo_uri = _env("PUSHSVC_MONGO_URI")
        data_dir = _env("PUSHSVC_DATA_DIR") or DEFAULT_DATA_DIR
    data_dir = args.data_dir or data_dir
    if mongo_uri and not args.data_dir:
        raise ConfigError(
            "pushsvc backup copies the embedded store, and this node uses MongoDB "
            "(PUSHSVC_MONGO_URI): back that up with mongodump"
        )
    try:
        done = backup_data_dir(Path(data_dir), Path(args.path))
    except StoreUnavailable as exc:
        _fail(str(exc))
        return 1
    extra = f", with {', '.join(done.secrets)}" if done.secrets else ""
    print(
        f"backed up {data_dir} to {done.path}: {done.size / 1048576:.1f} MiB, "
        f"{_plural(done.messages, 'message')}, in {done.seconds:.1f} s{extra}; "
        f"start a node on it with PUSHSVC_DATA_DIR={done.path}"
    )
    return 0


_FORMATS = {
    1: "stored batches commit by updating each message; every release reads it",
    2: "stored batches commit by one outcome document; releases after 0.1.0 read it",
}


def _format_says(version: int) -> str:
    return _FORMATS.get(version, "a format of a later release")


def _cmd_store_format(args: argparse.Namespace) -> int:
    import pymongo
    from pymongo.errors import ConfigurationError, InvalidName, PyMongoError

    from pushsvc.store.commit_records import recorded_format, set_format

    if args.config:
        from pushsvc.config import load_settings

        settings = load_settings(args.config)
        mongo_uri, name = settings.mongo_uri, settings.mongo_db
    else:
        mongo_uri, name = _env("PUSHSVC_MONGO_URI"), _env("PUSHSVC_MONGO_DB") or "pushsvc"
    if not mongo_uri:
        raise ConfigError(
            "the store format is a fleet's MongoDB database's, and PUSHSVC_MONGO_URI is unset"
        )
    try:
        client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
            mongo_uri, serverSelectionTimeoutMS=10_000, connect=False
        )
    except (ConfigurationError, ValueError) as exc:
        raise ConfigError(f"PUSHSVC_MONGO_URI: {str(exc).splitlines()[0]}") from None
    try:
        db = client[name]
        if args.set is None:
            version = recorded_format(db)
            if version is None:
                print(
                    f"MongoDB database {name}: no format recorded yet; the first node to "
                    f"start records 2 if no node has used the database, else 1"
                )
            else:
                print(f"MongoDB database {name}: format {version} ({_format_says(version)})")
            return 0
        before = set_format(db, args.set)
    except InvalidName as exc:
        raise ConfigError(f"PUSHSVC_MONGO_DB: {exc}") from None
    except PyMongoError as exc:
        _fail(f"error: the MongoDB database {name} cannot be reached: {str(exc).splitlines()[0]}")
        return 1
    finally:
        client.close()
    if before == args.set:
        print(f"MongoDB database {name}: already format {args.set} ({_format_says(args.set)})")
    else:
        print(
            f"MongoDB database {name}: format {before or 'unrecorded'} -> {args.set} "
            f"({_format_says(args.set)}); restart the nodes one at a time: a node reads the "
            f"format when it starts"
        )
    return 0


def _run_client(command: Callable[[argparse.Namespace, Any], int]) -> Callable[..., int]:
    """Wrap a client command: resolve the node and key, call, report errors in one line."""

    def run(args: argparse.Namespace) -> int:
        from pushsvc_client import PushClient, PushClientError, UnavailableError

        target = _client_target(args)
        tls, tls_ca = _client_tls(args)
        try:
            client = PushClient(
                target.addr, target.api_key, timeout=args.timeout, tls=tls, tls_ca=tls_ca
            )
        except ValueError as exc:  # the CA file cannot be read
            raise ConfigError(f"PUSHSVC_TLS_CA: {exc}") from None
        try:
            with client:
                return command(args, client)
        except UnavailableError as exc:
            if exc.unreachable:
                _fail(
                    f"cannot reach a pushsvc node at {target.addr} ({_why(exc.message)}): "
                    "is the node running? Set PUSHSVC_GRPC_ADDR or --addr"
                )
            else:
                _fail(f"{exc.code_name}: {exc.message}")
            return 1
        except PushClientError as exc:
            message = exc.message
            if exc.code_name == "UNAUTHENTICATED":
                message += (
                    f" (key from {target.key_source})"
                    if target.api_key
                    else " (no API key found: set PUSHSVC_API_KEY, PUSHSVC_API_KEYS or --api-key)"
                )
            elif exc.code_name == "DEADLINE_EXCEEDED":
                message += f" (no answer from {target.addr} within {args.timeout:g}s)"
            _fail(f"{exc.code_name}: {message}")
            return 1

    return run


def _why(details: str) -> str:
    text = details.lower()
    if "certificate" in text or "handshake" in text or "ssl" in text:
        return "TLS handshake failed: is PUSHSVC_TLS_CA the CA of the node's certificate?"
    if "socket closed" in text:
        return "the connection was closed: if the node serves TLS, set PUSHSVC_TLS_CA"
    if "refused" in text:
        return "connection refused"
    if "resolv" in text or "dns" in text or "not known" in text:
        return "host name not found"
    return "no connection"


def _fail(line: str) -> None:
    print(f"{PROG}: {line}", file=sys.stderr)


# -- argument parsing ------------------------------------------------------------------


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{value} must be positive")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} must be 0 or more")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{value} must be positive")
    return value


def _non_empty(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="pushsvc: push messages over gRPC, delivered to WebSocket clients.",
        epilog="Run 'pushsvc <command> --help' for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="<command>", required=True)

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--addr",
        metavar="HOST:PORT",
        help=f"node's gRPC address (default: $PUSHSVC_GRPC_ADDR or {DEFAULT_GRPC_ADDR})",
    )
    common.add_argument(
        "--api-key",
        metavar="KEY",
        help="API key (default: $PUSHSVC_API_KEY, else the first of $PUSHSVC_API_KEYS, "
        "else the key the node "
        f"generated in $PUSHSVC_DATA_DIR/{API_KEY_FILE})",
    )
    common.add_argument(
        "--config", metavar="FILE", help="read the address and key from a node's TOML config"
    )
    common.add_argument(
        "--timeout",
        type=_positive_float,
        default=5.0,
        metavar="SECONDS",
        help="deadline of the call (default: 5)",
    )
    common.add_argument("--json", action="store_true", help="print the response as JSON")

    data = argparse.ArgumentParser(add_help=False)
    source = data.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", metavar="TEXT", help="the message body")
    source.add_argument("--data-file", metavar="FILE", help="read the body from FILE (- = stdin)")
    data.add_argument(
        "--content-type",
        default="application/json",
        metavar="TYPE",
        help="MIME type of the body (default: application/json, which must be valid JSON)",
    )

    p = sub.add_parser(
        "serve",
        help="run a node",
        description="Run a node. Settings come from --config (TOML) and PUSHSVC_<NAME> "
        "environment variables; the environment wins.",
    )
    p.add_argument("--config", metavar="FILE", help="TOML file of settings")
    p.add_argument(
        "--help-settings", action="store_true", help="list every setting and its default"
    )
    p.add_argument("--dev", action="store_true", help="development mode: serve the /demo page")
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser(
        "token",
        help="mint a client JWT",
        description="Mint an HS256 client token with the node's secret: PUSHSVC_JWT_SECRET, "
        f"else the secret the node generated in $PUSHSVC_DATA_DIR/{JWT_SECRET_FILE}.",
    )
    p.add_argument("--user", required=True, type=_non_empty, help="user id (the 'sub' claim)")
    p.add_argument(
        "--ttl",
        type=_positive_int,
        default=3600,
        metavar="SECONDS",
        help="lifetime of the token (default: 3600)",
    )
    p.add_argument(
        "--topic",
        action="append",
        metavar="PATTERN",
        help="topic glob the user may subscribe to (repeatable), e.g. 'news*'",
    )
    p.add_argument("--config", metavar="FILE", help="read the secret from a node's TOML config")
    p.add_argument("--json", action="store_true", help="print token, sub, exp, topics as JSON")
    p.set_defaults(func=_cmd_token)

    p = sub.add_parser(
        "push",
        parents=[common, data],
        help="push a message to users",
        description="Send one message to every connection of each user; stored in their "
        "inboxes unless --ttl 0.",
    )
    p.add_argument(
        "--user",
        action="append",
        required=True,
        type=_non_empty,
        help="recipient user id (repeatable)",
    )
    p.add_argument(
        "--ttl",
        type=_non_negative_int,
        metavar="SECONDS",
        help="inbox time-to-live (default: the node's; 0 = online-only, never stored)",
    )
    p.add_argument(
        "--idempotency-key",
        metavar="KEY",
        help="repeating a key within 24 h sends nothing again (default: a random key)",
    )
    p.set_defaults(func=_run_client(_cmd_push))

    p = sub.add_parser(
        "publish",
        parents=[common, data],
        help="publish a message to a topic",
        description="Send one message to every connection subscribed to the topic.",
    )
    p.add_argument("--topic", required=True, type=_non_empty, help="topic name")
    p.set_defaults(func=_run_client(_cmd_publish))

    p = sub.add_parser(
        "presence",
        parents=[common],
        help="show whether users are online",
        description="Per user: online or not, connections, nodes holding them.",
    )
    p.add_argument("users", nargs="+", metavar="USER", help="user id")
    p.set_defaults(func=_run_client(_cmd_presence))

    p = sub.add_parser(
        "nodes",
        parents=[common],
        help="list the live nodes",
        description="List the live nodes of the fleet.",
    )
    p.set_defaults(func=_run_client(_cmd_nodes))

    p = sub.add_parser(
        "status",
        parents=[common],
        help="show a message's delivery status",
        description="Per recipient of a stored message: seq, delivered, acked.",
    )
    p.add_argument("message_id", metavar="MESSAGE_ID", help="id printed by push")
    p.set_defaults(func=_run_client(_cmd_status))

    p = sub.add_parser(
        "disconnect",
        parents=[common],
        help="close every connection of a user",
        description="Close every connection of a user (close code 4000).",
    )
    p.add_argument("user", metavar="USER", help="user id")
    p.add_argument("--reason", default="", help="close reason sent to the client")
    p.set_defaults(func=_run_client(_cmd_disconnect))

    p = sub.add_parser(
        "check-config",
        help="check a node's settings without starting it",
        description="Check the settings a node would start with (defaults, --config, the "
        "environment, --env-file) without starting it: one line per problem and exit "
        "status 2, or one line and 0 when serve would accept them.",
    )
    p.add_argument("--config", metavar="FILE", help="TOML file of settings")
    p.add_argument(
        "--env-file",
        action="append",
        metavar="FILE",
        help="KEY=VALUE file as systemd's EnvironmentFile= reads it, over the environment "
        "(repeatable; later files win)",
    )
    p.set_defaults(func=_cmd_check_config)

    p = sub.add_parser(
        "gen-config",
        help="print a commented config file with every setting",
        description="Print a TOML config file with every setting, its environment variable, "
        "what it does and its default.",
    )
    p.add_argument(
        "--output", "-o", metavar="FILE", help="write to FILE (never overwritten) instead of stdout"
    )
    p.set_defaults(func=_cmd_gen_config)

    p = sub.add_parser(
        "backup",
        help="back up the embedded store while the node runs",
        description="Copy the embedded store (SQLite online backup: a consistent snapshot, "
        "the node goes on serving) and the secrets the node generated into PATH, a new "
        "directory a node can start on (PUSHSVC_DATA_DIR=PATH).",
    )
    p.add_argument("path", metavar="PATH", help="new (or empty) directory for the backup")
    p.add_argument(
        "--data-dir",
        metavar="DIR",
        help=f"the node's data directory (default: $PUSHSVC_DATA_DIR or {DEFAULT_DATA_DIR})",
    )
    p.add_argument("--config", metavar="FILE", help="read data_dir from a node's TOML config")
    p.set_defaults(func=_cmd_backup)

    p = sub.add_parser(
        "store-format",
        help="show or set the format of a fleet's MongoDB database",
        description="Show the format of the fleet's MongoDB database (PUSHSVC_MONGO_URI, "
        "PUSHSVC_MONGO_DB), which decides how nodes commit stored batches, or set it with "
        "--set: 2 once every node runs a release after 0.1.0 (docs/operations.md, "
        '"Commit records"). Nodes read it when they start.',
    )
    p.add_argument("--set", type=int, choices=(1, 2), metavar="{1,2}", help="record this format")
    p.add_argument("--config", metavar="FILE", help="read the MongoDB settings from a TOML config")
    p.set_defaults(func=_cmd_store_format)

    p = sub.add_parser(
        "reload",
        help="SIGHUP a node and wait until it has reloaded (the unit's ExecReload=)",
        description="Send SIGHUP to the node PID (it reads its TLS certificate and key "
        "again) and wait for its answer in its data directory. Exit status 0: reloaded; "
        "1: the node kept its current certificate (its log says why), exited, or did not "
        "answer in time. pushsvc@.service runs it for `systemctl reload`.",
    )
    p.add_argument("--pid", type=int, required=True, help="the node's process id")
    p.add_argument(
        "--data-dir",
        metavar="DIR",
        help=f"the node's data directory (default: $PUSHSVC_DATA_DIR or {DEFAULT_DATA_DIR})",
    )
    p.add_argument(
        "--timeout",
        type=_positive_float,
        default=60.0,
        metavar="SECONDS",
        help="how long to wait for the node's answer (default: 60)",
    )
    p.set_defaults(func=_cmd_reload)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        try:
            args = parser.parse_args(argv)
        except SystemExit as exc:  # --help, --version, or a usage error (2)
            return exc.code if isinstance(exc.code, int) else 2
        try:
            result: int = args.func(args)
            return result
        except ConfigError as exc:
            # Imported here: serve imports logging only once gevent has patched threading.
            from pushsvc.logsetup import journal_prefix

            # Under systemd (serve), journald stores the line at priority 3 (err).
            print(f"{journal_prefix()}{PROG}: error: {exc}", file=sys.stderr)
            return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (e.g. `| head`): silence the flush at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
