"""The browser client (clients/js) and the /demo page in real headless Chromium.

The scenarios are JavaScript (tests/browser/*.test.js, run by ``node --test``,
driving Chromium with playwright-core). This wrapper starts a real node with the
demo page on and a small HTTP control server the scenarios call to mint tokens,
push, publish, read message status, and restart, pause or resume the node
under the page.

Needs ``make tools`` (Chromium, and ``npm ci`` in tests/browser): without them
these tests fail, they do not skip.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import pytest

from pushsvc.auth import mint_token
from pushsvc_client.v1 import push_pb2, push_pb2_grpc
from tests.nodeproc import JWT_SECRET, NodeProcess, auth
from tests.pki import Pki

ROOT = Path(__file__).resolve().parent.parent
BROWSER_DIR = Path(__file__).resolve().parent / "browser"
CHROMIUM = os.environ.get("PUSHSVC_CHROMIUM", "/usr/bin/chromium")
NODE_TIMEOUT = 200  # seconds for one `node --test` file, all scenarios included
PUSH_DEADLINE = 30.0  # a push retries (same idempotency key) while the node restarts

# The node's ping_interval: short, so the client's pong watchdog acts within seconds.
NODE_ENV = {"PUSHSVC_DEMO": "1", "PUSHSVC_PING_INTERVAL": "1", "PUSHSVC_DRAIN_TIMEOUT": "10"}


def _require_tools() -> str:
    """The node binary; fails (not skips) with what to run when a tool is missing."""
    problems = []
    if not os.access(CHROMIUM, os.X_OK):
        problems.append(f"Chromium is missing at {CHROMIUM}")
    node = shutil.which("node")
    if node is None:
        problems.append("Node.js (node) is not on PATH")
    if not (BROWSER_DIR / "node_modules" / "playwright-core" / "package.json").is_file():
        problems.append(f"{BROWSER_DIR / 'node_modules'} lacks playwright-core")
    if problems:
        pytest.fail("; ".join(problems) + ": run `make tools`", pytrace=False)
    assert node is not None
    return node


class Control:
    """What the scenarios may do to the node, over HTTP (POST, JSON in and out)."""

    def __init__(self, node: NodeProcess) -> None:
        self.node = node
        self._lock = threading.Lock()
        options = [
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 500),
        ]
        if node.tls:
            ca = grpc.ssl_channel_credentials(Path(node.env["PUSHSVC_TLS_CA"]).read_bytes())
            self._channel = grpc.secure_channel(node.grpc_addr, ca, options=options)
        else:
            self._channel = grpc.insecure_channel(node.grpc_addr, options=options)
        self._stub = push_pb2_grpc.PushServiceStub(self._channel)
        self._keys = iter(range(1, 1 << 62))

    def close(self) -> None:
        self._channel.close()

    def call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        handler = getattr(self, "do_" + path.strip("/").replace("-", "_"), None)
        if handler is None:
            raise LookupError(f"no control endpoint {path}")
        result: dict[str, Any] = handler(**body)
        return result

    def do_token(
        self, user: str, ttl: int = 3600, topics: list[str] | None = None
    ) -> dict[str, Any]:
        return {"token": mint_token(JWT_SECRET, user, ttl, topics)}

    def do_push(self, user: str, data: Any) -> dict[str, Any]:
        with self._lock:
            key = f"browser-test-{os.getpid()}-{next(self._keys)}"
        request = push_pb2.PushRequest(
            user_ids=[user],
            payload=json.dumps(data).encode(),
            content_type="application/json",
            idempotency_key=key,  # a retry after a lost answer is not a second message
        )
        deadline = time.monotonic() + PUSH_DEADLINE
        while True:
            try:
                resp = self._stub.Push(request, metadata=auth(), timeout=5, wait_for_ready=True)
                return {
                    "id": resp.message_id,
                    "seq": int(resp.seqs[0]),
                    "duplicate": resp.duplicate,
                }
            except grpc.RpcError as err:
                retryable = err.code() in (
                    grpc.StatusCode.UNAVAILABLE,
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    grpc.StatusCode.CANCELLED,
                )
                if not retryable or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)  # the node is restarting; the channel reconnects meanwhile

    def do_publish(self, topic: str, data: Any) -> dict[str, Any]:
        resp = self._stub.Publish(
            push_pb2.PublishRequest(
                topic=topic, payload=json.dumps(data).encode(), content_type="application/json"
            ),
            metadata=auth(),
            timeout=5,
            wait_for_ready=True,
        )
        return {"id": resp.message_id, "local_subscribers": resp.local_subscribers}

    def do_status(self, id: str) -> dict[str, Any]:
        resp = self._stub.GetMessageStatus(
            push_pb2.GetMessageStatusRequest(message_id=id), metadata=auth(), timeout=5
        )
        return {
            "recipients": [
                {"user": r.user_id, "seq": r.seq, "delivered": r.delivered, "acked": r.acked}
                for r in resp.recipients
            ]
        }

    def do_presence(self, user: str) -> dict[str, Any]:
        resp = self._stub.GetPresence(
            push_pb2.GetPresenceRequest(user_ids=[user]), metadata=auth(), timeout=5
        )
        p = resp.presence[0]
        return {"online": p.online, "connections": p.connections}

    def do_disconnect(self, user: str, reason: str = "") -> dict[str, Any]:
        resp = self._stub.Disconnect(
            push_pb2.DisconnectRequest(user_id=user, reason=reason), metadata=auth(), timeout=5
        )
        return {"closed": resp.connections_closed}

    def do_restart(self) -> dict[str, Any]:
        """SIGTERM (the node drains: 1012 to every page), then start again on the
        same ports and data directory."""
        with self._lock:
            ports = (self.node.ws_port, self.node.grpc_port, self.node.admin_port)
            code = self.node.stop()
            self.node.start()
            now = (self.node.ws_port, self.node.grpc_port, self.node.admin_port)
            if now != ports:
                raise RuntimeError(f"the node came back on other ports {now}, not {ports}")
            return {"code": code}

    def do_pause(self) -> dict[str, Any]:
        """SIGSTOP: the node is alive for TCP but answers nothing (a dead server)."""
        assert self.node.proc is not None
        self.node.proc.send_signal(signal.SIGSTOP)
        return {}

    def do_resume(self) -> dict[str, Any]:
        assert self.node.proc is not None
        self.node.proc.send_signal(signal.SIGCONT)
        return {}

    def do_handshake(self, token: str) -> dict[str, Any]:
        """The HTTP status of a WebSocket handshake with this token (101 or a refusal)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.node.ws_port, timeout=5)
        try:
            conn.request(
                "GET",
                f"/ws?token={token}",
                headers={
                    "Upgrade": "websocket",
                    "Connection": "Upgrade",
                    "Sec-WebSocket-Version": "13",
                    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
                },
            )
            return {"status": conn.getresponse().status}
        finally:
            conn.close()


@contextlib.contextmanager
def control_server(control: Control) -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            try:
                body = json.loads(self.rfile.read(length) or b"{}")
                status, answer = 200, control.call(self.path, body)
            except Exception as exc:
                status, answer = 500, {"error": f"{type(exc).__name__}: {exc}"}
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        control.close()


@pytest.fixture
def demo_node(node_factory: Callable[..., NodeProcess]) -> NodeProcess:
    return node_factory(env=NODE_ENV)


@pytest.mark.timeout(NODE_TIMEOUT + 40)
@pytest.mark.parametrize("script", ["client.test.js", "demo.test.js"])
def test_browser(script: str, demo_node: NodeProcess, tmp_path: Path) -> None:
    run_scenarios(script, demo_node, tmp_path)


@pytest.mark.timeout(NODE_TIMEOUT + 40)
def test_browser_over_tls(
    node_factory: Callable[..., NodeProcess], tls_env: dict[str, str], pki: Pki, tmp_path: Path
) -> None:
    """The page over https:// and the client over wss://, Chromium trusting the test CA."""
    node = node_factory(env={**NODE_ENV, **tls_env})
    run_scenarios("tls.test.js", node, tmp_path, {"PUSHSVC_TLS_SPKI": pki.spki})


def run_scenarios(
    script: str, demo_node: NodeProcess, tmp_path: Path, extra: dict[str, str] | None = None
) -> None:
    """``node --test script`` against ``demo_node``, with the control server."""
    node_bin = _require_tools()
    control = Control(demo_node)
    scheme = "https" if demo_node.tls else "http"
    with control_server(control) as control_url:
        env = {
            **os.environ,
            "PUSHSVC_HTTP_URL": f"{scheme}://127.0.0.1:{demo_node.ws_port}",
            "PUSHSVC_CONTROL_URL": control_url,
            "PUSHSVC_CHROMIUM": CHROMIUM,
            "PUSHSVC_ARTIFACTS": str(tmp_path),
            **(extra or {}),
        }
        try:
            proc = subprocess.run(
                [
                    node_bin,
                    "--test",
                    "--test-concurrency=1",
                    "--test-timeout=90000",
                    "--test-reporter=spec",
                    script,
                ],
                cwd=BROWSER_DIR,
                env=env,
                capture_output=True,
                text=True,
                timeout=NODE_TIMEOUT,
            )
        except subprocess.TimeoutExpired as exc:
            output = f"{exc.stdout!s}\n{exc.stderr!s}"
            pytest.fail(f"node --test {script} ran over {NODE_TIMEOUT}s:\n{output}")
    report = proc.stdout + proc.stderr
    if proc.returncode != 0:
        node_log = demo_node.log()[-6000:]
        pytest.fail(f"node --test {script} failed:\n{report}\n--- node log ---\n{node_log}")
    print(report)


# -- the demo routes without a browser ------------------------------------------------------


def _get(node: NodeProcess, path: str) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", node.ws_port, timeout=5)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def test_demo_is_off_by_default(node: NodeProcess) -> None:
    for path in ("/demo", "/demo/pushsvc.js"):
        status, _, _ = _get(node, path)
        assert status == 404, path


def test_demo_serves_the_page_and_the_client(demo_node: NodeProcess) -> None:
    status, headers, body = _get(demo_node, "/demo")
    assert status == 200
    assert headers["content-type"].startswith("text/html")
    csp = headers["content-security-policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp
    assert "unsafe-inline" not in csp
    assert b'src="/demo/demo.js"' in body
    status, headers, body = _get(demo_node, "/demo/pushsvc.js")
    assert status == 200
    assert headers["content-type"].startswith("text/javascript")
    assert body == (ROOT / "clients" / "js" / "pushsvc.js").read_bytes()
