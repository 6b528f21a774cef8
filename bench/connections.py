"""Connections per node: memory per connection, connect rate, and one-message fan-out.

Starts one pushsvc node on the embedded store, opens N WebSocket connections
(each its own user with its own token) from this process, and measures:

- the node's RSS before and after (VmRSS) → bytes per connection;
- connects per second (upgrade + welcome frame received), and node CPU per connect;
- node CPU while the N connections sit idle (pings every ping_interval);
- one message pushed to every user (Push calls of 1,000 user_ids, all in flight
  at once): time until every connection has its frame, and node CPU meanwhile.

Then does the same against ``bench/peer_server.py`` (bare gevent-websocket, no
auth, no store; fan-out by ``POST /fanout``), the floor on this machine, and
prints both side by side; ``--record`` appends the table to bench/RESULTS.md.

    .venv/bin/python -m bench.connections --connections 5000 --record
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from bench.common import (
    REPO,
    append_results,
    cpu_seconds,
    percentile,
    raise_nofile,
    rss_bytes,
    slab_bytes,
    table,
)
from bench.ferretdb import FerretDB
from bench.nodeproc import API_KEY, CLUSTER_KEY, JWT_SECRET, NodeProcess, free_port
from bench.wsload import OP_TEXT, WsConn, close_all, connect_many
from pushsvc.auth import mint_token
from pushsvc_client.v1 import push_pb2, push_pb2_grpc

AUTH = (("authorization", f"Bearer {API_KEY}"),)
PAYLOAD = json.dumps(
    {"title": "bench", "body": "fan-out of one message to every connection", "n": 1},
    separators=(",", ":"),
).encode()
BATCH = 1000  # user_ids per Push: the contract's maximum


@dataclass
class Round:
    """One fan-out: a message to every connected user."""

    delivered: int = 0
    seconds: float = 0.0  # call → last frame received
    cpu: float = 0.0  # node CPU over the same span
    cpu_db: float = 0.0  # database server CPU over the same span
    rpc_seconds: float = 0.0  # call → the Push calls (or POST) answered
    latencies: list[float] = field(default_factory=list)


@dataclass
class Result:
    name: str
    target: int
    connected: int = 0
    errors: list[str] = field(default_factory=list)
    rss_before: int = 0
    rss_after: int = 0
    rss_after_push: int = 0
    extra: bool = False  # a database server's CPU was measured
    slab_delta: int = 0  # host kernel slab growth while N connections were opened
    connect_seconds: float = 0.0
    connect_cpu: float = 0.0
    connect_cpu_db: float = 0.0
    idle_seconds: float = 0.0
    idle_cpu: float = 0.0
    rounds: list[Round] = field(default_factory=list)
    frame_bytes: int = 0
    loadgen_cpu: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def bytes_per_conn(self) -> float:
        return (self.rss_after - self.rss_before) / self.connected if self.connected else 0.0

    @property
    def connect_rate(self) -> float:
        return self.connected / self.connect_seconds if self.connect_seconds else 0.0

    @property
    def median_round(self) -> Round:
        """The round with the median delivery time (the middle one of an odd count)."""
        if not self.rounds:
            return Round()
        ordered = sorted(self.rounds, key=lambda r: r.seconds)
        return ordered[(len(ordered) - 1) // 2]


class AppPinger:
    """Each connection sends {"type":"ping"} every ``interval`` s, as the browser client does."""

    FRAME = b'{"type":"ping"}'

    def __init__(self, conns: list[WsConn], interval: float) -> None:
        self.interval = interval
        self.loop = asyncio.get_running_loop()
        self.handles = {
            c.index: self.loop.call_later(random.uniform(0, interval), self._ping, c) for c in conns
        }

    def _ping(self, conn: WsConn) -> None:
        conn.send(OP_TEXT, self.FRAME)
        self.handles[conn.index] = self.loop.call_later(self.interval, self._ping, conn)

    def stop(self) -> None:
        for handle in self.handles.values():
            handle.cancel()


class Profiler:
    """py-spy sampling one phase of a run into a collapsed-stack file (``--profile``)."""

    def __init__(self, prefix: str | None, pid: int, phase: str) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        if not prefix:
            return
        self.proc = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "py-spy"),
                "record",
                "--pid",
                str(pid),
                "--rate",
                "200",
                "--format",
                "raw",
                "--threads",
                "-o",
                f"{prefix}-{phase}.txt",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(0.5)  # let it attach

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGINT)
            self.proc.wait(30)


class Target:
    """A server under test: start, fan out one frame to everyone, stop."""

    name = ""
    pid = 0
    extra_pid = 0  # a database server whose CPU is counted too (FerretDB)
    ws_port = 0
    log_path: Path | None = None

    def start(self) -> None: ...

    def user(self, i: int) -> str:
        return f"peer-{i}"

    def token(self, i: int) -> str | None:
        return None

    async def warm_up(self) -> None: ...

    async def fan_out(self, users: list[str]) -> None: ...

    def stop(self) -> None: ...


class PushsvcTarget(Target):
    name = "pushsvc (embedded store)"

    def __init__(self, workdir: Path, run_id: str, log_level: str, mongo: bool = False) -> None:
        env = {"PUSHSVC_LOG_LEVEL": log_level, "PUSHSVC_NODE_ID": f"bench-{run_id}"}
        self.db: FerretDB | None = None
        if mongo:
            self.name = "pushsvc (MongoDB wire: FerretDB)"
            self.db = FerretDB()
            env.update(
                PUSHSVC_MONGO_URI=self.db.uri,
                PUSHSVC_MONGO_DB=f"bench_{run_id}",
                PUSHSVC_CLUSTER_KEY=CLUSTER_KEY,
            )
        self.node = NodeProcess(workdir / "node", env)
        self.run_id = run_id
        self.batch = BATCH
        self.channel: grpc.aio.Channel | None = None

    def start(self) -> None:
        if self.db is not None:
            self.db.start()
            assert self.db.proc is not None
            self.extra_pid = self.db.proc.pid
        self.node.start()
        assert self.node.proc is not None
        self.pid = self.node.proc.pid
        self.ws_port = self.node.ws_port
        self.log_path = self.node.log_path

    def user(self, i: int) -> str:
        return f"c{self.run_id}-{i}"

    def token(self, i: int) -> str | None:
        return mint_token(JWT_SECRET, self.user(i), ttl=3600)

    def _stub(self) -> push_pb2_grpc.PushServiceStub:
        if self.channel is None:
            self.channel = grpc.aio.insecure_channel(self.node.grpc_addr)
        return push_pb2_grpc.PushServiceStub(self.channel)

    async def warm_up(self) -> None:
        # The first Push pays for lazy set-up; a user nobody is connected as.
        await self._stub().Push(
            push_pb2.PushRequest(user_ids=[f"warm-{self.run_id}"], payload=PAYLOAD),
            metadata=AUTH,
            timeout=30,
        )

    async def fan_out(self, users: list[str]) -> None:
        stub = self._stub()
        calls = [
            stub.Push(
                push_pb2.PushRequest(user_ids=users[i : i + self.batch], payload=PAYLOAD),
                metadata=AUTH,
                timeout=60,
            )
            for i in range(0, len(users), self.batch)
        ]
        await asyncio.gather(*calls)

    def stop(self) -> None:
        if self.node.proc is not None and self.node.proc.poll() is None:
            try:
                self.node.stop(timeout=30)
            except subprocess.TimeoutExpired:
                self.node.kill()
        if self.db is not None:
            self.db.cleanup()


class PeerTarget(Target):
    name = "peer (bare gevent-websocket)"

    def __init__(self, workdir: Path) -> None:
        self.ws_port = free_port()
        self.log_path = workdir / "peer.log"
        self.proc: subprocess.Popen[bytes] | None = None
        # The frame pushsvc sends for PAYLOAD, with a fixed id and seq.
        self.frame = (
            '{"type":"message","id":"0000000000000000000000000a","seq":1,'
            '"content_type":"application/json","data":' + PAYLOAD.decode() + "}"
        )

    def start(self) -> None:
        assert self.log_path is not None
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "bench.peer_server", "--port", str(self.ws_port)],
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.pid = self.proc.pid
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"peer server exited with {self.proc.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.ws_port), timeout=1):
                    return
            except OSError:
                time.sleep(0.05)  # polling a condition with a deadline
        raise TimeoutError("peer server did not start")

    def _post(self) -> dict[str, Any]:
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.ws_port}/fanout", data=self.frame.encode(), method="POST"
        )
        with urllib.request.urlopen(req, timeout=60) as resp:
            return dict(json.loads(resp.read()))

    async def warm_up(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self._post)

    async def fan_out(self, users: list[str]) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self._post)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


async def measure(target: Target, args: argparse.Namespace) -> Result:
    n = args.connections
    res = Result(target.name, n)
    target.start()
    res.extra = bool(target.extra_pid)
    try:
        await target.warm_up()
        await asyncio.sleep(args.settle)
        pid = target.pid
        res.rss_before = rss_bytes(pid)
        tokens = [target.token(i) for i in range(n)]
        users = [target.user(i) for i in range(n)]

        loop = asyncio.get_running_loop()
        arrivals: list[float] = []
        done: asyncio.Future[float] = loop.create_future()

        def on_text(conn: WsConn, payload: bytes, now: float) -> None:
            # Every text frame after the welcome is the current round's message,
            # but for the answers to application pings (--app-ping).
            if payload.startswith(b'{"type":"pong"'):
                return
            res.frame_bytes = len(payload)
            arrivals.append(now)
            if len(arrivals) >= res.connected and not done.done():
                done.set_result(now)

        profile = args.profile if isinstance(target, PushsvcTarget) else None
        prof = Profiler(profile, pid, "connect")
        slab0 = slab_bytes()
        lg0 = os.times()
        db_cpu = (lambda: cpu_seconds(target.extra_pid)) if target.extra_pid else (lambda: 0.0)
        db0 = db_cpu()
        cpu0 = cpu_seconds(pid)
        t0 = time.perf_counter()
        conns, res.errors = await connect_many(
            "127.0.0.1",
            target.ws_port,
            "/ws",
            tokens,
            concurrency=args.concurrency,
            on_text=on_text,
            deadline=args.connect_deadline,
        )
        res.connect_seconds = time.perf_counter() - t0
        res.connect_cpu = cpu_seconds(pid) - cpu0
        res.connect_cpu_db = db_cpu() - db0
        prof.stop()
        res.connected = len(conns)
        print(
            f"  {target.name}: {res.connected}/{n} connected in {res.connect_seconds:.2f}s"
            + (f", {len(res.errors)} errors, first: {res.errors[0]}" if res.errors else ""),
            flush=True,
        )
        try:
            await asyncio.sleep(args.settle)
            res.rss_after = rss_bytes(pid)
            res.slab_delta = slab_bytes() - slab0
            pinger = AppPinger(conns, args.app_ping) if args.app_ping else None
            cpu_i = cpu_seconds(pid)
            t_i = time.perf_counter()
            await asyncio.sleep(args.idle)
            res.idle_cpu = cpu_seconds(pid) - cpu_i
            res.idle_seconds = time.perf_counter() - t_i
            if pinger is not None:
                pinger.stop()

            connected_users = [users[c.index] for c in conns]
            prof = Profiler(profile, pid, "fanout")
            for _ in range(args.rounds):
                arrivals.clear()
                done = loop.create_future()
                rnd = Round()
                cpu_d = cpu_seconds(pid)
                db_d = db_cpu()
                t_d = time.perf_counter()
                try:
                    await target.fan_out(connected_users)
                except grpc.aio.AioRpcError as exc:
                    res.notes.append(f"a Push failed: {exc.code().name}: {exc.details()}"[:300])
                rnd.rpc_seconds = time.perf_counter() - t_d
                try:
                    rnd.seconds = await asyncio.wait_for(done, args.deliver_timeout) - t_d
                except TimeoutError:
                    rnd.seconds = time.perf_counter() - t_d
                    res.notes.append(f"delivery timed out after {args.deliver_timeout}s")
                rnd.cpu = cpu_seconds(pid) - cpu_d
                rnd.cpu_db = db_cpu() - db_d
                rnd.delivered = len(arrivals)
                rnd.latencies = [t - t_d for t in arrivals]
                res.rounds.append(rnd)
                await asyncio.sleep(1.0)
            prof.stop()
            await asyncio.sleep(1.0)
            res.rss_after_push = rss_bytes(pid)
            dropped = sum(1 for c in conns if c.closed.done())
            if dropped:
                res.notes.append(f"{dropped} connections closed by the server during the run")
        finally:
            await close_all(conns)
        lg1 = os.times()
        res.loadgen_cpu = (lg1.user + lg1.system) - (lg0.user + lg0.system)
    finally:
        target.stop()
    if target.log_path is not None and target.log_path.exists():
        text = target.log_path.read_text(errors="replace")
        bad = [ln for ln in text.splitlines() if "Traceback" in ln or " ERROR " in ln]
        if bad:
            res.notes.append(f"{len(bad)} error lines in the server log, first: {bad[0][:200]}")
    return res


def report(results: list[Result], args: argparse.Namespace) -> str:
    ms = 1000.0

    def row(label: str, fn: Callable[[Result], object]) -> list[object]:
        return [label, *(fn(r) for r in results)]

    rows = [
        row("connections opened", lambda r: f"{r.connected:,} / {r.target:,}"),
        row("RSS before (MiB)", lambda r: r.rss_before / 2**20),
        row("RSS with N connections (MiB)", lambda r: r.rss_after / 2**20),
        row("RSS per connection (KiB)", lambda r: r.bytes_per_conn / 1024),
        row(
            "host kernel slab per socket (KiB; 2N sockets, both ends here)",
            lambda r: r.slab_delta / (2 * r.connected) / 1024 if r.connected else float("nan"),
        ),
        row("connect rate (connects/s)", lambda r: r.connect_rate),
        row(
            "node CPU per connect (ms)",
            lambda r: r.connect_cpu / r.connected * ms if r.connected else float("nan"),
        ),
        row(
            "database CPU per connect (ms)",
            lambda r: r.connect_cpu_db / r.connected * ms if r.extra else "n/a",
        ),
        row(
            f"node CPU idle with N conns (% of a core, {args.idle:.0f} s"
            + (f", app ping every {args.app_ping:g} s)" if args.app_ping else ")"),
            lambda r: r.idle_cpu / r.idle_seconds * 100 if r.idle_seconds else float("nan"),
        ),
        row("fan-out: frame size (bytes)", lambda r: r.frame_bytes),
        row(
            "fan-out: frames received (each round)",
            lambda r: " ".join(f"{x.delivered:,}" for x in r.rounds) + f" / {r.connected:,}",
        ),
        row(
            "fan-out: all frames received, each round (ms)",
            lambda r: " ".join(f"{x.seconds * ms:.0f}" for x in r.rounds),
        ),
        row("fan-out, median round: all received (ms)", lambda r: r.median_round.seconds * ms),
        row(
            "fan-out, median round: Push/POST answered (ms)",
            lambda r: r.median_round.rpc_seconds * ms,
        ),
        row(
            "fan-out, median round: p50 frame arrival (ms)",
            lambda r: percentile(r.median_round.latencies, 50) * ms,
        ),
        row(
            "fan-out, median round: p99 frame arrival (ms)",
            lambda r: percentile(r.median_round.latencies, 99) * ms,
        ),
        row("fan-out, median round: node CPU (s)", lambda r: r.median_round.cpu),
        row(
            "fan-out, median round: database CPU (s)",
            lambda r: r.median_round.cpu_db if r.extra else "n/a",
        ),
        row(
            "fan-out: node CPU per frame, all rounds (µs)",
            lambda r: (
                sum(x.cpu for x in r.rounds) / max(1, sum(x.delivered for x in r.rounds)) * 1e6
            ),
        ),
        row(
            "fan-out, median round: frames/s",
            lambda r: (
                r.median_round.delivered / r.median_round.seconds
                if r.median_round.seconds
                else float("nan")
            ),
        ),
        row("RSS after fan-out (MiB)", lambda r: r.rss_after_push / 2**20),
        row("load generator CPU, whole run (s)", lambda r: r.loadgen_cpu),
    ]
    text = table(["measure", *(r.name for r in results)], rows)
    notes = [f"- {r.name}: {note}" for r in results for note in r.notes]
    if notes:
        text += "\n\nNotes:\n" + "\n".join(notes)
    return text


async def amain(args: argparse.Namespace) -> list[Result]:
    workdir = Path(tempfile.mkdtemp(prefix="pushsvc-bench-"))
    run_id = os.urandom(3).hex()
    results: list[Result] = []
    try:
        if "pushsvc" in args.targets:
            print(f"pushsvc: {args.connections} connections", flush=True)
            target = PushsvcTarget(workdir, run_id, args.log_level, args.mongo)
            target.batch = args.batch
            results.append(await measure(target, args))
        if "peer" in args.targets:
            print(f"peer: {args.connections} connections", flush=True)
            results.append(await measure(PeerTarget(workdir), args))
    finally:
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=5000)
    parser.add_argument(
        "--app-ping",
        type=float,
        default=0.0,
        help='during the idle window, each client sends {"type":"ping"} every N s (browser client)',
    )
    parser.add_argument("--batch", type=int, default=BATCH, help="user_ids per Push call")
    parser.add_argument("--rounds", type=int, default=3, help="fan-outs, one message each")
    parser.add_argument("--concurrency", type=int, default=200, help="handshakes in flight")
    parser.add_argument(
        "--idle",
        type=float,
        default=25.0,
        help="idle CPU window, seconds (default: one ping interval, every connection pinged once)",
    )
    parser.add_argument("--settle", type=float, default=2.0, help="pause before RSS readings")
    parser.add_argument("--connect-deadline", type=float, default=120.0)
    parser.add_argument("--deliver-timeout", type=float, default=60.0)
    parser.add_argument("--log-level", default="info", help="the node's PUSHSVC_LOG_LEVEL")
    parser.add_argument("--targets", default="pushsvc,peer", help="pushsvc,peer")
    parser.add_argument(
        "--mongo", action="store_true", help="run the pushsvc node on FerretDB (fleet mode)"
    )
    parser.add_argument("--record", action="store_true", help="append to bench/RESULTS.md")
    parser.add_argument(
        "--profile", help="py-spy the pushsvc node: PREFIX-connect.txt, PREFIX-fanout.txt"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    limit = raise_nofile()
    if limit < args.connections + 200:
        parser.error(f"open-files limit {limit} is too low for {args.connections} connections")
    results = asyncio.run(amain(args))
    text = report(results, args)
    print()
    print(text)
    if args.record:
        append_results(
            f"Connections per node: {args.connections:,} WebSocket connections",
            "One node, "
            + (
                "MongoDB wire store (FerretDB 1.24 on SQLite, same machine)"
                if args.mongo
                else "embedded store"
            )
            + f", log level {args.log_level}; load generator in one asyncio process (raw RFC 6455 "
            f"client, {args.concurrency} handshakes in flight); both on the same 2 cores. "
            f"Fan-out ({args.rounds} rounds): one message to every user (pushsvc: "
            f"concurrent Push calls of {args.batch:,} user_ids; peer: one POST /fanout), "
            "timed from the call to the last frame received.\n\n" + text,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
