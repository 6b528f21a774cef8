"""pushsvc against its peers, side by side, in one run: ``python -m bench.suite``.

Servers (each alone on core 0, one after another): a pushsvc node (embedded
store; a second node on FerretDB for the MongoDB-wire scenario), a bare
gevent-websocket server (bench/peer_server.py), python-socketio 5
(bench/socketio_server.py), Centrifugo v6.9.1, and a bare grpcio echo server
under gevent, plain threads and grpc.aio (bench/grpc_echo.py). The load
generator is a Go program (bench/loadgen) on core 1. Scenarios, latencies
measured in the load generator from send time to receive time:

1. broadcast to every connection (topic subscription): one broadcast at a
   time (latency of one to all), then a sustained stream (frames/s);
2. unicast, online-only, through each server's API (msgs/s, then latency at
   half that rate);
3. connects/s with a JWT per connection;
4. RSS per idle connection;
5. stored unicast: pushsvc's embedded store and the MongoDB wire (with the
   database round trips per message counted by a proxy), Centrifugo with
   in-memory history.

See bench/README.md. ``--record`` appends the tables to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import queue
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import append_results, cpu_seconds, rss_bytes, table
from bench.procs import (
    BENCH_TOOLS,
    REPO,
    PinnedFerretDB,
    Proc,
    free_port,
    http_status,
    install_cleanup,
    wait_until,
)

API_KEY = "bench-api-key"
JWT_SECRET = "bench-jwt-secret-of-sufficient-length"
CLUSTER_KEY = "bench-cluster-key"
TOPIC = "bench"
SERVER_CORE = 0
LOADGEN_CORE = 1
PEER_VENV = BENCH_TOOLS / "venv"
LOADGEN = BENCH_TOOLS / "bin" / "loadgen"
CENTRIFUGO = BENCH_TOOLS / "bin" / "centrifugo"
MONITORING = {"hello", "isMaster", "ismaster", "ping", "endSessions", "buildInfo", "OP_QUERY"}
NAN = float("nan")


# -- the load generator ---------------------------------------------------------------


class LoadgenError(RuntimeError):
    pass


class Loadgen:
    """One ``loadgen run`` process on core 1, driven line by line."""

    def __init__(self, name: str, log_dir: Path, args: list[str]) -> None:
        self.proc = Proc(
            f"loadgen-{name}",
            [str(LOADGEN), "run", *args],
            log_dir,
            core=LOADGEN_CORE,
            stdin=subprocess.PIPE,
            stdout_pipe=True,
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self._get(30.0)  # {"ready": true}

    def _read(self) -> None:
        assert self.proc.proc.stdout is not None
        for line in self.proc.proc.stdout:
            self._lines.put(line.decode())
        self._lines.put(None)

    def _get(self, timeout: float) -> dict[str, Any]:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise LoadgenError(f"load generator silent for {timeout:.0f}s") from None
        if line is None:
            raise LoadgenError(f"load generator exited:\n{self.proc.log_tail()}")
        return dict(json.loads(line))

    def cmd(self, timeout: float, **command: Any) -> dict[str, Any]:
        assert self.proc.proc.stdin is not None
        self.proc.proc.stdin.write((json.dumps(command) + "\n").encode())
        self.proc.proc.stdin.flush()
        return self._get(timeout)

    def close(self) -> None:
        if self.proc.alive():
            try:
                self.cmd(60.0, op="close")
            except (LoadgenError, OSError):
                pass
        self.proc.stop()


# -- servers under test -----------------------------------------------------------------


class Server:
    """A server under test: started on core 0; ``loadgen_args`` tell the load
    generator how to reach it."""

    name = ""
    proc: Proc

    def start(self, log_dir: Path) -> None:
        raise NotImplementedError

    def loadgen_args(self) -> list[str]:
        raise NotImplementedError

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        self.proc.stop()


class Pushsvc(Server):
    def __init__(
        self, name: str, extra_env: dict[str, str], log_level: str, tree: Path | None = None
    ) -> None:
        self.name = name
        self.extra_env = extra_env
        self.log_level = log_level
        self.tree = tree  # another revision's source tree (``--baseline``), run from there
        self.data_dir = Path(tempfile.mkdtemp(prefix="pushsvc-bench-node-"))

    def start(self, log_dir: Path) -> None:
        for attempt in range(3):
            self.ws_port, self.grpc_port, self.admin_port = free_port(), free_port(), free_port()
            env = {k: v for k, v in os.environ.items() if not k.startswith("PUSHSVC_")}
            env.update(
                PUSHSVC_WS_ADDR=f"127.0.0.1:{self.ws_port}",
                PUSHSVC_GRPC_ADDR=f"127.0.0.1:{self.grpc_port}",
                PUSHSVC_ADMIN_ADDR=f"127.0.0.1:{self.admin_port}",
                PUSHSVC_DATA_DIR=str(self.data_dir),
                PUSHSVC_API_KEYS=API_KEY,
                PUSHSVC_JWT_SECRET=JWT_SECRET,
                PUSHSVC_LOG_LEVEL=self.log_level,
                **self.extra_env,
            )
            self.proc = Proc(
                self.name.replace(" ", "-").replace("(", "").replace(")", ""),
                [sys.executable, "-m", "pushsvc", "serve"],
                log_dir,
                core=SERVER_CORE,
                env=env,
                cwd=self.tree,  # ``-m`` imports pushsvc from the working directory first
            )
            try:
                wait_until(self._ready, 60.0, f"{self.name} /readyz")
                return
            except _PortTaken:
                self.proc.stop()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _ready(self) -> bool:
        if not self.proc.alive():
            tail = self.proc.log_tail()
            if "cannot listen" in tail or "in use" in tail:
                raise _PortTaken(tail)
            raise RuntimeError(f"{self.name} exited with {self.proc.proc.returncode}:\n{tail}")
        return http_status(f"http://127.0.0.1:{self.admin_port}/readyz") == 200

    def loadgen_args(self) -> list[str]:
        return [
            "--target=pushsvc",
            f"--ws=ws://127.0.0.1:{self.ws_port}",
            f"--grpc=127.0.0.1:{self.grpc_port}",
            f"--api-key={API_KEY}",
            f"--jwt-secret={JWT_SECRET}",
            f"--jwt-topics={TOPIC}",
        ]

    def stop(self) -> None:
        self.proc.stop(grace=30.0)
        shutil.rmtree(self.data_dir, ignore_errors=True)


class _PortTaken(RuntimeError):
    pass


class Bare(Server):
    name = "bare gevent-websocket"

    def start(self, log_dir: Path) -> None:
        self.proc = Proc(
            "bare",
            [sys.executable, "-m", "bench.peer_server", "--port=0", f"--jwt-secret={JWT_SECRET}"],
            log_dir,
            core=SERVER_CORE,
            cwd=REPO,
        )
        self.port = self.proc.ready_port()

    def loadgen_args(self) -> list[str]:
        base = f"127.0.0.1:{self.port}"
        return [
            "--target=bare",
            f"--ws=ws://{base}",
            f"--http=http://{base}",
            f"--jwt-secret={JWT_SECRET}",
        ]


class SocketIO(Server):
    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.name = f"python-socketio ({mode})"

    def start(self, log_dir: Path) -> None:
        self.proc = Proc(
            f"socketio-{self.mode}",
            [
                str(PEER_VENV / "bin" / "python"),
                str(REPO / "bench" / "socketio_server.py"),
                f"--mode={self.mode}",
                "--port=0",
                f"--jwt-secret={JWT_SECRET}",
            ],
            log_dir,
            core=SERVER_CORE,
        )
        self.port = self.proc.ready_port()

    def loadgen_args(self) -> list[str]:
        base = f"127.0.0.1:{self.port}"
        return [
            "--target=socketio",
            f"--ws=ws://{base}",
            f"--http=http://{base}",
            f"--jwt-secret={JWT_SECRET}",
        ]


class Centrifugo(Server):
    """Centrifugo v6 with the memory engine: user channels ``live:<user>`` (no
    history, subscribed through the token's ``channels`` claim), ``hist:<user>``
    (history in memory, subscribed by the client for the stored scenario) and
    the broadcast channel ``bench``."""

    name = "Centrifugo v6.9.1"

    def start(self, log_dir: Path) -> None:
        self.port = free_port()
        config = {
            "http_server": {"address": "127.0.0.1", "port": self.port},
            "log": {"level": "error"},
            "client": {"token": {"hmac_secret_key": JWT_SECRET}, "allowed_origins": ["*"]},
            "http_api": {"key": API_KEY},
            "usage_stats": {"disabled": True},
            "health": {"enabled": True},
            "channel": {
                "without_namespace": {"allow_subscribe_for_client": True},
                "namespaces": [
                    {"name": "live"},
                    {
                        "name": "hist",
                        "allow_subscribe_for_client": True,
                        "history_size": 100,
                        "history_ttl": "300s",
                    },
                ],
            },
        }
        path = log_dir / "centrifugo.json"
        path.write_text(json.dumps(config, indent=2))
        env = {k: v for k, v in os.environ.items() if not k.startswith("CENTRIFUGO_")}
        env["GOMAXPROCS"] = "1"  # one core, as the Python servers have
        self.proc = Proc(
            "centrifugo",
            [str(CENTRIFUGO), "--config", str(path)],
            log_dir,
            core=SERVER_CORE,
            env=env,
        )

        def ready() -> bool:
            if not self.proc.alive():
                raise RuntimeError(f"centrifugo exited:\n{self.proc.log_tail()}")
            return http_status(f"http://127.0.0.1:{self.port}/health") == 200

        wait_until(ready, 30.0, "centrifugo /health")

    def loadgen_args(self) -> list[str]:
        base = f"127.0.0.1:{self.port}"
        return [
            "--target=centrifugo",
            f"--ws=ws://{base}",
            f"--http=http://{base}",
            f"--api-key={API_KEY}",
            f"--jwt-secret={JWT_SECRET}",
            "--jwt-channels=live:{user}",
        ]


ECHO_MODES = ("gevent", "threads", "aio", "handoff", "post", "split")
ECHO_WORK_MODES = ("threads", "aio", "split")  # may take "+work" (bench.grpc_echo --work)


def _echo_extra_ok(base: str, extra: str) -> bool:
    """``+work`` on the modes that have it; ``+spinUS`` (``--spin US``) on threads."""
    if extra == "work":
        return base in ECHO_WORK_MODES
    spin = extra.removeprefix("spin")
    if base != "threads" or spin == extra:
        return False
    try:
        return 0 < float(spin) < 1e6
    except ValueError:
        return False


class Echo(Server):
    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.name = f"grpcio echo ({mode})"

    def start(self, log_dir: Path) -> None:
        base, _, extra = self.mode.partition("+")
        flags = ["--work"] if extra == "work" else []
        if extra.startswith("spin"):
            flags = [f"--spin={extra.removeprefix('spin')}"]
        self.proc = Proc(
            f"echo-{base}{'-' + extra if extra else ''}",
            [sys.executable, "-m", "bench.grpc_echo", f"--mode={base}", "--port=0", *flags],
            log_dir,
            core=SERVER_CORE,
            cwd=REPO,
        )
        self.port = self.proc.ready_port()

    def loadgen_args(self) -> list[str]:
        # The same calls a node gets, its API key header included (the echo ignores it).
        return ["--target=echo", f"--grpc=127.0.0.1:{self.port}", f"--api-key={API_KEY}"]


class MongoProxy:
    """Counts MongoDB wire messages between the node and FerretDB."""

    def __init__(self, upstream_port: int, log_dir: Path) -> None:
        self.proc = Proc(
            "mongoproxy",
            [str(LOADGEN), "mongoproxy", f"--upstream=127.0.0.1:{upstream_port}"],
            log_dir,
            core=LOADGEN_CORE,
            stdin=subprocess.PIPE,
            stdout_pipe=True,
        )
        assert self.proc.proc.stdout is not None
        line = self.proc.proc.stdout.readline().decode()
        if not line.startswith("READY "):
            raise RuntimeError(f"mongoproxy did not start: {line!r}\n{self.proc.log_tail()}")
        self.port = int(line.split()[1])

    def stats(self) -> dict[str, Any]:
        assert self.proc.proc.stdin is not None and self.proc.proc.stdout is not None
        self.proc.proc.stdin.write(b"stats\n")
        self.proc.proc.stdin.flush()
        return dict(json.loads(self.proc.proc.stdout.readline()))


# -- measurements -------------------------------------------------------------------------


@dataclass
class Row:
    """One measured line: a server and a way of sending."""

    server: str
    what: str
    rate: float = NAN
    p50: float = NAN
    p99: float = NAN
    cpu_us: float = NAN  # server CPU per message / frame / connect (µs)
    extra: dict[str, Any] = field(default_factory=dict)
    note: str = ""


@dataclass
class Results:
    broadcast: list[Row] = field(default_factory=list)
    unicast: list[Row] = field(default_factory=list)
    connect: list[Row] = field(default_factory=list)
    rss: list[Row] = field(default_factory=list)
    stored: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    profiles: list[str] = field(default_factory=list)


class Profiler:
    """py-spy on the pushsvc node for the length of one scenario."""

    def __init__(self, pid: int, out: Path, rate: int, gil: bool = False) -> None:
        self.out = out
        self.proc = Proc(
            f"py-spy-{out.stem}",
            [
                str(PEER_VENV / "bin" / "py-spy"),
                "record",
                f"--pid={pid}",
                f"--rate={rate}",
                "--format=raw",
                f"--output={out}",
                "--nonblocking",
                *(["--gil"] if gil else []),
            ],
            out.parent,
            core=LOADGEN_CORE,
        )

    def finish(self, top: int = 15) -> str:
        if self.proc.alive():
            os.killpg(self.proc.pid, 2)  # SIGINT: py-spy writes its output and exits
            try:
                self.proc.proc.wait(30)
            except subprocess.TimeoutExpired:
                pass
        self.proc.stop()
        return top_frames(self.out, top)


def top_frames(path: Path, top: int) -> str:
    """Self time per function from py-spy's raw (collapsed stack) output."""
    if not path.exists():
        return f"(no py-spy output at {path})"
    counts: dict[str, int] = {}
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        leaf = stack.rsplit(";", 1)[-1]
        leaf = re.sub(r":\d+\)$", ")", leaf)  # one function, whatever its line
        counts[leaf] = counts.get(leaf, 0) + int(n)
        total += int(n)
    rows = sorted(counts.items(), key=lambda kv: -kv[1])[:top]
    return (
        table(
            ["self %", "samples", "function (file)"],
            [[f"{n / total * 100:.1f}", n, name.replace("|", "\\|")] for name, n in rows],
        )
        + f"\n\n{total:,} samples"
    )


@contextmanager
def cpu_of(pid: int) -> Iterator[list[float]]:
    """Yields a list that holds, after the block, the CPU seconds pid used in it."""
    out: list[float] = []
    before = cpu_seconds(pid)
    yield out
    out.append(cpu_seconds(pid) - before)


def settled_rss(pid: int, timeout: float = 10.0) -> int:
    """RSS once two readings 0.5 s apart agree within 0.5 % (or at the deadline)."""
    last = rss_bytes(pid)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.5)  # two readings apart in time: a measurement window
        now = rss_bytes(pid)
        if abs(now - last) <= 0.005 * last:
            return now
        last = now
    return last


def wait_idle(pid: int, timeout: float = 60.0, busy: float = 0.2) -> float:
    """Wait until the server uses less than ``busy`` of a core over half a second,
    so that one phase's backlog does not slow the next; returns the seconds
    waited (``timeout`` if it never went quiet)."""
    start = time.monotonic()
    last = cpu_seconds(pid)
    while time.monotonic() - start < timeout:
        time.sleep(0.5)  # a CPU-time measurement window
        now = cpu_seconds(pid)
        if now - last < busy * 0.5:
            return time.monotonic() - start
        last = now
    return timeout


class Suite:
    def __init__(self, args: argparse.Namespace, log_dir: Path, round_index: int = 0) -> None:
        self.args = args
        self.log_dir = log_dir
        self.round_index = round_index
        self.res = Results()
        self.profiled: set[str] = set()

    # -- helpers --

    def _quiesce(self, server: Server, before: str) -> None:
        waited = wait_idle(server.pid)
        if waited >= 60.0:
            self.res.notes.append(
                f"{server.name}: still busy 60 s after the previous phase; measured {before} anyway"
            )

    def _profile(self, server: Server, scenario: str, label: str = "") -> Profiler | None:
        """py-spy for one measurement of a profiled scenario (once per measurement)."""
        if scenario not in self.args.py_spy or not isinstance(server, Pushsvc | Echo):
            return None
        key = f"{server.name}:{label or scenario}"
        if key in self.profiled:
            return None
        self.profiled.add(key)
        safe = re.sub(r"[^a-z0-9]+", "-", key.lower()).strip("-")
        return Profiler(
            server.pid,
            self.log_dir / f"py-spy-{safe}.txt",
            self.args.py_spy_rate,
            self.args.py_spy_gil,
        )

    def _profile_done(
        self, prof: Profiler | None, server: Server, scenario: str, keep: bool = True
    ) -> None:
        if prof is None:
            return
        text = prof.finish()
        if not keep:  # nothing ran worth profiling (an n/a measurement)
            return
        title = f"py-spy, {server.name}, {scenario}: top self-time frames"
        print(f"\n{title}\n{text}\n", flush=True)
        self.res.profiles.append(f"**{title}** (raw: `{prof.out}`)\n\n{text}")

    def _timeout(self, seconds: float) -> float:
        return seconds + 120.0

    def run_server(self, server: Server, plan: Callable[[Server, Loadgen], None]) -> None:
        print(f"== {server.name}", flush=True)
        lg: Loadgen | None = None
        try:
            server.start(self.log_dir)
            lg = Loadgen(
                re.sub(r"[^a-z0-9]+", "-", server.name.lower()), self.log_dir, server.loadgen_args()
            )
            plan(server, lg)
        except Exception as exc:  # one server failing must not end the run
            msg = f"{server.name}: failed: {type(exc).__name__}: {exc}"
            print(msg, flush=True)
            self.res.notes.append(msg.splitlines()[0][:400])
        finally:
            if lg is not None:
                lg.close()
            server.stop()

    # -- scenarios --

    def connect(self, server: Server, lg: Loadgen, n: int) -> int:
        self._quiesce(server, "the connects")
        rss0 = settled_rss(server.pid)
        prof = self._profile(server, "connect")
        t0 = time.monotonic()
        with cpu_of(server.pid) as cpu, cpu_of(lg.proc.pid) as lg_cpu:
            r = lg.cmd(
                self._timeout(self.args.connect_deadline),
                op="connect",
                n=n,
                concurrency=self.args.connect_concurrency,
                deadline_s=self.args.connect_deadline,
            )
        self._profile_done(prof, server, "connect")
        if not r.get("ok"):
            raise LoadgenError(f"connect: {r.get('error')}")
        connected = int(r["connected"])
        hs = r.get("handshake") or {}
        note = _errors_note(r)
        self.res.connect.append(
            Row(
                server.name,
                "connect + JWT",
                r["rate"],
                _ms(hs.get("p50_ms")),
                _ms(hs.get("p99_ms")),
                cpu[0] / connected * 1e6 if connected else NAN,
                {
                    "connected": f"{connected:,} / {n:,}",
                    **_cores(cpu[0], lg_cpu[0], time.monotonic() - t0),
                },
                note,
            )
        )
        rss1 = settled_rss(server.pid)
        self.res.rss.append(
            Row(
                server.name,
                "idle connections",
                extra={
                    "before (MiB)": rss0 / 2**20,
                    "with conns (MiB)": rss1 / 2**20,
                    "KiB/conn": (rss1 - rss0) / connected / 1024 if connected else NAN,
                    "connections": connected,
                },
            )
        )
        print(f"   connect: {connected}/{n} at {r['rate']:.0f}/s {note}", flush=True)
        return connected

    def broadcast(self, server: Server, lg: Loadgen, topic: str = TOPIC) -> None:
        sub = lg.cmd(120.0, op="subscribe", topic=topic)
        if not sub.get("ok"):
            self.res.notes.append(
                f"{server.name}: only {sub.get('acked')} of {sub.get('sent')} "
                "subscriptions acknowledged"
            )
        self._quiesce(server, "the broadcast")
        prof = self._profile(server, "broadcast")
        r = lg.cmd(
            self._timeout(self.args.rounds * 30),
            op="broadcast",
            topic=topic,
            rounds=self.args.rounds,
            duration_s=0,
            timeout_s=30,
        )
        if not r.get("ok"):
            raise LoadgenError(f"broadcast: {r.get('error')}")
        # Sustained: one publish call at a time, and as many as the window in flight;
        # the better one counts. A server whose publish answers on acceptance keeps
        # the window full with one caller; one that answers once its fan-out is done
        # (pushsvc, whose answer counts the subscribers written to) needs several.
        best: tuple[float, dict[str, Any], float, float, float] | None = None
        notes = _errors_note(r)
        for publishers in dict.fromkeys((1, self.args.window)):
            t0 = time.monotonic()
            with cpu_of(server.pid) as cpu, cpu_of(lg.proc.pid) as lg_cpu:
                sr = lg.cmd(
                    self._timeout(self.args.duration + 30),
                    op="broadcast",
                    topic=topic,
                    rounds=0,
                    duration_s=self.args.duration,
                    window=self.args.window,
                    publishers=publishers,
                    timeout_s=30,
                )
            wall = time.monotonic() - t0
            if not sr.get("ok"):
                raise LoadgenError(f"broadcast: {sr.get('error')}")
            notes += _errors_note(sr)
            sustained = sr.get("sustained") or {}
            rate = float(sustained.get("rate") or 0)
            print(
                f"   sustained, {publishers} publish call(s) in flight: {rate:,.0f} frames/s",
                flush=True,
            )
            if best is None or rate > best[0]:
                best = (rate, sustained, cpu[0], lg_cpu[0], wall)
        self._profile_done(prof, server, "broadcast")
        assert best is not None
        _, s, server_cpu, loadgen_cpu, wall = best
        rounds = r.get("rounds") or []
        p99s = sorted(_ms(x["latency"].get("p99_ms")) for x in rounds)
        p50s = sorted(_ms(x["latency"].get("p50_ms")) for x in rounds)
        all_in = sorted(float(x["all_in_s"]) * 1000 for x in rounds)
        incomplete = [x for x in rounds if not x.get("complete")]
        frames = float(s.get("frames") or 0)
        note = notes
        if int(s.get("publishers") or 1) > 1:
            note += f" sustained with {s['publishers']} publish calls in flight;"
        if incomplete:
            note += f" {len(incomplete)} single broadcasts incomplete;"
        if s.get("incomplete"):
            note += f" {s['incomplete']} sustained broadcasts incomplete;"
        if s.get("error"):
            note += f" publish failed: {s['error'][:120]};"
        lat = s.get("latency") or {}
        self.res.broadcast.append(
            Row(
                server.name,
                f"to {r.get('subscribers', 0):,} subscribers",
                float(s.get("rate") or NAN),
                _ms(lat.get("p50_ms")),
                _ms(lat.get("p99_ms")),
                server_cpu / frames * 1e6 if frames else NAN,
                {
                    "one broadcast p50 (ms)": _median(p50s),
                    "one broadcast p99 (ms)": _median(p99s),
                    "one broadcast all in (ms)": _median(all_in),
                    "broadcasts": s.get("broadcasts", 0),
                    **_cores(server_cpu, loadgen_cpu, wall),
                },
                note.strip(),
            )
        )
        print(
            f"   broadcast: {float(s.get('rate') or 0):,.0f} frames/s, one to all p99 "
            f"{_median(p99s):.1f} ms {note}",
            flush=True,
        )

    def unicast(
        self,
        server: Server,
        lg: Loadgen,
        what: str,
        mode: str,
        *,
        stored: bool = False,
        address: str = "",
        batch: int = 1,
        paced: bool = True,
        proxy: MongoProxy | None = None,
        duration: float | None = None,
        window: int | None = None,
    ) -> None:
        a = self.args
        duration = duration or a.duration
        rows = self.res.stored if stored else self.res.unicast
        params: dict[str, Any] = {
            "op": "unicast",
            "mode": mode,
            "duration_s": duration,
            "concurrency": a.concurrency if batch == 1 else a.batch_concurrency,
            "batch": batch,
            "streams": a.streams,
            "window": window or a.stream_window,
            "ttl": -1 if stored else 0,
            "address": address,
            "max_inflight": a.max_inflight,
        }
        self._quiesce(server, what)
        prof = self._profile(server, "stored" if stored else "unicast", what)
        db0 = proxy.stats() if proxy else None
        t0 = time.monotonic()
        with cpu_of(server.pid) as cpu, cpu_of(lg.proc.pid) as lg_cpu:
            r = lg.cmd(self._timeout(duration), **params)
        wall = time.monotonic() - t0
        db1 = proxy.stats() if proxy else None
        self._profile_done(prof, server, what, keep=not r.get("unimplemented"))
        if not r.get("ok"):
            raise LoadgenError(f"{what}: {r.get('error')}")
        if r.get("unimplemented"):
            rows.append(Row(server.name, what, note=f"n/a: {str(r.get('detail'))[:160]}"))
            print(f"   {what}: n/a ({r.get('detail')})", flush=True)
            return
        received = float(r.get("received") or 0)
        lat = r.get("latency") or {}
        row = Row(
            server.name,
            what,
            float(r.get("rate") or NAN),
            _ms(lat.get("p50_ms")),
            _ms(lat.get("p99_ms")),
            cpu[0] / received * 1e6 if received else NAN,
            {
                "sent": r.get("sent"),
                "received": r.get("received"),
                "failed": r.get("failed"),
                **_cores(cpu[0], lg_cpu[0], wall),
            },
            _errors_note(r),
        )
        lost = int(r.get("accepted") or 0) - int(received)
        if lost > 0 and not mode.startswith("echo"):
            row.note += f" {lost} accepted but not received;"
        if db0 is not None and db1 is not None:
            accepted = int(r.get("accepted") or 0)
            by0, by1 = db0["by_target"], db1["by_target"]
            delta = {k: by1.get(k, 0) - by0.get(k, 0) for k in by1}
            work = sum(v for k, v in delta.items() if k.split(" ")[0] not in MONITORING)
            row.extra["db round trips/msg"] = work / accepted if accepted else NAN
            # Per command and collection ("update counters"), monitoring left out.
            row.extra["db commands"] = ", ".join(
                f"{k} {v / accepted:.3g}"
                for k, v in sorted(delta.items())
                if v and accepted and k.split(" ")[0] not in MONITORING
            )
            # Where the database's time went: ms waited for its replies per message,
            # by command and collection, the largest first.
            us0, us1 = db0.get("us_by_target", {}), db1.get("us_by_target", {})
            waits = {k: (us1[k] - us0.get(k, 0)) / 1000 for k in us1}
            busy = sorted(
                (
                    (k, ms)
                    for k, ms in waits.items()
                    if ms > 0 and k.split(" ")[0] not in MONITORING
                ),
                key=lambda kv: -kv[1],
            )
            if accepted and busy:
                row.extra["db ms/msg"] = sum(ms for _, ms in busy) / accepted
                row.extra["db ms/msg by command"] = ", ".join(
                    f"{k} {ms / accepted:.3g}" for k, ms in busy
                )
        if paced and a.paced and row.rate == row.rate and row.rate > 0:
            half = dict(params, rate=row.rate / 2, duration_s=duration)
            self._quiesce(server, f"{what} at half rate")
            r2 = lg.cmd(self._timeout(duration), **half)
            lat2 = r2.get("latency") or {}
            row.extra["half-rate p50 (ms)"] = _ms(lat2.get("p50_ms"))
            row.extra["half-rate p99 (ms)"] = _ms(lat2.get("p99_ms"))
        rows.append(row)
        extra = f", {row.extra['db round trips/msg']:.2f} db round trips/msg" if proxy else ""
        if "half-rate p99 (ms)" in row.extra:
            extra += (
                f"; at half rate p50 {row.extra['half-rate p50 (ms)']:.2f} ms,"
                f" p99 {row.extra['half-rate p99 (ms)']:.2f} ms"
            )
        print(
            f"   {what}: {row.rate:,.0f} msgs/s, p50 {row.p50:.2f} ms, p99 {row.p99:.2f} ms"
            f"{extra} {row.note}",
            flush=True,
        )

    # -- per server --

    def plan_pushsvc(self, server: Server, lg: Loadgen) -> None:
        a = self.args
        self.connect(server, lg, a.connections)
        if "broadcast" in a.scenarios:
            self.broadcast(server, lg)
        if "unicast" in a.scenarios:
            self.unicast(server, lg, "Push (unary, concurrent)", "grpc_push")
            self.unicast(server, lg, "PushStream", "grpc_stream")
            self.unicast(server, lg, "PushBatch", "grpc_batch", batch=a.batch)
        if "stored" in a.scenarios:
            self.unicast(server, lg, "embedded: PushStream", "grpc_stream", stored=True)
            self.unicast(
                server, lg, "embedded: PushBatch", "grpc_batch", stored=True, batch=a.batch
            )

    def plan_http_peer(self, server: Server, lg: Loadgen) -> None:
        a = self.args
        self.connect(server, lg, a.connections)
        if "broadcast" in a.scenarios:
            self.broadcast(server, lg)
        if "unicast" in a.scenarios:
            self.unicast(server, lg, "POST /push (concurrent)", "http_push")
            self.unicast(server, lg, "POST /push_batch", "http_batch", batch=a.batch)

    def plan_centrifugo(self, server: Server, lg: Loadgen) -> None:
        a = self.args
        self.connect(server, lg, a.connections)
        if "broadcast" in a.scenarios:
            self.broadcast(server, lg)
        if "unicast" in a.scenarios:
            self.unicast(
                server, lg, "publish (HTTP API, concurrent)", "cf_publish", address="live:{user}"
            )
            self.unicast(
                server, lg, "batch (HTTP API)", "cf_batch", address="live:{user}", batch=a.batch
            )
        if "stored" in a.scenarios:
            sub = lg.cmd(120.0, op="subscribe", topic="hist:{user}")
            if not sub.get("ok"):
                self.res.notes.append(f"Centrifugo: hist subscriptions: {sub}")
            self.unicast(
                server,
                lg,
                "history in memory: publish",
                "cf_publish",
                address="hist:{user}",
                stored=True,
            )
            self.unicast(
                server,
                lg,
                "history in memory: batch",
                "cf_batch",
                address="hist:{user}",
                stored=True,
                batch=a.batch,
            )

    def _first_contact(self, node: Pushsvc, lg: Loadgen, proxy: MongoProxy) -> None:
        """One stored message to every connected user (through ``PushStream``,
        which every revision has), before the measured phases:
        a user's first push creates its seq counter (a counter read and an insert
        for each group that meets new users), a cost per user rather than per
        message. Counted here and reported in the notes, so the measured phases
        show the steady state."""
        a = self.args
        users = a.mongo_connections
        self._quiesce(node, "first contact")
        db0 = proxy.stats()
        r = lg.cmd(
            self._timeout(60),
            op="unicast",
            mode="grpc_stream",
            duration_s=60,
            messages=users,  # every user once (recipients go round robin)
            concurrency=1,
            batch=1,
            streams=1,
            window=min(a.stream_window, 32),
            ttl=-1,
            address="",
            max_inflight=a.max_inflight,
        )
        db1 = proxy.stats()
        if not r.get("ok"):
            raise LoadgenError(f"first contact: {r.get('error')}")
        by0, by1 = db0["by_target"], db1["by_target"]
        delta = {k: by1.get(k, 0) - by0.get(k, 0) for k in by1}
        work = {k: v for k, v in sorted(delta.items()) if v and k.split(" ")[0] not in MONITORING}
        accepted = int(r.get("accepted") or 0)
        note = (
            f"{node.name}: first contact, not in the measures: {accepted} stored"
            f" messages through PushStream to {users} users not pushed to before took"
            f" {sum(work.values())} database round trips ("
            + ", ".join(f"{k} {v}" for k, v in work.items())
            + ")"
        )
        print(f"   {note}", flush=True)
        self.res.notes.append(note)

    def plan_echo(self, server: Server, lg: Loadgen) -> None:
        self.unicast(server, lg, "unary (concurrent)", "echo_unary")
        self.unicast(server, lg, "stream", "echo_stream")

    def run_mongo(self) -> None:
        """The MongoDB-wire node, then (with ``--baseline``) the baseline's, each
        on a FerretDB of its own."""
        a = self.args
        self._run_mongo("pushsvc", None)
        if a.baseline:
            self._run_mongo(f"pushsvc {a.baseline}", a.baseline_tree)

    def _run_mongo(self, name: str, tree: Path | None) -> None:
        a = self.args
        name = f"{name} (MongoDB wire)"
        print(f"== {name} on FerretDB", flush=True)
        db = PinnedFerretDB(core=LOADGEN_CORE)
        proxy: MongoProxy | None = None
        node: Pushsvc | None = None
        lg: Loadgen | None = None
        try:
            db.start()
            proxy = MongoProxy(db.port, self.log_dir)
            node = Pushsvc(
                name,
                {
                    "PUSHSVC_MONGO_URI": f"mongodb://127.0.0.1:{proxy.port}/",
                    "PUSHSVC_MONGO_DB": f"bench_{os.getpid()}",
                    "PUSHSVC_CLUSTER_KEY": CLUSTER_KEY,
                    "PUSHSVC_NODE_ID": f"bench-{os.getpid()}",
                    **({} if tree else dict(a.mongo_env)),  # the baseline may not know them
                },
                a.log_level,
                tree,
            )
            node.start(self.log_dir)
            lg = Loadgen(
                name.replace(" ", "-").replace("(", "").replace(")", ""),
                self.log_dir,
                node.loadgen_args(),
            )
            r = lg.cmd(
                self._timeout(a.connect_deadline),
                op="connect",
                n=a.mongo_connections,
                concurrency=min(a.connect_concurrency, 50),
                deadline_s=a.connect_deadline,
            )
            print(f"   connected {r.get('connected')}/{a.mongo_connections}", flush=True)
            self._first_contact(node, lg, proxy)
            for what, mode, batch in (
                ("MongoDB wire: PushStream", "grpc_stream", 1),
                ("MongoDB wire: PushBatch", "grpc_batch", a.batch),
            ):
                self.unicast(
                    node,
                    lg,
                    what,
                    mode,
                    stored=True,
                    batch=batch,
                    paced=False,
                    proxy=proxy,
                    duration=a.mongo_duration,
                    window=min(a.stream_window, 32),
                )
        except Exception as exc:  # one server failing must not end the run
            msg = f"{name}: failed: {type(exc).__name__}: {exc}"
            print(msg, flush=True)
            self.res.notes.append(msg.splitlines()[0][:400])
        finally:
            if lg is not None:
                lg.close()
            if node is not None:
                node.stop()
            if proxy is not None:
                proxy.proc.stop()
            db.cleanup()

    def run(self) -> Results:
        a = self.args
        targets = a.targets
        servers: list[tuple[Callable[[], Server], Callable[[Server, Loadgen], None]]] = []
        if "pushsvc" in targets:
            env = dict(a.pushsvc_env)
            servers.append((lambda: Pushsvc("pushsvc", env, a.log_level), self.plan_pushsvc))
            if a.baseline:
                rev, tree = a.baseline, a.baseline_tree
                servers.append(
                    (lambda: Pushsvc(f"pushsvc {rev}", env, a.log_level, tree), self.plan_pushsvc)
                )
        if "bare" in targets:
            servers.append((Bare, self.plan_http_peer))
        if "socketio" in targets:
            for mode in a.socketio_modes:
                servers.append((functools.partial(SocketIO, mode), self.plan_http_peer))
        if "centrifugo" in targets:
            servers.append((Centrifugo, self.plan_centrifugo))
        if "echo" in targets and "unicast" in a.scenarios:
            for mode in a.echo_modes:
                servers.append((functools.partial(Echo, mode), self.plan_echo))
        # Each round starts one server further on (pushsvc first in the first round,
        # second in the next...), so a drift of the machine's speed within a round
        # does not always favour the same servers.
        turn = self.round_index % len(servers) if servers else 0
        for make, plan in servers[turn:] + servers[:turn]:
            self.run_server(make(), plan)
        if "mongo" in targets and "stored" in a.scenarios:
            self.run_mongo()
        return self.res


def _cores(server_cpu: float, loadgen_cpu: float, wall: float) -> dict[str, float]:
    """Share of one core the server and the load generator used over a phase."""
    return {
        "server core %": server_cpu / wall * 100 if wall else NAN,
        "loadgen core %": loadgen_cpu / wall * 100 if wall else NAN,
    }


def best_of(runs: list[Results]) -> Results:
    """Each measure's best over the rounds (highest rate; smallest KiB per
    connection): other work on the machine only ever makes a number worse."""
    if len(runs) == 1:
        return runs[0]

    def pick(lists: list[list[Row]], better: Callable[[Row, Row], bool]) -> list[Row]:
        best: dict[tuple[str, str], Row] = {}
        for rows in lists:
            for row in rows:
                key = (row.server, row.what)
                if key not in best or better(row, best[key]):
                    best[key] = row
        return list(best.values())

    def faster(a: Row, b: Row) -> bool:
        return a.rate == a.rate and (b.rate != b.rate or a.rate > b.rate)

    def smaller(a: Row, b: Row) -> bool:
        return float(a.extra.get("KiB/conn", NAN)) < float(b.extra.get("KiB/conn", NAN))

    out = Results(
        broadcast=pick([r.broadcast for r in runs], faster),
        unicast=pick([r.unicast for r in runs], faster),
        connect=pick([r.connect for r in runs], faster),
        rss=pick([r.rss for r in runs], smaller),
        stored=pick([r.stored for r in runs], faster),
    )
    kept = {
        id(row)
        for rows in (out.broadcast, out.unicast, out.connect, out.rss, out.stored)
        for row in rows
    }
    for i, r in enumerate(runs, 1):
        out.notes += [f"round {i}: {n}" for n in r.notes]
        # What went wrong in a round whose row was not kept would not show otherwise.
        out.notes += [
            f"round {i}: {row.server}, {row.what} ({row.rate:,.0f}/s, not kept): {row.note.strip()}"
            for rows in (r.broadcast, r.unicast, r.connect, r.rss, r.stored)
            for row in rows
            if row.note.strip() and id(row) not in kept
        ]
        out.profiles += [f"(round {i}) {p}" for p in r.profiles]
    return out


def _ms(v: Any) -> float:
    return NAN if v is None else float(v)


def _median(values: list[float]) -> float:
    return values[len(values) // 2] if values else NAN


def _errors_note(r: dict[str, Any]) -> str:
    parts = []
    errs = r.get("errors") or {}
    if errs:
        first = next(iter(errs))
        parts.append(f"{sum(errs.values())} errors, e.g. {first[:120]!r};")
    if r.get("drops"):
        parts.append(f"{r['drops']} connections dropped by the server so far;")
    return " ".join(parts)


# -- report -----------------------------------------------------------------------------

SOCKETIO_GROUP = "python-socketio (best deployment)"


def _ratio(a: float, b: float) -> str:
    if a != a or b != b or not b:
        return "n/a"
    return f"{a / b:.2f}×"  # noqa: RUF001 - the multiplication sign is meant


def _group(server: str) -> str:
    return SOCKETIO_GROUP if server.startswith("python-socketio") else server


def _peer_groups(rows: list[Row]) -> list[str]:
    """The peers of a table, python-socketio's deployments as one group."""
    out: list[str] = []
    for r in rows:
        g = _group(r.server)
        if not r.server.startswith("pushsvc") and g not in out:
            out.append(g)
    return out


def _best_of(
    rows: list[Row], group: str, value: Callable[[Row], float], lower_better: bool = False
) -> tuple[float, str]:
    """A group's best value over its servers (and which server gave it)."""
    cands = [
        (value(r), r.server) for r in rows if _group(r.server) == group and value(r) == value(r)
    ]
    if not cands:
        return NAN, ""
    return min(cands) if lower_better else max(cands)


def _ratio_table(
    rows: list[Row],
    what: str,
    value: Callable[[Row], float],
    *,
    lower_better: bool = False,
    peer_over_pushsvc: bool = False,
) -> str:
    mine = [r for r in rows if r.server.startswith("pushsvc")]
    peers = _peer_groups(rows)
    if not mine or not peers:
        return ""
    cells = []
    for r in mine:
        line: list[object] = [f"{r.server}: {r.what}" if len(mine) > 1 else r.server]
        for peer in peers:
            best, _ = _best_of(rows, peer, value, lower_better)
            line.append(_ratio(best, value(r)) if peer_over_pushsvc else _ratio(value(r), best))
        cells.append(line)
    return f"Ratios from this run, {what}:\n\n" + table(["pushsvc", *peers], cells)


def _is_batch(row: Row) -> bool:
    return "batch" in row.what.lower()


def report(res: Results, args: argparse.Namespace) -> str:
    out: list[str] = []
    if res.broadcast:
        out.append("### 1. Broadcast to every connection (topic subscribers)")
        out.append(
            table(
                [
                    "server",
                    "subscribers",
                    "frames/s (sustained)",
                    "p50 ms",
                    "p99 ms",
                    "one broadcast: p50 ms",
                    "one broadcast: p99 ms",
                    "one broadcast: all in ms",
                    "server CPU µs/frame",
                    "server core %",
                    "loadgen core %",
                    "notes",
                ],
                [
                    [
                        r.server,
                        r.what.removeprefix("to ").removesuffix(" subscribers"),
                        r.rate,
                        r.p50,
                        r.p99,
                        r.extra["one broadcast p50 (ms)"],
                        r.extra["one broadcast p99 (ms)"],
                        r.extra["one broadcast all in (ms)"],
                        r.cpu_us,
                        r.extra["server core %"],
                        r.extra["loadgen core %"],
                        r.note,
                    ]
                    for r in res.broadcast
                ],
            )
        )
        out.append(
            _ratio_table(res.broadcast, "pushsvc ÷ peer, sustained frames/s", lambda r: r.rate)
        )
        out.append(
            _ratio_table(
                res.broadcast,
                "peer ÷ pushsvc, p99 of one broadcast (> 1: pushsvc's is shorter)",
                lambda r: float(r.extra["one broadcast p99 (ms)"]),
                lower_better=True,
                peer_over_pushsvc=True,
            )
        )
    if res.unicast:
        out.append("### 2. Unicast, online-only, through the server API")
        out.append(_rate_table(res.unicast, "msgs/s"))
        peers = _peer_groups(res.unicast)
        rows = []
        for r in (x for x in res.unicast if x.server == "pushsvc"):
            same = [x for x in res.unicast if _is_batch(x) == _is_batch(r)]
            cells: list[object] = [r.what]
            for peer in peers:
                best, _ = _best_of(same, peer, lambda x: x.rate)
                cells.append(_ratio(r.rate, best))
            rows.append(cells)
        if rows and peers:
            out.append(
                "Ratios from this run, pushsvc ÷ peer, msgs/s (one message per request against "
                "the peer's best one-message mode; batches against its batch mode):\n\n"
                + table(["pushsvc", *peers], rows)
            )
    if res.connect:
        out.append("### 3. Connects/s with a JWT per connection")
        out.append(
            table(
                [
                    "server",
                    "connected",
                    "connects/s",
                    "handshake p50 ms",
                    "p99 ms",
                    "server CPU µs/connect",
                    "server core %",
                    "loadgen core %",
                    "notes",
                ],
                [
                    [
                        r.server,
                        r.extra["connected"],
                        r.rate,
                        r.p50,
                        r.p99,
                        r.cpu_us,
                        r.extra["server core %"],
                        r.extra["loadgen core %"],
                        r.note,
                    ]
                    for r in res.connect
                ],
            )
        )
        out.append(_ratio_table(res.connect, "pushsvc ÷ peer, connects/s", lambda r: r.rate))
    if res.rss:
        out.append("### 4. RSS per idle connection")
        out.append(
            table(
                [
                    "server",
                    "connections",
                    "RSS before MiB",
                    "RSS with conns MiB",
                    "KiB per connection",
                ],
                [
                    [
                        r.server,
                        r.extra["connections"],
                        r.extra["before (MiB)"],
                        r.extra["with conns (MiB)"],
                        r.extra["KiB/conn"],
                    ]
                    for r in res.rss
                ],
            )
        )
        out.append(
            _ratio_table(
                res.rss,
                "pushsvc ÷ peer, KiB per connection (< 1: pushsvc's is smaller)",
                lambda r: float(r.extra["KiB/conn"]),
                lower_better=True,
            )
        )
    if res.stored:
        out.append("### 5. Stored unicast")
        out.append(_rate_table(res.stored, "msgs/s", db=True))
        lines = []
        online = next(
            (r for r in res.unicast if r.server == "pushsvc" and r.what == "PushStream"), None
        )
        stream = next((r for r in res.stored if r.what == "embedded: PushStream"), None)
        if online and stream:
            lines.append(
                "- pushsvc, stored ÷ online-only, both through PushStream: "
                f"{_ratio(stream.rate, online.rate)}"
            )
        for r in res.stored:
            if not r.server.startswith("pushsvc"):
                continue
            peer_rows = [x for x in res.stored if not x.server.startswith("pushsvc")]
            same = [x for x in peer_rows if _is_batch(x) == _is_batch(r)]
            if same:
                best = max(x.rate for x in same)
                lines.append(
                    f"- {r.server}, {r.what} ÷ {same[0].server} (history in memory, "
                    f"{'batch' if _is_batch(r) else 'one message per request'}): "
                    f"{_ratio(r.rate, best)}"
                )
        if lines:
            out.append("\n".join(lines))
    if res.profiles:
        out.append("### py-spy")
        out.extend(res.profiles)
    if res.notes:
        out.append("Notes:\n\n" + "\n".join(f"- {n}" for n in res.notes))
    return "\n\n".join(part.strip() for part in out if part.strip())


def _rate_table(rows: list[Row], unit: str, db: bool = False) -> str:
    extra_cols = ["server core %", "loadgen core %", "half-rate p50 (ms)", "half-rate p99 (ms)"]
    if db:
        extra_cols += ["db round trips/msg", "db commands", "db ms/msg", "db ms/msg by command"]
    headers = [
        "server",
        "how",
        unit,
        "p50 ms",
        "p99 ms",
        "server CPU µs/msg",
        *extra_cols,
        "notes",
    ]
    body = []
    for r in rows:
        body.append(
            [
                r.server,
                r.what,
                r.rate,
                r.p50,
                r.p99,
                r.cpu_us,
                *[r.extra.get(c, "—") for c in extra_cols],
                r.note,
            ]
        )
    return table(headers, body)


# -- build ------------------------------------------------------------------------------


def build(args: argparse.Namespace) -> None:
    """Install what the suite runs (idempotent): bench/install.sh."""
    subprocess.run(["bash", str(REPO / "bench" / "install.sh")], check=True, cwd=REPO)


def versions() -> str:
    def run(cmd: list[str]) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return "?"

    peer_py = str(PEER_VENV / "bin" / "python")
    pkgs = run(
        [
            peer_py,
            "-c",
            "import importlib.metadata as m; print(', '.join(f'{p} {m.version(p)}' for p in "
            "('python-socketio', 'python-engineio', 'aiohttp', 'uvicorn')))",
        ]
    )
    # grpcio loaded as the nodes and the echo servers load it (``classic_grpc_io`` first).
    grpcio = run(
        [
            sys.executable,
            "-c",
            "import os; from pushsvc.nativethreads import classic_grpc_io; classic_grpc_io(); "
            "import grpc, gevent; io = os.environ.get('GRPC_EXPERIMENTS', ''); "
            "print(f'grpcio {grpc.__version__}, gevent {gevent.__version__} ' "
            "+ (f'(GRPC_EXPERIMENTS={io})' if io else \"(grpcio's default I/O)\"))",
        ]
    )
    commit = run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    dirty = run(["git", "-C", str(REPO), "status", "--porcelain", "--", "pushsvc", "protos"])
    return (
        f"pushsvc {commit}{' (uncommitted changes)' if dirty else ''}; {grpcio}; "
        f"{run([str(CENTRIFUGO), 'version'])}; {pkgs}"
    )


def baseline_tree(rev: str, log_dir: Path) -> tuple[str, Path]:
    """``rev``'s short commit id, and pushsvc's source at it extracted under
    ``log_dir`` (``git archive``)."""
    commit = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "--verify", f"{rev}^{{commit}}"],
        capture_output=True,
        text=True,
        check=False,
    )
    if commit.returncode != 0:
        raise SystemExit(f"--baseline {rev}: not a commit of {REPO}")
    short = commit.stdout.strip()
    tree = log_dir / "baseline"
    tree.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", "--format=tar", short, "pushsvc"],
        capture_output=True,
        check=True,
    )
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
    _baseline_stubs(short, tree)
    return short, tree


def _baseline_stubs(rev: str, tree: Path) -> None:
    """Revisions before the stubs moved to ``pushsvc_client.v1`` import them from
    ``pushsvc.v1``, generated at install time and not in git: generate them from
    that revision's ``protos/`` (with the bench venv's grpcio-tools)."""
    imports_v1 = subprocess.run(
        ["grep", "-rlq", "from pushsvc.v1 import", str(tree / "pushsvc")], check=False
    )
    if imports_v1.returncode != 0 or (tree / "pushsvc" / "v1" / "push_pb2.py").exists():
        return
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", "--format=tar", rev, "protos"],
        capture_output=True,
        check=True,
    )
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
    protos = sorted(
        str(p.relative_to(tree / "protos")) for p in tree.glob("protos/pushsvc/v1/*.proto")
    )
    subprocess.run(
        [
            str(PEER_VENV / "bin" / "python"),
            *("-m", "grpc_tools.protoc", "-Iprotos", "--python_out=.", "--grpc_python_out=."),
            *protos,
        ],
        cwd=tree,
        check=True,
    )
    (tree / "pushsvc" / "v1" / "__init__.py").touch()


def raise_nofile(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    if soft < need:
        raise SystemExit(
            f"the open-files limit is {soft}, and {need} connections need about {need + 500}: "
            f"raise it (as root: `ulimit -n {need + 1000}` in this shell, or LimitNOFILE= / "
            "/etc/security/limits.conf) or run with fewer --connections"
        )


def _setting(text: str) -> tuple[str, str]:
    """``--pushsvc-env``'s NAME=VALUE."""
    name, sep, value = text.partition("=")
    if not sep or not name.startswith("PUSHSVC_"):
        raise argparse.ArgumentTypeError(f"expected PUSHSVC_NAME=VALUE, got {text!r}")
    return name, value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.suite", description=(__doc__ or "").splitlines()[0]
    )
    p.add_argument(
        "--quick", action="store_true", help="small and short: 500 connections, 2 s phases"
    )
    p.add_argument("--record", action="store_true", help="append the results to bench/RESULTS.md")
    p.add_argument("--connections", type=int, help="WebSocket connections per server (10,000)")
    p.add_argument("--duration", type=float, help="seconds per throughput measurement (10)")
    p.add_argument("--rounds", type=int, help="single broadcasts timed one by one (5)")
    p.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="run every server this many times, in turn, and keep each measure's best",
    )
    p.add_argument(
        "--window", type=int, default=4, help="broadcasts not yet fully delivered, at most"
    )
    p.add_argument("--concurrency", type=int, default=64, help="one-message calls in flight")
    p.add_argument("--batch", type=int, default=100, help="messages per batch call")
    p.add_argument("--batch-concurrency", type=int, default=4, help="batch calls in flight")
    p.add_argument("--streams", type=int, default=1, help="PushStream streams")
    p.add_argument(
        "--stream-window", type=int, default=256, help="requests ahead of answers per stream"
    )
    p.add_argument(
        "--max-inflight", type=int, default=5000, help="messages sent but not received, at most"
    )
    p.add_argument("--connect-concurrency", type=int, default=100, help="handshakes in flight")
    p.add_argument("--connect-deadline", type=float, default=300.0)
    p.add_argument(
        "--no-paced", dest="paced", action="store_false", help="skip the half-rate latency runs"
    )
    p.add_argument(
        "--mongo-connections", type=int, help="connections for the MongoDB-wire node (100)"
    )
    p.add_argument("--mongo-duration", type=float, help="seconds per MongoDB-wire measurement (10)")
    p.add_argument(
        "--targets",
        default="pushsvc,bare,socketio,centrifugo,echo,mongo",
        help="comma-separated: pushsvc,bare,socketio,centrifugo,echo,mongo",
    )
    p.add_argument(
        "--scenarios",
        default="broadcast,unicast,connect,rss,stored",
        help="comma-separated: broadcast,unicast,connect,rss,stored (connect and rss always run "
        "for the WebSocket servers: every other scenario needs the connections)",
    )
    p.add_argument(
        "--echo-modes",
        default="gevent,threads,aio,handoff,post",
        help=(
            "grpcio echo servers to run (gevent,threads,aio,handoff,post,split; "
            "threads, aio and split may take +work; threads may take +spinUS, a busy "
            "loop of US microseconds per request)"
        ),
    )
    p.add_argument(
        "--socketio-modes",
        default="aiohttp,uvicorn,gevent",
        help="python-socketio deployments to run (aiohttp,uvicorn,gevent); ratios use the best",
    )
    p.add_argument(
        "--py-spy",
        default="",
        help="sample the pushsvc node with py-spy during these scenarios (comma-separated: "
        "connect,broadcast,unicast,stored) and print the top self-time frames",
    )
    p.add_argument(
        "--py-spy-gil",
        action="store_true",
        help="py-spy samples only the thread holding the GIL (where one core's time goes)",
    )
    p.add_argument("--py-spy-rate", type=int, default=200, help="py-spy samples per second")
    p.add_argument("--log-level", default="warning", help="pushsvc nodes' PUSHSVC_LOG_LEVEL")
    p.add_argument(
        "--mongo-env",
        metavar="NAME=VALUE",
        action="append",
        type=_setting,
        default=[],
        help="a PUSHSVC_ setting for this revision's MongoDB-wire node only (repeatable; not "
        "the baseline's), e.g. PUSHSVC_MONGO_COMMIT_RECORDS=true",
    )
    p.add_argument(
        "--pushsvc-env",
        metavar="NAME=VALUE",
        action="append",
        type=_setting,
        default=[],
        help="a PUSHSVC_ setting for the pushsvc nodes of the suite (repeatable), e.g. "
        "PUSHSVC_PING_INTERVAL=600",
    )
    p.add_argument(
        "--baseline",
        metavar="REV",
        help="also run pushsvc at this git revision (its own tree, same plan, in turn with "
        "the others) as the server 'pushsvc REV': a before-and-after from one run",
    )
    p.add_argument("--no-build", dest="build", action="store_false", help="skip bench/install.sh")
    p.add_argument("--keep", action="store_true", help="keep the logs and py-spy files")
    args = p.parse_args(argv)
    quick = args.quick
    args.connections = args.connections or (500 if quick else 10_000)
    args.duration = args.duration or (2.0 if quick else 10.0)
    args.rounds = args.rounds or (3 if quick else 5)
    args.mongo_connections = args.mongo_connections or (50 if quick else 100)
    args.mongo_duration = args.mongo_duration or (3.0 if quick else 10.0)
    args.targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    args.socketio_modes = [m.strip() for m in args.socketio_modes.split(",") if m.strip()]
    for mode in args.socketio_modes:
        if mode not in ("aiohttp", "uvicorn", "gevent"):
            p.error(f"unknown python-socketio deployment {mode!r}")
    args.echo_modes = [m.strip() for m in args.echo_modes.split(",") if m.strip()]
    for mode in args.echo_modes:
        base, plus, extra = mode.partition("+")
        if base not in ECHO_MODES or (plus and not _echo_extra_ok(base, extra)):
            p.error(f"unknown grpcio echo mode {mode!r}")
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    args.py_spy = [s.strip() for s in args.py_spy.split(",") if s.strip()]
    if args.repeat < 1:
        p.error("--repeat must be at least 1")
    for scenario in args.py_spy:
        if scenario not in ("connect", "broadcast", "unicast", "stored"):
            p.error(f"--py-spy: unknown scenario {scenario!r}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    install_cleanup()
    raise_nofile(args.connections)
    if args.build:
        build(args)
    log_dir = Path(tempfile.mkdtemp(prefix="pushsvc-bench-"))
    print(f"logs in {log_dir}", flush=True)
    if args.baseline:  # named by its commit: HEAD or a branch moves on
        args.baseline, args.baseline_tree = baseline_tree(args.baseline, log_dir)
    else:
        args.baseline_tree = None
    started = time.monotonic()
    args.versions = versions()  # before the run: a commit made during it is not what ran
    try:
        runs = []
        for rep in range(args.repeat):
            if args.repeat > 1:
                print(f"=== round {rep + 1} of {args.repeat}", flush=True)
            runs.append(Suite(args, log_dir, rep).run())
        res = best_of(runs)
    except KeyboardInterrupt:
        print("interrupted: every process this run started has been stopped", file=sys.stderr)
        return 130
    minutes = (time.monotonic() - started) / 60
    text = report(res, args)
    print()
    print(text)
    print(f"\n(run took {minutes:.1f} min; logs in {log_dir})")
    if args.record:
        if args.targets == ["mongo"]:  # the MongoDB-wire node alone: its own connections
            title = f"pushsvc on the MongoDB wire: {args.mongo_connections:,} connections"
        else:
            title = f"Suite against the peers: {args.connections:,} connections"
        append_results(
            title.replace(":", " (--quick):", 1) if args.quick else title,
            describe(args, minutes) + "\n\n" + text,
            command=_command(),
            host=machine_line(),
        )
        print("appended to bench/RESULTS.md")
    if not args.keep and not args.py_spy:
        shutil.rmtree(log_dir, ignore_errors=True)
    return 0


def _command() -> str:
    return " ".join([".venv/bin/python", "-m", "bench.suite", *sys.argv[1:]])


def machine_line() -> str:
    from bench.common import machine

    go = subprocess.run(["go", "version"], capture_output=True, text=True).stdout.strip()
    return f"{machine()}, {go.removeprefix('go version ')}"


def _settings_line(what: str, env: list[tuple[str, str]]) -> str:
    """A line of the run's description naming ``env`` (none: no line)."""
    if not env:
        return ""
    return f"- {what}: " + ", ".join(f"`{k}={v}`" for k, v in env) + "\n"


def describe(args: argparse.Namespace, minutes: float) -> str:
    return (
        f"- versions: {args.versions}\n"
        f"- run took {minutes:.1f} min\n"
        + _settings_line("pushsvc's settings besides the suite's", args.pushsvc_env)
        + _settings_line(
            "the MongoDB-wire node's settings besides the suite's (not the baseline's)",
            args.mongo_env,
        )
        + (
            f"- `pushsvc {args.baseline}`: pushsvc's source at {args.baseline} (`--baseline`), "
            "run with the same plan in the same rounds: the before beside the after\n"
            if args.baseline
            else ""
        )
        + f"- servers pinned to core {SERVER_CORE}, the Go load generator to core {LOADGEN_CORE} "
        f"(`taskset`); FerretDB and the round-trip proxy on core {LOADGEN_CORE}; Centrifugo with "
        f"GOMAXPROCS=1; {os.cpu_count()} cores shared with other work, so absolute numbers are "
        "noisy: compare the ratios, which come from this run\n"
        + (
            f"- best of {args.repeat} rounds (every server in turn, each round starting one "
            "server further on): each measure's highest rate and smallest KiB per connection\n"
            if args.repeat > 1
            else ""
        )
        + f"- {args.duration:g} s per throughput measurement; {args.rounds} single broadcasts, "
        "then "
        f"sustained with at most {args.window} broadcasts undelivered (the better of one "
        f"publish call at a time and {args.window} in flight); one-message calls "
        f"{args.concurrency} in flight, batches of {args.batch} "
        f"({args.batch_concurrency} in flight), "
        f"{args.streams} stream(s) {args.stream_window} requests ahead; at most "
        f"{args.max_inflight:,} messages sent but not yet received; ~100-byte JSON payloads; "
        f"{args.connect_concurrency} handshakes in flight; python-socketio deployments: "
        f"{', '.join(args.socketio_modes)} (ratios against the best of them per measure); "
        f"pushsvc log level {args.log_level}\n"
        "- latency: from the load generator's send to its receipt of the frame (echo: of the "
        'answer); "half-rate": the same mode paced at half its measured msgs/s; server CPU '
        'from /proc, per frame or message received; "core %": the share of one core the server '
        "and the load generator used over the measurement (well under 100 % on a saturated "
        "measure: other work had the core)"
    )


if __name__ == "__main__":
    sys.exit(main())
