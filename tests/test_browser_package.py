"""The browser client as an npm package (clients/js, ``@pushsvc/browser``).

``npm pack`` makes the tarball, which is installed into an empty project outside
the repository; the README's app example runs there against a live node, under
Node.js with its built-in WebSocket (``--experimental-websocket``), fetching its
token from a small backend as a page would. Only the example's two addresses are
replaced. Chromium runs the same module in tests/test_browser.py.
"""

from __future__ import annotations

import json
import queue
import re
import shutil
import subprocess
import threading
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from pushsvc.auth import mint_token
from pushsvc_client import PushClient
from tests.langtest import npm_pack, npm_project, suite_env, tarball_files
from tests.nodeproc import API_KEY, JWT_SECRET, NodeProcess
from tests.waiting import wait_for

JS_DIR = Path(__file__).resolve().parent.parent / "clients" / "js"
README_WS_URL = "ws://127.0.0.1:8080/ws"
README_BACKEND = "http://127.0.0.1:8000"

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="session")
def browser_tarball(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("npm") is None:
        pytest.fail("npm is not installed: run make tools")
    return npm_pack(JS_DIR, tmp_path_factory.mktemp("browser-pack"))


@pytest.fixture
def backend() -> Iterator[str]:
    """An app's backend: GET /push-token mints a token for alice."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path != "/push-token":
                self.send_error(404)
                return
            body = mint_token(JWT_SECRET, "alice").encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _acked(push: PushClient, message_id: str) -> bool:
    return all(r.acked for r in push.message_status(message_id).recipients)


def test_tarball_holds_the_module_and_its_types(browser_tarball: Path) -> None:
    manifest = json.loads((JS_DIR / "package.json").read_text())
    assert browser_tarball.name == f"pushsvc-browser-{manifest['version']}.tgz"
    files = tarball_files(browser_tarball)
    assert files == {"package.json", "README.md", "LICENSE", "pushsvc.js", "pushsvc.d.ts"}, files
    assert manifest["exports"]["."] == {"types": "./pushsvc.d.ts", "default": "./pushsvc.js"}
    assert manifest["types"] == "./pushsvc.d.ts" and manifest["type"] == "module"


def test_the_node_serves_the_packaged_module(
    node_factory: Callable[..., NodeProcess], browser_tarball: Path, tmp_path: Path
) -> None:
    """/demo/pushsvc.js on a node is byte for byte the module in the tarball."""
    node = node_factory(env={"PUSHSVC_DEMO": "1"})
    with urllib.request.urlopen(f"http://{node.env['PUSHSVC_WS_ADDR']}/demo/pushsvc.js") as resp:
        served = resp.read()
    shutil.unpack_archive(browser_tarball, tmp_path)
    assert served == (tmp_path / "package" / "pushsvc.js").read_bytes()


def test_readme_example_from_the_installed_tarball(
    node: NodeProcess, browser_tarball: Path, backend: str, tmp_path: Path
) -> None:
    readme = (JS_DIR / "README.md").read_text()
    match = re.search(r"^## Use it in an app\n.*?```js\n(.*?)^```$", readme, re.S | re.M)
    assert match, "no ```js block under '## Use it in an app' in clients/js/README.md"
    example = match.group(1)
    assert example.count(README_WS_URL) == 1 and example.count(README_BACKEND) == 1, example
    example = example.replace(README_WS_URL, node.ws_url).replace(README_BACKEND, backend)
    project = npm_project(tmp_path / "app", browser_tarball)
    (project / "example.mjs").write_text(example)
    node_bin = shutil.which("node")
    assert node_bin is not None

    with PushClient(node.grpc_addr, API_KEY) as push:
        stored = push.push("alice", {"n": 1})  # waits in the inbox: replayed on connect
        proc = subprocess.Popen(
            [node_bin, "--experimental-websocket", "--no-warnings", "example.mjs"],
            cwd=project,
            env=suite_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        lines: queue.Queue[str] = queue.Queue()

        def read() -> None:
            for line in proc.stdout or ():
                lines.put(line)

        reader = threading.Thread(target=read)
        reader.start()
        try:
            assert lines.get(timeout=30) == 'message 1 {"n":1}\n'
            wait_for(lambda: push.presence("alice").presence[0].online, 30, "alice online")
            live = push.push("alice", {"n": 2})
            assert lines.get(timeout=30) == 'message 2 {"n":2}\n'
            # Acked after onMessage returned: both, cumulatively.
            ids = (stored.message_id, live.message_id)
            wait_for(lambda: all(_acked(push, m) for m in ids), 30, "the acks of both")
        finally:
            proc.terminate()
            proc.wait(timeout=30)
            reader.join(timeout=30)
    rest = []
    while not lines.empty():
        rest.append(lines.get())
    assert rest == [], rest
