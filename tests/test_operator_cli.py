"""Operator conveniences: ``pushsvc check-config``, ``gen-config`` and ``backup``, the
Makefile's ``run``/``ferretdb`` targets and the README that uses them, and how frames
are counted in the metrics.

Every command runs as a real subprocess; the backup is taken from a real node while it
takes pushes, and a real node is started on it.
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from pushsvc.config import Settings, load_settings
from pushsvc_client.v1 import push_pb2
from tests.nodeproc import NodeProcess, auth
from tests.test_admin import metrics
from tests.test_cli import run_cli
from tests.waiting import wait_for
from tests.wsclient import Client, open_ws

ROOT = Path(__file__).resolve().parent.parent


def error_lines(proc: subprocess.CompletedProcess[str]) -> list[str]:
    """A refusal: exit status 2, no traceback, one ``pushsvc: error:`` line per problem."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines and all(line.startswith("pushsvc: error: ") for line in lines), proc.stderr
    return [line.removeprefix("pushsvc: error: ") for line in lines]


# -- gen-config and check-config -------------------------------------------------------------


def test_gen_config_round_trips_through_check_config(tmp_path: Path) -> None:
    proc = run_cli("gen-config", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    path = tmp_path / "node.toml"
    path.write_text(text)

    checked = run_cli("check-config", "--config", str(path), cwd=tmp_path)
    assert checked.returncode == 0, checked.stderr
    assert checked.stderr == ""
    assert checked.stdout.startswith(f"config ok ({path})")
    assert len(checked.stdout.splitlines()) == 1
    # As written, the file gives every default, and names every setting with its doc.
    assert load_settings(str(path), environ={}) == Settings()
    for name in Settings.__dataclass_fields__:
        assert re.search(rf"^(# )?{name} = ", text, re.M), name
        assert f"# env PUSHSVC_{name.upper()}" in text, name
    # The settings without a default are there commented out; uncommented, still defaults.
    commented = re.findall(r'^# (\w+) = ""$', text, re.M)
    assert {"mongo_uri", "jwt_secret", "cluster_key", "admin_token", "node_id"} <= set(commented)
    uncommented = tmp_path / "all.toml"
    uncommented.write_text(re.sub(r'^# (\w+ = "")$', r"\1", text, flags=re.M))
    assert load_settings(str(uncommented), environ={}) == Settings()
    assert run_cli("check-config", "--config", str(uncommented), cwd=tmp_path).returncode == 0


def test_gen_config_output_file_is_never_overwritten(tmp_path: Path) -> None:
    out = tmp_path / "node.toml"
    proc = run_cli("gen-config", "--output", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert out.read_text() == run_cli("gen-config").stdout
    out.write_text("mine")
    (line,) = error_lines(run_cli("gen-config", "-o", str(out), cwd=tmp_path))
    assert line == f"{out} exists: not overwritten (remove it or give another path)"
    assert out.read_text() == "mine"
    (line,) = error_lines(run_cli("gen-config", "-o", str(tmp_path / "no" / "x.toml")))
    assert line.startswith(f"cannot write {tmp_path / 'no' / 'x.toml'}: ")


def test_check_config_lists_every_problem_on_its_own_line(tmp_path: Path) -> None:
    cfg = tmp_path / "node.toml"
    cfg.write_text(
        'ping_intervall = 25\nmax_frame_bytes = 3\nws_addr = "nope"\nlog_format = "xml"\n'
    )
    env = {"PUSHSVC_FOO": "1", "PUSHSVC_ADMIN_TOKEN": "short"}
    lines = error_lines(run_cli("check-config", "--config", str(cfg), env=env))
    assert lines == [
        f"{cfg}: unknown setting 'ping_intervall'",
        "unknown setting PUSHSVC_FOO in the environment",
        f"{cfg}: ws_addr: 'nope' is not host:port (example: 127.0.0.1:50051)",
        f"{cfg}: log_format: 'xml' is not one of text, json",
        f"{cfg}: max_frame_bytes: 3 is outside 128..16777216",
        "PUSHSVC_ADMIN_TOKEN: 5 characters is too short: use at least 16 random characters "
        "(e.g. the output of: openssl rand -base64 32)",
    ]


def test_check_config_applies_the_rules_serve_starts_with(tmp_path: Path) -> None:
    fleet = {
        "PUSHSVC_MONGO_URI": "mongodb://db.example:27017/",
        "PUSHSVC_GRPC_ADDR": "0.0.0.0:50051",
        "PUSHSVC_ADMIN_UI": "1",
        "PUSHSVC_PING_INTERVAL": "30",
        "PUSHSVC_PING_TIMEOUT": "20",
    }
    lines = error_lines(run_cli("check-config", env=fleet, cwd=tmp_path))
    assert lines == [
        "ping_timeout (20.0) must be larger than ping_interval (30.0)",
        "gRPC listens on 0.0.0.0:50051, beyond this host, without API keys: set "
        "PUSHSVC_API_KEYS (comma-separated) or bind PUSHSVC_GRPC_ADDR to 127.0.0.1",
        "running with MongoDB (a fleet) needs PUSHSVC_CLUSTER_KEY, the same on every node",
        "running with MongoDB needs PUSHSVC_JWT_SECRET, the same on every node",
        "the admin console (PUSHSVC_ADMIN_UI) of a fleet node needs PUSHSVC_ADMIN_TOKEN",
    ]
    # And serve refuses the same settings, with the first of them.
    (line,) = error_lines(run_cli("serve", env=fleet, cwd=tmp_path))
    assert line == lines[0]


def test_check_config_reads_environment_files_like_systemd(tmp_path: Path) -> None:
    shared = ROOT / "deploy" / "env" / "pushsvc.env.example"
    instance = ROOT / "deploy" / "env" / "1.env.example"
    proc = run_cli("check-config", "--env-file", str(shared), "--env-file", str(instance))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"config ok (defaults, {shared}, {instance}, ")
    assert "embedded store in /var/lib/pushsvc/1" in proc.stdout  # as shipped: one node

    env_file = tmp_path / "1.env"
    env_file.write_text(
        "# a comment\n; another\n\nPUSHSVC_LOG_FORMAT='json'\n"
        'PUSHSVC_NODE_ID="web 1"\nPUSHSVC_ADMIN_UI=1\n'
    )
    later = tmp_path / "2.env"
    later.write_text("PUSHSVC_NODE_ID=web-2\n")
    proc = run_cli(
        "check-config", "--env-file", str(env_file), "--env-file", str(later), cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    assert "node web-2, embedded store in ./pushsvc-data, admin console on" in proc.stdout
    # An environment file wins over the process environment, as under systemd.
    proc = run_cli("check-config", "--env-file", str(later), env={"PUSHSVC_NODE_ID": "shell"})
    assert "node web-2," in proc.stdout

    bad = tmp_path / "bad.env"
    bad.write_text("PUSHSVC_LOG_LEVEL=info\nthis is not a setting\n")
    assert error_lines(run_cli("check-config", "--env-file", str(bad))) == [
        f"{bad}:2: not a KEY=VALUE line"
    ]
    missing = tmp_path / "missing.env"
    (line,) = error_lines(run_cli("check-config", "--env-file", str(missing)))
    assert line == f"cannot read environment file {missing}: No such file or directory"
    (line,) = error_lines(run_cli("check-config", "--config", str(tmp_path / "none.toml")))
    assert line == f"cannot read config file {tmp_path / 'none.toml'}: No such file or directory"
    broken = tmp_path / "broken.toml"
    broken.write_text("ws_addr = \n")
    (line,) = error_lines(run_cli("check-config", "--config", str(broken)))
    assert line.startswith(f"config file {broken} is not valid TOML: ")


def test_check_config_checks_the_files_settings_name(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    pem = tmp_path / "jwt.pem"
    pem.write_bytes(key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    es256 = {"PUSHSVC_JWT_ALGORITHM": "ES256", "PUSHSVC_JWT_PUBLIC_KEY_FILE": str(pem)}
    assert run_cli("check-config", env=es256, cwd=tmp_path).returncode == 0

    not_pem = tmp_path / "jwt.txt"
    not_pem.write_text("not a key\n")
    (line,) = error_lines(
        run_cli("check-config", env={**es256, "PUSHSVC_JWT_PUBLIC_KEY_FILE": str(not_pem)})
    )
    assert line == f"PUSHSVC_JWT_PUBLIC_KEY_FILE {not_pem} is not a PEM public key"
    gone = tmp_path / "gone.pem"
    (line,) = error_lines(
        run_cli("check-config", env={**es256, "PUSHSVC_JWT_PUBLIC_KEY_FILE": str(gone)})
    )
    assert line == f"cannot read PUSHSVC_JWT_PUBLIC_KEY_FILE {gone}: No such file or directory"

    a_file = tmp_path / "data"
    a_file.write_text("")
    (line,) = error_lines(run_cli("check-config", env={"PUSHSVC_DATA_DIR": str(a_file)}))
    assert line == f"data_dir {a_file} is not a directory"


# -- backup ----------------------------------------------------------------------------------


class Pusher:
    """Pushes to one user as fast as the node answers, in a thread; records each OK."""

    def __init__(self, node: NodeProcess, key: str, user: str) -> None:
        self.acked: list[tuple[int, int]] = []  # (n, seq) of every push answered OK
        self.errors: list[str] = []
        self._node, self._key, self._user = node, key, user
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Pusher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(60)

    def _run(self) -> None:
        padding = "x" * 4000  # a database of some size: the copy takes a while
        with self._node.stub(self._key) as stub:
            n = 0
            while not self._stop.is_set() and n < 900:  # under max_replay (1000)
                n += 1
                payload = json.dumps({"n": n, "pad": padding}).encode()
                try:
                    resp = stub.Push(
                        push_pb2.PushRequest(user_ids=[self._user], payload=payload),
                        metadata=auth(self._key),
                        timeout=15,
                    )
                except grpc.RpcError as exc:
                    self.errors.append(f"{exc.code()}: {exc.details()}")
                    return
                self.acked.append((n, resp.seqs[0]))


def test_backup_of_a_serving_node_replays_on_a_new_node(
    node_factory: Callable[..., NodeProcess], tmp_path: Path, clients: list[Client]
) -> None:
    # No API key or admin token given: the node generates them, and the backup takes them.
    node = node_factory(env={"PUSHSVC_API_KEYS": "", "PUSHSVC_ADMIN_UI": "1"})
    key = (node.data_dir / "api-key").read_text().strip()
    target = tmp_path / "backups" / "today"
    env = {"PUSHSVC_DATA_DIR": str(node.data_dir)}
    with Pusher(node, key, "bob") as pusher:
        wait_for(lambda: len(pusher.acked) >= 50, 60, "pushes before the backup")
        before = len(pusher.acked)
        proc = run_cli("backup", str(target), env=env, cwd=tmp_path, timeout=120)
        during = len(pusher.acked)
        wait_for(lambda: len(pusher.acked) >= during + 50, 60, "pushes after the backup")
    assert pusher.errors == []
    assert proc.returncode == 0, proc.stderr
    (line,) = proc.stdout.splitlines()
    assert line.startswith(f"backed up {node.data_dir} to {target}: ")
    assert line.endswith(
        f", with api-key, admin-token, owner-secret; start a node on it with"
        f" PUSHSVC_DATA_DIR={target}"
    )
    copied = int(re.search(r" (\d+) messages,", line).group(1))  # type: ignore[union-attr]
    assert sorted(p.name for p in target.iterdir()) == [
        "admin-token",
        "api-key",
        "owner-secret",
        "pushsvc.db",
    ]
    assert all(p.stat().st_mode & 0o077 == 0 for p in [target, *target.iterdir()])
    assert (target / "api-key").read_text().strip() == key
    assert node.stop() == 0  # the node kept serving through the backup, and stops cleanly

    # A node started on the backup has a consistent snapshot: every push answered before
    # the backup began, then a gap-free run of seqs, each with the payload pushed at it.
    restored = NodeProcess(target, env={"PUSHSVC_API_KEYS": ""})
    try:
        restored.start()
        reader = open_ws(restored, "bob", since=0)
        clients.append(reader)
        assert reader.welcome["seq"] == copied
        got = reader.messages(copied, timeout=30)
        assert reader.barrier() == []
        pushed = dict((seq, n) for n, seq in pusher.acked)
        assert [m["seq"] for m in got] == list(range(1, copied + 1))
        assert [m["data"]["n"] for m in got] == [pushed[s] for s in range(1, copied + 1)]
        assert before <= copied <= len(pusher.acked)
        # It accepts the key the original node generated, and goes on from there.
        with restored.stub(key) as stub:
            resp = stub.Push(
                push_pb2.PushRequest(user_ids=["bob"], payload=b'{"n": "after"}'),
                metadata=auth(key),
                timeout=15,
            )
        assert resp.seqs == [copied + 1]
    finally:
        if restored.proc is not None and restored.proc.poll() is None:
            restored.stop()


def test_backup_refuses_what_it_cannot_do(
    node_factory: Callable[..., NodeProcess], tmp_path: Path
) -> None:
    node = node_factory()
    env = {"PUSHSVC_DATA_DIR": str(node.data_dir)}
    full = tmp_path / "full"
    full.mkdir()
    (full / "something").write_text("")
    (line,) = error_lines(run_cli("backup", str(full), env=env))
    assert line == f"{full} is not empty: give a new or empty directory"
    a_file = tmp_path / "file"
    a_file.write_text("")
    (line,) = error_lines(run_cli("backup", str(a_file), env=env))
    assert line == f"{a_file} exists and is not a directory: give a new directory"
    nothing = tmp_path / "nothing"
    no_store = {"PUSHSVC_DATA_DIR": str(nothing)}
    (line,) = error_lines(run_cli("backup", str(tmp_path / "b1"), env=no_store))
    assert line == (
        f"no embedded store at {nothing / 'pushsvc.db'}: nothing to back up "
        "(is PUSHSVC_DATA_DIR right?)"
    )
    assert not (tmp_path / "b1").exists()
    mongo = {"PUSHSVC_MONGO_URI": "mongodb://db.example/"}
    (line,) = error_lines(run_cli("backup", str(tmp_path / "b2"), env=mongo))
    assert line.endswith("back that up with mongodump")
    # An empty directory is fine, and --data-dir names the store directly.
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = run_cli("backup", str(empty), "--data-dir", str(node.data_dir))
    assert proc.returncode == 0, proc.stderr
    assert (empty / "pushsvc.db").is_file()
    assert not [p for p in empty.iterdir() if p.name.startswith("pushsvc.db.partial")]


# -- Makefile and README ------------------------------------------------------------------------


def make_dry_run(target: str) -> list[str]:
    """The commands ``make`` would run for ``target`` from scratch (nothing is run)."""
    proc = subprocess.run(
        ["make", "--no-print-directory", "-n", "-B", target],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()


def test_make_run_installs_only_what_running_needs() -> None:
    commands = make_dry_run("run")
    installs = [c for c in commands if "pip install" in c]
    assert installs, commands
    assert not [c for c in installs if "[test]" in c], installs
    assert not [c for c in commands if re.search(r"pytest|ruff|mypy|install-tools", c)]
    assert commands[-1].endswith("pushsvc serve --dev")
    # make test still installs everything.
    assert any("pip install -q -e '.[test]'" in c for c in make_dry_run("test"))


def test_make_ferretdb_builds_only_ferretdb() -> None:
    assert make_dry_run("ferretdb") == ["bash deploy/dev/install-ferretdb.sh"]
    script = (ROOT / "deploy" / "dev" / "install-ferretdb.sh").read_text()
    assert "go build" in script and "apt-get" not in script and "chromium" not in script


def _readme_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```sh\n(.*?)```", readme, re.S)
    return [line for block in blocks for line in block.splitlines() if line.strip()]


def test_readme_commands_use_the_virtualenv_one_way() -> None:
    readme = (ROOT / "README.md").read_text()
    fleet = readme.split("## A fleet of two nodes", 1)[1].split("\n## ", 1)[0]
    assert "make ferretdb" in fleet and "make tools" not in fleet
    for line in _readme_commands():
        assert "activate" not in line and ".venv/bin:" not in line, line
        # Every pushsvc or python command is called by its .venv/bin path.
        for word in re.findall(r"(?<![\w/.-])(pushsvc|python3?(?:\.\d+)?)(?= )", line):
            raise AssertionError(f"{word} without .venv/bin/ in: {line}")
    assert any(".venv/bin/pushsvc" in line for line in _readme_commands())


# -- frames in the metrics --------------------------------------------------------------------


def test_frames_sent_counts_message_frames_only(node: NodeProcess, clients: list[Client]) -> None:
    before = metrics(node)
    reader = open_ws(node, "framed", topics=["news.*"])  # welcome: another frame
    clients.append(reader)
    reader.send({"type": "subscribe", "topic": "news.x"})  # subscribed: another frame
    assert reader.recv()["type"] == "subscribed"
    reader.send({"type": "nonsense"})  # error: another frame
    assert reader.recv()["type"] == "error"
    assert reader.barrier() == []  # pong: another frame
    with node.stub() as stub:
        stub.Push(push_pb2.PushRequest(user_ids=["framed"], payload=b"{}"), metadata=auth())
        stub.Push(
            push_pb2.PushRequest(user_ids=["framed"], payload=b"{}", ttl_seconds=0),
            metadata=auth(),
        )
        stub.Publish(push_pb2.PublishRequest(topic="news.x", payload=b"{}"), metadata=auth())
    assert len(reader.messages(3)) == 3  # stored, online-only, topic: message frames

    def moved() -> dict[str, Any] | None:
        m = metrics(node)
        frames = m["pushsvc_frames_sent_total"] - before["pushsvc_frames_sent_total"]
        others = m["pushsvc_other_frames_sent_total"] - before["pushsvc_other_frames_sent_total"]
        return {"frames": frames, "others": others} if frames == 3 and others == 4 else None

    wait_for(moved, what="3 message frames and 4 other frames counted")
    docs = (ROOT / "docs" / "operations.md").read_text()
    row = next(line for line in docs.splitlines() if "`pushsvc_frames_sent_total` |" in line)
    assert "message frames" in row and "nothing else" in row
    row = next(line for line in docs.splitlines() if "`pushsvc_other_frames_sent_total` |" in line)
    assert all(kind in row for kind in ("welcome", "pong", "subscribed", "error"))
