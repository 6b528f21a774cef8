"""deploy/nginx/pushsvc.conf in front of two real nodes (a fleet on FerretDB).

The configuration is rendered for ephemeral ports and a temporary prefix and run by
Debian's nginx, unprivileged paths only. A client connects through nginx and gets a
push; the node holding it is killed (SIGKILL); the client reconnects through nginx
with ``since``, lands on the other node and misses nothing.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pushsvc.config import Settings
from pushsvc_client.v1 import push_pb2
from tests.ferretdb import FerretDB, ferretdb  # noqa: F401
from tests.nodeproc import CLUSTER_KEY, NodeProcess, auth, free_port
from tests.rawws import Closed, RawWS, http_request
from tests.wsclient import token

REPO = Path(__file__).resolve().parent.parent
CONF = REPO / "deploy" / "nginx" / "pushsvc.conf"


def nginx_binary() -> str:
    for candidate in (shutil.which("nginx"), "/usr/sbin/nginx"):
        if candidate and Path(candidate).is_file():
            return candidate
    pytest.fail("nginx is not installed: run `make tools`", pytrace=False)


def render(conf: str, listen: int, upstreams: list[int]) -> str:
    """The shipped file with test ports: the upstream servers and the listen port."""
    servers = re.findall(r"^\s*server\s+\S+:\d+[^;]*;\s*$", conf, re.M)
    assert len(servers) >= 2, "the upstream lists several nodes"
    options = servers[0].strip().split(None, 2)[2] if len(servers[0].split()) > 2 else ";"
    body = "".join(f"    server 127.0.0.1:{port} {options}\n" for port in upstreams)
    start = conf.index(servers[0])
    end = conf.index(servers[-1]) + len(servers[-1])
    conf = conf[:start] + body.rstrip("\n") + conf[end:]
    conf, n = re.subn(r"^(\s*)listen\s+80;", rf"\1listen 127.0.0.1:{listen};", conf, flags=re.M)
    assert n == 1
    return conf


class Nginx:
    def __init__(self, prefix: Path, site: str) -> None:
        self.prefix = prefix
        self.port = free_port()
        self.site = site
        self.proc: subprocess.Popen[bytes] | None = None

    def write(self, upstreams: list[int]) -> Path:
        p = self.prefix
        (p / "logs").mkdir(parents=True, exist_ok=True)
        site = render(self.site, self.port, upstreams).replace(
            "/var/log/nginx/pushsvc.access.log", str(p / "logs" / "access.log")
        )
        (p / "pushsvc.conf").write_text(site)
        main = f"""
daemon off;
master_process on;
worker_processes 1;
pid {p}/nginx.pid;
error_log {p}/logs/error.log info;
events {{ worker_connections 512; }}
http {{
    client_body_temp_path {p}/tmp/body;
    proxy_temp_path {p}/tmp/proxy;
    fastcgi_temp_path {p}/tmp/fastcgi;
    uwsgi_temp_path {p}/tmp/uwsgi;
    scgi_temp_path {p}/tmp/scgi;
    access_log off;
    include {p}/pushsvc.conf;
}}
"""
        (p / "tmp").mkdir(exist_ok=True)
        path = p / "nginx.conf"
        path.write_text(main)
        return path

    def start(self, upstreams: list[int]) -> Nginx:
        conf = self.write(upstreams)
        base = [nginx_binary(), "-p", str(self.prefix), "-e", str(self.prefix / "logs/error.log")]
        check = subprocess.run([*base, "-t", "-c", str(conf)], capture_output=True, text=True)
        assert check.returncode == 0, check.stderr
        self.proc = subprocess.Popen(
            [*base, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx exited: {self.error_log()}")
            try:
                if http_request("127.0.0.1", self.port, "/", timeout=1).status == 404:
                    return self
            except OSError:
                pass
            time.sleep(0.05)  # polling a condition with a deadline
        raise TimeoutError(f"nginx did not answer: {self.error_log()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: fast shutdown
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def error_log(self) -> str:
        try:
            return (self.prefix / "logs" / "error.log").read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def access_log(self) -> str:
        try:
            return (self.prefix / "logs" / "access.log").read_text(errors="replace")
        except OSError:
            return ""


@pytest.fixture
def nginx(tmp_path: Path) -> Iterator[Callable[[list[int]], Nginx]]:
    started: list[Nginx] = []

    def start(upstreams: list[int]) -> Nginx:
        server = Nginx(tmp_path / "nginx", CONF.read_text())
        started.append(server)
        return server.start(upstreams)

    yield start
    for server in started:
        server.stop()


def test_config_settings() -> None:
    conf = CONF.read_text()
    assert re.search(r"^\s*(least_conn|hash \$remote_addr consistent);", conf, re.M)
    assert "proxy_http_version 1.1;" in conf
    assert re.search(r"proxy_set_header Upgrade \$http_upgrade;", conf)
    assert re.search(r"proxy_set_header Connection \$connection_upgrade;", conf)
    read = re.search(r"proxy_read_timeout (\d+)s;", conf)
    assert read and int(read.group(1)) > Settings().ping_interval
    # Query strings (?token=) stay out of the access log.
    fmt = re.search(r"log_format pushsvc_ws (.*?);", conf, re.S)
    assert fmt and "$request " not in fmt.group(1) and "$args" not in fmt.group(1)
    assert "$request_uri" not in fmt.group(1)


def push(node: NodeProcess, user: str, text: str) -> int:
    with node.stub() as stub:
        resp = stub.Push(
            push_pb2.PushRequest(user_ids=[user], payload=json.dumps({"m": text}).encode()),
            metadata=auth(),
            timeout=15,
        )
    return int(resp.seqs[0])


def test_failover_through_nginx(
    ferretdb: FerretDB,  # noqa: F811
    node_factory: Callable[..., NodeProcess],
    nginx: Callable[[list[int]], Nginx],
) -> None:
    db = f"nginx_{uuid.uuid4().hex[:10]}"
    nodes = {}
    for name in ("node-a", "node-b"):
        nodes[name] = node_factory(
            env={
                "PUSHSVC_MONGO_URI": ferretdb.uri,
                "PUSHSVC_MONGO_DB": db,
                "PUSHSVC_CLUSTER_KEY": CLUSTER_KEY,
                "PUSHSVC_NODE_ID": name,
                "PUSHSVC_HEARTBEAT_INTERVAL": "0.5",
                "PUSHSVC_FORWARD_TIMEOUT": "0.5",
                "PUSHSVC_LOG_LEVEL": "info",
            }
        )
    edge = nginx([n.ws_port for n in nodes.values()])
    secret = token("carol")

    # Through nginx: the upgrade goes through, pushes arrive.
    ws = RawWS.connect("127.0.0.1", edge.port, f"/ws?token={secret}", timeout=10)
    welcome = ws.recv_json()
    assert welcome["type"] == "welcome" and welcome["user"] == "carol"
    first, other = welcome["node"], next(n for n in nodes if n != welcome["node"])
    seq = push(nodes[other], "carol", "before")  # forwarded to the node holding carol
    msg = ws.recv_json()
    assert (msg["type"], msg["seq"], msg["data"]) == ("message", seq, {"m": "before"})
    last_seen = msg["seq"]

    # The node holding the connection dies without a word.
    nodes[first].kill()
    with pytest.raises((Closed, TimeoutError)):
        ws.recv_frame(timeout=10)  # nginx closes the client side when the upstream goes
    ws.close()
    missed = [push(nodes[other], "carol", f"while away {i}") for i in range(3)]

    # Reconnect through nginx with since: the dead node is skipped, nothing is missed.
    with RawWS.connect(
        "127.0.0.1", edge.port, f"/ws?token={secret}&since={last_seen}", timeout=10
    ) as again:
        welcome = again.recv_json()
        assert welcome["node"] == other
        got: list[int] = []
        while len(got) < len(missed):
            frame = again.recv_json(timeout=10)
            if frame["type"] == "message":
                got.append(frame["seq"])
        assert got == missed
        # A second connection while the first is open: least_conn prefers the dead
        # node (no connections), so nginx has now tried it at least once and moved on.
        with RawWS.connect("127.0.0.1", edge.port, f"/ws?token={secret}", timeout=10) as more:
            assert more.recv_json()["node"] == other
        assert "Connection refused" in edge.error_log(), edge.error_log()
        live = push(nodes[other], "carol", "after")
        assert again.recv_json()["seq"] == live

    edge.stop()
    log = edge.access_log()
    assert "/ws" in log and " 101 " in log, log
    assert secret not in log and "token" not in log, log
