"""The admin console (``PUSHSVC_ADMIN_UI=1``): its JSON API against real nodes, and the
page in headless Chromium against a real two-node fleet on FerretDB.

The browser scenarios are ``tests/browser/admin.test.js`` (``node --test``, playwright-core
driving ``/usr/bin/chromium``), run by ``test_console_in_chromium`` below.
"""

from __future__ import annotations

import http.client
import json
import os
import stat
import struct
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pushsvc.stats import History, Rates, Sample
from tests.ferretdb import FerretDB, ferretdb  # noqa: F401
from tests.nodeproc import CLUSTER_KEY, JWT_SECRET, NodeProcess
from tests.test_browser import BROWSER_DIR, CHROMIUM, Control, _require_tools, control_server
from tests.waiting import wait_for
from tests.wsclient import Client, open_ws

TOKEN = "admin-token-for-the-tests-0123456789"
CONSOLE = {"PUSHSVC_ADMIN_UI": "1", "PUSHSVC_ADMIN_TOKEN": TOKEN}
NODE_TIMEOUT = 240  # seconds for the whole `node --test admin.test.js`

Response = tuple[int, dict[str, str], Any]


def call(
    node: NodeProcess,
    method: str,
    path: str,
    body: Any = None,
    *,
    token: str | None = TOKEN,
    port: int | None = None,
    headers: dict[str, str] | None = None,
    raw: bytes | None = None,
) -> Response:
    """One HTTP request to the admin listener (or ``port``): status, headers, JSON or text."""
    sent = dict(headers or {})
    if token is not None:
        sent.setdefault("Authorization", f"Bearer {token}")
    data = raw
    if body is not None:
        data = json.dumps(body).encode()
        sent.setdefault("Content-Type", "application/json")
    conn = http.client.HTTPConnection("127.0.0.1", port or node.admin_port, timeout=10)
    try:
        conn.request(method, path, body=data, headers=sent)
        resp = conn.getresponse()
        got = {k.lower(): v for k, v in resp.getheaders()}
        text = resp.read().decode()
    finally:
        conn.close()
    if got.get("content-type", "").startswith("application/json"):
        return resp.status, got, json.loads(text)
    return resp.status, got, text


def ok(response: Response) -> dict[str, Any]:
    status, _, body = response
    assert status == 200, body
    assert isinstance(body, dict)
    return body


def refused(response: Response, status: int, match: str) -> None:
    """A refusal: the status, a JSON body with an error saying ``match``."""
    got, headers, body = response
    assert got == status, (got, body)
    assert headers["content-type"] == "application/json"
    assert isinstance(body, dict) and match in body["error"], body


@pytest.fixture
def console(node_factory: Callable[..., NodeProcess]) -> NodeProcess:
    return node_factory(env=CONSOLE)


# -- off by default, and never on the WebSocket port -------------------------------------------


def test_console_is_off_by_default(node: NodeProcess) -> None:
    for path in ("/admin", "/admin/admin.js", "/admin/api/stats"):
        status, _, _ = call(node, "GET", path)
        assert status == 404, path


def test_console_is_never_on_the_websocket_port(console: NodeProcess) -> None:
    for path in ("/admin", "/admin/", "/admin/admin.js", "/admin/api/stats", "/admin/api/nodes"):
        status, _, _ = call(console, "GET", path, port=console.ws_port)
        assert status == 404, path
    assert call(console, "GET", "/admin/api/stats")[0] == 200  # it is on, on the admin port


# -- the token -----------------------------------------------------------------------------------


def test_every_api_call_needs_the_token(console: NodeProcess) -> None:
    calls = [
        ("GET", "/admin/api/stats", None),
        ("GET", "/admin/api/nodes", None),
        ("GET", "/admin/api/user?id=alice", None),
        ("POST", "/admin/api/push", {"user_ids": ["alice"], "payload": "{}"}),
        ("POST", "/admin/api/publish", {"topic": "news", "payload": "{}"}),
        ("POST", "/admin/api/disconnect", {"user_id": "alice"}),
        ("GET", "/admin/api/nope", None),
    ]
    wrong = [
        (None, "admin token missing"),
        (TOKEN + "x", "not valid"),
        (TOKEN[:-1], "not valid"),
        ("", "admin token missing"),
    ]
    for method, path, body in calls:
        for token, match in wrong:
            response = call(console, method, path, body, token=token)
            refused(response, 401, match)
            assert response[1]["www-authenticate"].startswith("Bearer"), path
        basic = {"Authorization": f"Basic {TOKEN}"}
        refused(call(console, method, path, body, headers=basic), 401, "Bearer")
    # Nothing was pushed by the refused calls.
    assert ok(call(console, "GET", "/admin/api/stats"))["totals"]["pushed"] == 0
    assert "admin token refused" in console.log()
    assert TOKEN not in console.log()


def test_the_page_needs_no_token_and_has_a_strict_csp(console: NodeProcess) -> None:
    types = {
        "/admin": "text/html",
        "/admin/": "text/html",
        "/admin/admin.js": "text/javascript",
        "/admin/admin.css": "text/css",
        "/admin/favicon.svg": "image/svg+xml",
    }
    for path, ctype in types.items():
        status, headers, _ = call(console, "GET", path, token=None)
        assert status == 200, path
        assert headers["content-type"].startswith(ctype), path
        csp = headers["content-security-policy"]
        assert "default-src 'none'" in csp and "script-src 'self'" in csp
        assert "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
        assert headers["x-frame-options"] == "DENY"
        assert headers["x-content-type-options"] == "nosniff"
        assert "set-cookie" not in headers
    _, _, page = call(console, "GET", "/admin", token=None)
    assert 'src="/admin/admin.js"' in page and "<script>" not in page and "style=" not in page
    assert call(console, "GET", "/admin/other", token=None)[0] == 404
    assert call(console, "POST", "/admin", token=None, raw=b"")[0] == 405


def test_a_generated_token_when_none_is_set(node_factory: Callable[..., NodeProcess]) -> None:
    node = node_factory(env={"PUSHSVC_ADMIN_UI": "1"})
    path = node.data_dir / "admin-token"
    generated = path.read_text().strip()
    assert len(generated) >= 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert f"generated an admin token in {path}" in node.log()
    assert generated not in node.log()
    assert call(node, "GET", "/admin/api/stats", token=generated)[0] == 200
    refused(call(node, "GET", "/admin/api/stats", token=TOKEN), 401, "not valid")


def test_a_fleet_node_with_the_console_needs_a_token(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PUSHSVC_")}
    env.update(
        PUSHSVC_MONGO_URI="mongodb://127.0.0.1:1/",  # never reached: refused before
        PUSHSVC_CLUSTER_KEY=CLUSTER_KEY,
        PUSHSVC_JWT_SECRET=JWT_SECRET,
        PUSHSVC_ADMIN_UI="1",
        PUSHSVC_DATA_DIR=str(tmp_path / "data"),
    )
    proc = subprocess.run(
        [sys.executable, "-m", "pushsvc", "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert (
        "pushsvc: error: the admin console (PUSHSVC_ADMIN_UI) of a fleet node needs "
        "PUSHSVC_ADMIN_TOKEN" in proc.stderr
    )
    assert not (tmp_path / "data" / "admin-token").exists()


def test_a_short_token_is_refused_at_start(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PUSHSVC_")}
    env.update(PUSHSVC_ADMIN_UI="1", PUSHSVC_ADMIN_TOKEN="short", PUSHSVC_DATA_DIR=str(tmp_path))
    proc = subprocess.run(
        [sys.executable, "-m", "pushsvc", "serve"], env=env, capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "pushsvc: error: PUSHSVC_ADMIN_TOKEN: 5 characters is too short: use at least 16 "
        "random characters (e.g. the output of: openssl rand -base64 32)"
    )


# -- what the API shows and does -----------------------------------------------------------------


def test_stats_and_nodes_of_a_node_alone(console: NodeProcess, clients: list[Client]) -> None:
    clients.append(open_ws(console, "watched"))
    stats = ok(call(console, "GET", "/admin/api/stats"))
    assert stats["node_id"] == console.node_id
    assert stats["store"] == {"ok": True, "reason": "ok"}
    assert stats["ready"] == {"ok": True, "reason": "ok"}
    assert stats["connections"] == 1 and stats["users"] == 1
    assert stats["totals"]["other_frames"] >= 1  # the welcome
    assert set(stats["rates"]) == {"push", "publish", "frames", "acks", "store_errors"}
    # The history fills from samples every 2 s: the charts have points.
    stats = wait_for(
        lambda: (s := ok(call(console, "GET", "/admin/api/stats")))["samples"] and s,
        timeout=30,
        what="a sample in the history",
    )
    sample = stats["samples"][-1]
    assert sample["connections"] == 1 and sample["store_ok"] is True
    assert {"at", "users", "push_rate", "frame_rate", "ack_rate"} <= set(sample)
    nodes = ok(call(console, "GET", "/admin/api/nodes"))
    assert nodes["self"] == console.node_id
    (row,) = nodes["nodes"]
    assert row["node_id"] == console.node_id
    assert row["ws_addr"] == f"127.0.0.1:{console.ws_port}"
    assert row["connections"] == 1 and row["users"] == 1 and row["store_ok"] is True


def test_push_by_hand_reaches_the_user_and_shows_in_the_inbox(
    console: NodeProcess, clients: list[Client]
) -> None:
    alice = open_ws(console, "alice")
    clients.append(alice)
    user = ok(call(console, "GET", "/admin/api/user?id=alice"))
    assert user == {
        "user_id": "alice",
        "online": True,
        "connections": 1,
        "node_ids": [console.node_id],
        "latest_seq": 0,
        "acked_seq": 0,
        "unacked": 0,
    }
    pushed = ok(
        call(
            console,
            "POST",
            "/admin/api/push",
            {"user_ids": ["alice", "bob", "alice"], "payload": '{"hand": 1}'},
        )
    )
    assert pushed["seqs"] == [1, 1, 1] and pushed["stored"] is True
    assert pushed["duplicate"] is False and pushed["local_connections"] == 1
    (msg,) = alice.messages(1)
    assert msg["id"] == pushed["message_id"] and msg["data"] == {"hand": 1} and msg["seq"] == 1
    text = ok(
        call(
            console,
            "POST",
            "/admin/api/push",
            {"user_ids": ["alice"], "payload": "plain words", "content_type": "text/plain"},
        )
    )
    (msg,) = alice.messages(1)
    assert msg["id"] == text["message_id"] and msg["data"] == "plain words" and msg["seq"] == 2
    alice.send({"type": "ack", "seq": 1})
    wait_for(
        lambda: ok(call(console, "GET", "/admin/api/user?id=alice"))["acked_seq"] == 1,
        what="the ack in the inbox position",
    )
    assert ok(call(console, "GET", "/admin/api/user?id=alice"))["unacked"] == 1
    bob = ok(call(console, "GET", "/admin/api/user?id=bob"))
    assert bob["online"] is False and bob["node_ids"] == [] and bob["latest_seq"] == 1
    # Online-only and idempotent pushes behave as over gRPC.
    online = ok(
        call(
            console,
            "POST",
            "/admin/api/push",
            {"user_ids": ["alice"], "payload": "{}", "ttl_seconds": 0},
        )
    )
    assert online["stored"] is False and online["seqs"] == []
    (msg,) = alice.messages(1)
    assert "seq" not in msg
    body = {"user_ids": ["bob"], "payload": "{}", "idempotency_key": "k1"}
    first = ok(call(console, "POST", "/admin/api/push", body))
    again = ok(call(console, "POST", "/admin/api/push", body))
    assert again["duplicate"] is True and again["message_id"] == first["message_id"]
    assert ok(call(console, "GET", "/admin/api/stats"))["totals"]["pushed"] >= 4
    assert "admin action" in console.log()
    assert "plain words" not in console.log()


def test_publish_and_disconnect_by_hand(console: NodeProcess, clients: list[Client]) -> None:
    reader = open_ws(console, "reader", topics=["news.*"])
    clients.append(reader)
    reader.send({"type": "subscribe", "topic": "news.eu"})
    assert reader.recv()["type"] == "subscribed"
    published = ok(
        call(console, "POST", "/admin/api/publish", {"topic": "news.eu", "payload": '{"h": 1}'})
    )
    assert published["local_subscribers"] == 1
    (msg,) = reader.messages(1)
    assert msg["topic"] == "news.eu" and msg["data"] == {"h": 1}
    closed = ok(
        call(
            console,
            "POST",
            "/admin/api/disconnect",
            {"user_id": "reader", "reason": "maintenance"},
        )
    )
    assert closed == {"connections_closed": 1}
    assert reader.close_code() == (4000, "maintenance")
    nobody = ok(call(console, "POST", "/admin/api/disconnect", {"user_id": "nobody"}))
    assert nobody == {"connections_closed": 0}


def test_bad_input_gets_a_json_error(console: NodeProcess) -> None:
    push, publish, disconnect = "/admin/api/push", "/admin/api/publish", "/admin/api/disconnect"
    cases: list[tuple[str, Any, int, str]] = [
        (push, [], 400, "JSON object"),
        (push, "text", 400, "JSON object"),
        (push, {}, 400, "user_ids is missing"),
        (push, {"user_ids": "alice", "payload": "{}"}, 400, "list of strings"),
        (push, {"user_ids": [1], "payload": "{}"}, 400, "list of strings"),
        (push, {"user_ids": [], "payload": "{}"}, 400, "user_ids is empty"),
        (push, {"user_ids": ["a"]}, 400, "payload is missing"),
        (push, {"user_ids": ["a"], "payload": {"x": 1}}, 400, "payload must be a string"),
        (push, {"user_ids": ["a"], "payload": "{nope"}, 400, "not valid JSON"),
        (push, {"user_ids": ["a"], "payload": "{}", "ttl_seconds": "60"}, 400, "ttl_seconds"),
        (push, {"user_ids": ["a"], "payload": "{}", "ttl_seconds": True}, 400, "ttl_seconds"),
        (push, {"user_ids": ["a"], "payload": "{}", "ttl_seconds": 1.5}, 400, "ttl_seconds"),
        (push, {"user_ids": ["a"], "payload": "{}", "ttl_seconds": -1}, 400, "between 0"),
        (push, {"user_ids": ["a"], "payload": "{}", "content_type": "nope"}, 400, "MIME"),
        (push, {"user_ids": ["a"], "payload": "x" * 70000}, 400, "over the limit"),
        (push, {"user_ids": ["a"] * 1001, "payload": "{}"}, 400, "over the limit of 1000"),
        (push, {"user_ids": ["a\x01"], "payload": "{}"}, 400, "control characters"),
        (push, {"user_ids": ["a"], "payload": "{}", "users": ["b"]}, 400, "unknown field 'users'"),
        (publish, {"payload": "{}"}, 400, "topic is missing"),
        (publish, {"topic": "bad topic!", "payload": "{}"}, 400, "malformed"),
        (publish, {"topic": "news", "payload": "{"}, 400, "not valid JSON"),
        (disconnect, {}, 400, "user_id is missing"),
        (disconnect, {"user_id": ""}, 400, "empty"),
        (disconnect, {"user_id": "a", "reason": "r" * 200}, 400, "close frame"),
        (disconnect, {"user_id": "a", "reason": 5}, 400, "reason must be a string"),
    ]
    for path, body, status, match in cases:
        refused(call(console, "POST", path, body), status, match)
    refused(call(console, "POST", push, raw=b"{nope", headers=_JSON), 400, "not valid JSON")
    refused(call(console, "POST", push, raw=b"\xff\xfe", headers=_JSON), 400, "not valid JSON")
    refused(call(console, "POST", push, raw=b"[" * 5000, headers=_JSON), 400, "nested more than")
    refused(call(console, "POST", push, raw=b'{"x": NaN}', headers=_JSON), 400, "not a JSON value")
    refused(call(console, "POST", push, raw=b"user_ids=a", headers=_FORM), 415, "application/json")
    refused(call(console, "POST", push, raw=b"{}"), 415, "application/json")
    big = b'{"user_ids":["a"],"payload":"' + b"x" * 600_000 + b'"}'
    refused(call(console, "POST", push, raw=big, headers=_JSON), 413, "over")
    refused(call(console, "GET", push), 405, "use POST")
    refused(call(console, "POST", "/admin/api/stats", {}), 405, "use GET")
    refused(call(console, "GET", "/admin/api/nope"), 404, "no admin API 'nope'")
    refused(call(console, "GET", "/admin/api/user"), 400, "give one user id")
    refused(call(console, "GET", "/admin/api/user?id=a&id=b"), 400, "give one user id")
    refused(call(console, "GET", "/admin/api/user?id="), 400, "give one user id")
    # A browser request from another origin is refused; this listener's own is not.
    foreign = {**_JSON, "Origin": "https://evil.example"}
    refused(call(console, "POST", disconnect, {"user_id": "a"}, headers=foreign), 403, "origin")
    refused(
        call(console, "POST", disconnect, {"user_id": "a"}, headers={"Origin": "null"}),
        403,
        "origin",
    )
    own = {"Origin": f"http://127.0.0.1:{console.admin_port}"}
    assert call(console, "POST", disconnect, {"user_id": "a"}, headers=own)[0] == 200
    # None of it stored anything, and none of it broke the node.
    assert ok(call(console, "GET", "/admin/api/stats"))["totals"]["pushed"] == 0
    assert "Traceback" not in console.log()


_JSON = {"Content-Type": "application/json"}
_FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def _fleet(
    ferretdb: FerretDB,  # noqa: F811
    node_factory: Callable[..., NodeProcess],
    extra: dict[str, str] | None = None,
) -> tuple[NodeProcess, NodeProcess]:
    """Two nodes with the console on, sharing a fresh database on FerretDB."""
    db = f"console_{uuid.uuid4().hex[:10]}"
    env = {
        "PUSHSVC_MONGO_URI": ferretdb.uri,
        "PUSHSVC_MONGO_DB": db,
        "PUSHSVC_CLUSTER_KEY": CLUSTER_KEY,
        "PUSHSVC_HEARTBEAT_INTERVAL": "0.5",
        **CONSOLE,
    }
    a = node_factory(env={**env, "PUSHSVC_NODE_ID": f"node-a-{db[-4:]}"})
    b = node_factory(env={**env, "PUSHSVC_NODE_ID": f"node-b-{db[-4:]}", **(extra or {})})
    wait_for(
        lambda: len(ok(call(a, "GET", "/admin/api/nodes"))["nodes"]) == 2,
        timeout=30,
        what="node a to see the fleet",
    )
    return a, b


def test_each_node_shows_the_figures_every_node_published(
    ferretdb: FerretDB,  # noqa: F811
    node_factory: Callable[..., NodeProcess],
    clients: list[Client],
) -> None:
    a, b = _fleet(ferretdb, node_factory)
    clients.append(open_ws(b, "carol"))
    for n in range(3):  # through node b: its own counter moves, node a's does not
        ok(call(b, "POST", "/admin/api/push", {"user_ids": ["carol"], "payload": f'{{"n":{n}}}'}))

    def row_of_b() -> dict[str, Any] | None:
        rows = {r["node_id"]: r for r in ok(call(a, "GET", "/admin/api/nodes"))["nodes"]}
        row = rows[b.node_id]
        return row if row.get("pushed") == 3 and row.get("users") == 1 else None

    row = wait_for(row_of_b, timeout=30, what="node b's published figures, seen from node a")
    assert row["connections"] == 1 and row["store_ok"] is True and row["frames"] >= 3
    assert row["ws_addr"] == f"127.0.0.1:{b.ws_port}"
    assert {"push_rate", "frame_rate", "ack_rate", "at"} <= set(row)
    nodes = ok(call(a, "GET", "/admin/api/nodes"))
    assert nodes["self"] == a.node_id
    assert [r["node_id"] for r in nodes["nodes"]] == sorted([a.node_id, b.node_id])
    assert {r["node_id"]: r for r in nodes["nodes"]}[a.node_id]["pushed"] == 0
    # Presence across the fleet, and a push by hand on a reaching carol on b.
    carol = ok(call(a, "GET", "/admin/api/user?id=carol"))
    assert carol["node_ids"] == [b.node_id] and carol["latest_seq"] == 3
    ok(call(a, "POST", "/admin/api/push", {"user_ids": ["carol"], "payload": '{"n":3}'}))
    got = clients[0].messages(4)
    assert [m["data"]["n"] for m in got] == [0, 1, 2, 3]
    # A node that stops leaves the list.
    assert b.stop() == 0
    wait_for(
        lambda: (
            [r["node_id"] for r in ok(call(a, "GET", "/admin/api/nodes"))["nodes"]] == [a.node_id]
        ),
        timeout=30,
        what="node b gone from the list",
    )


# -- the samples behind the charts (no I/O) ------------------------------------------------------


def _sample(at: float, pushed: int, frames: int = 0, acks: int = 0) -> Sample:
    return Sample(at, 1, 1, True, pushed, 0, frames, 0, acks, 0)


def test_rates_are_differences_between_samples() -> None:
    history = History(size=3)
    assert history.rates() == Rates() and history.series() == []
    history.add(_sample(100.0, 10, frames=100))
    history.add(_sample(102.0, 30, frames=160, acks=4))
    rates = history.rates()
    assert (rates.push, rates.frames, rates.acks) == (10.0, 30.0, 2.0)
    # Against a fresh reading taken at least half an interval after the newest sample.
    assert history.rates(_sample(104.0, 34)).push == 2.0
    assert history.rates(_sample(102.5, 99)).push == 10.0  # too close: the last interval
    history.add(_sample(104.0, 30))  # a counter never goes down; a restart is not negative
    history.add(_sample(106.0, 36))
    assert len(history) == 3  # bounded: the oldest went
    series = history.series()
    assert [s["at"] for s in series] == [104.0, 106.0]
    assert [s["push_rate"] for s in series] == [0.0, 3.0]


# -- in Chromium, against a two-node fleet ------------------------------------------------------


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", path
    width, height = struct.unpack(">II", data[16:24])
    return width, height


@pytest.mark.timeout(NODE_TIMEOUT + 90)
def test_console_in_chromium(
    ferretdb: FerretDB,  # noqa: F811
    node_factory: Callable[..., NodeProcess],
    tmp_path: Path,
) -> None:
    node_bin = _require_tools()
    a, b = _fleet(ferretdb, node_factory, {"PUSHSVC_DEMO": "1"})
    control = Control(a)
    with control_server(control) as control_url:
        env = {
            **os.environ,
            "PUSHSVC_HTTP_URL": f"http://127.0.0.1:{b.ws_port}",
            "PUSHSVC_CONTROL_URL": control_url,
            "PUSHSVC_ADMIN_URL": f"http://127.0.0.1:{a.admin_port}",
            "PUSHSVC_ADMIN_TOKEN": TOKEN,
            "PUSHSVC_NODE_A": a.node_id,
            "PUSHSVC_NODE_B": b.node_id,
            "PUSHSVC_CHROMIUM": CHROMIUM,
            "PUSHSVC_ARTIFACTS": str(tmp_path),
        }
        try:
            proc = subprocess.run(
                [
                    node_bin,
                    "--test",
                    "--test-concurrency=1",
                    "--test-timeout=150000",
                    "--test-reporter=spec",
                    "admin.test.js",
                ],
                cwd=BROWSER_DIR,
                env=env,
                capture_output=True,
                text=True,
                timeout=NODE_TIMEOUT,
            )
        except subprocess.TimeoutExpired as exc:
            pytest.fail(f"node --test admin.test.js ran over {NODE_TIMEOUT}s:\n{exc.stdout!s}")
    report = proc.stdout + proc.stderr
    if proc.returncode != 0:
        logs = f"--- node a ---\n{a.log()[-4000:]}\n--- node b ---\n{b.log()[-4000:]}"
        pytest.fail(f"node --test admin.test.js failed:\n{report}\n{logs}")
    for name in ("admin-fleet.png", "admin-actions.png"):
        shot = tmp_path / name
        width, height = _png_size(shot)
        assert width >= 1000 and height >= 600, (name, width, height)
        assert shot.stat().st_size > 20_000, (name, shot.stat().st_size)
    print(report)
