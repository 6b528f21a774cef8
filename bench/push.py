"""Push latency and throughput through gRPC, on the embedded store and on MongoDB.

(a) latency: one user connected; K sequential ``Push`` calls, each waiting for
    its frame before the next → p50/p99 of the RPC and of end to end (push
    sent → frame received on the WebSocket).
(b) throughput: 100 users connected; ``PushStream`` of M messages (message i to
    user i mod 100) → messages/s from the first request to the last frame
    received, with per-user seq order checked on arrival.

Configurations: ``embedded`` (one node, SQLite) and ``mongo`` (FerretDB 1.24 on
SQLite, two nodes: users connect to node B, pushes go into node A, so every
message is forwarded A → B with NodeService.Deliver). Every phase has a
deadline; a phase that runs out reports what it measured and says so.

    .venv/bin/python -m bench.push --record
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from bench.common import append_results, cpu_seconds, percentile, raise_nofile, table
from bench.ferretdb import FerretDB
from bench.nodeproc import API_KEY, CLUSTER_KEY, JWT_SECRET, NodeProcess, free_port
from bench.wsload import WsConn, close_all, connect_many
from pushsvc.auth import mint_token
from pushsvc_client.v1 import push_pb2, push_pb2_grpc

AUTH = (("authorization", f"Bearer {API_KEY}"),)
MS = 1000.0


@dataclass
class Outcome:
    name: str
    # (a)
    lat_count: int = 0
    rpc: list[float] = field(default_factory=list)
    e2e: list[float] = field(default_factory=list)
    lat_seconds: float = 0.0
    # (b)
    messages: int = 0
    streams: int = 0
    responses: int = 0
    stream_errors: int = 0
    frames: int = 0
    order_errors: int = 0
    responses_seconds: float = 0.0
    frames_seconds: float = 0.0
    in_stream: list[float] = field(default_factory=list)
    arrivals: list[float] = field(default_factory=list)  # seconds after the first request
    cpu: dict[str, float] = field(default_factory=dict)  # process → CPU s during (b)
    db_lat: dict[str, int] = field(default_factory=dict)  # DB commands during (a)
    db_tp: dict[str, int] = field(default_factory=dict)  # DB commands during (b)
    notes: list[str] = field(default_factory=list)


class MeteredFerretDB(FerretDB):
    """FerretDB with its debug listener on, to count the commands it serves."""

    def __init__(self) -> None:
        super().__init__()
        self.debug_port = free_port()

    def command(self) -> list[str]:
        return [
            f"--debug-addr=127.0.0.1:{self.debug_port}" if a.startswith("--debug-addr") else a
            for a in super().command()
        ]

    def requests(self) -> dict[str, int]:
        """ferretdb_client_requests_total by command."""
        url = f"http://127.0.0.1:{self.debug_port}/debug/metrics"
        with urllib.request.urlopen(url, timeout=10) as resp:
            text = resp.read().decode()
        out: dict[str, int] = {}
        for line in text.splitlines():
            if line.startswith("ferretdb_client_requests_total{"):
                labels, _, value = line.rpartition(" ")
                command = labels.split('command="', 1)[1].split('"', 1)[0]
                out[command] = out.get(command, 0) + int(float(value))
        return out


class Setup:
    """Servers of one configuration: where users connect, where pushes go."""

    name = ""
    ingress: NodeProcess
    users_node: NodeProcess
    pids: dict[str, int]

    def start(self) -> None: ...

    def db_requests(self) -> dict[str, int]:
        return {}

    def stop(self) -> None: ...

    def logs(self) -> list[Path]:
        return []


def _stop_node(node: NodeProcess) -> None:
    if node.proc is not None and node.proc.poll() is None:
        try:
            node.stop(timeout=30)
        except subprocess.TimeoutExpired:
            node.kill()


class Embedded(Setup):
    name = "embedded store, 1 node"

    def __init__(self, workdir: Path, log_level: str) -> None:
        self.node = NodeProcess(workdir / "embedded", {"PUSHSVC_LOG_LEVEL": log_level})
        self.ingress = self.users_node = self.node

    def start(self) -> None:
        self.node.start()
        assert self.node.proc is not None
        self.pids = {"node": self.node.proc.pid}

    def stop(self) -> None:
        _stop_node(self.node)

    def logs(self) -> list[Path]:
        return [self.node.log_path]


class Mongo(Setup):
    name = "MongoDB wire (FerretDB), 2 nodes, A→B"

    def __init__(self, workdir: Path, log_level: str, run_id: str) -> None:
        self.db = MeteredFerretDB()
        env = {
            "PUSHSVC_MONGO_URI": self.db.uri,
            "PUSHSVC_MONGO_DB": f"bench_{run_id}",
            "PUSHSVC_CLUSTER_KEY": CLUSTER_KEY,
            "PUSHSVC_LOG_LEVEL": log_level,
        }
        self.a = NodeProcess(workdir / "node-a", {**env, "PUSHSVC_NODE_ID": f"a-{run_id}"})
        self.b = NodeProcess(workdir / "node-b", {**env, "PUSHSVC_NODE_ID": f"b-{run_id}"})
        self.ingress, self.users_node = self.a, self.b

    def start(self) -> None:
        self.db.start()
        self.a.start()
        self.b.start()
        assert self.a.proc is not None and self.b.proc is not None and self.db.proc is not None
        self.pids = {
            "node A": self.a.proc.pid,
            "node B": self.b.proc.pid,
            "FerretDB": self.db.proc.pid,
        }

    def stop(self) -> None:
        _stop_node(self.a)
        _stop_node(self.b)
        self.db.cleanup()

    def logs(self) -> list[Path]:
        return [self.a.log_path, self.b.log_path]

    def db_requests(self) -> dict[str, int]:
        return self.db.requests()


class Receiver:
    """Parses message frames: per-user seq order, and a hook for one awaited index."""

    def __init__(self) -> None:
        self.last_seq: dict[int, int] = {}
        self.order_errors = 0
        self.count = 0
        self.arrival: dict[int, float] = {}
        self.waiting: tuple[int, asyncio.Future[float]] | None = None
        self.all_in: asyncio.Future[float] | None = None
        self.expect = 0

    def on_text(self, conn: WsConn, payload: bytes, now: float) -> None:
        frame = json.loads(payload)
        if frame.get("type") != "message":
            return
        seq = int(frame["seq"])
        if seq != self.last_seq.get(conn.index, 0) + 1:
            self.order_errors += 1
        self.last_seq[conn.index] = seq
        i = int(frame["data"]["i"])
        self.arrival[i] = now
        self.count += 1
        if self.waiting is not None and self.waiting[0] == i and not self.waiting[1].done():
            self.waiting[1].set_result(now)
        if self.all_in is not None and self.count >= self.expect and not self.all_in.done():
            self.all_in.set_result(now)


async def wait_routed(
    stub: push_pb2_grpc.PushServiceStub, users: list[str], timeout: float
) -> None:
    """Until the ingress node sees every user online (presence written by the users' node)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        resp = await stub.GetPresence(
            push_pb2.GetPresenceRequest(user_ids=users), metadata=AUTH, timeout=10
        )
        if all(p.online for p in resp.presence):
            return
        await asyncio.sleep(0.1)  # polling a condition with a deadline
    raise TimeoutError("users not visible as online from the ingress node")


async def settle(setup: Setup, limit: float = 30.0) -> None:
    """Let the connections' catch-up reads finish before a phase starts.

    Without MongoDB: a fixed second. With it: until FerretDB has served no
    command but the nodes' heartbeats for a second (bounded by ``limit``).
    """
    if not setup.db_requests():
        await asyncio.sleep(1.0)
        return
    deadline = time.monotonic() + limit
    last = setup.db_requests()
    while time.monotonic() < deadline:
        await asyncio.sleep(1.0)  # polling a condition with a deadline
        now = setup.db_requests()
        if now.get("find", 0) == last.get("find", 0):
            return
        last = now


async def connect_users(node: NodeProcess, users: list[str], recv: Receiver) -> list[WsConn]:
    tokens: list[str | None] = [mint_token(JWT_SECRET, u, ttl=3600) for u in users]
    conns, errors = await connect_many(
        "127.0.0.1", node.ws_port, "/ws", tokens, concurrency=50, on_text=recv.on_text
    )
    if errors:
        raise RuntimeError(f"{len(errors)} connections failed: {errors[0]}")
    return conns


async def latency(
    stub: push_pb2_grpc.PushServiceStub,
    setup: Setup,
    out: Outcome,
    args: argparse.Namespace,
    run: str,
) -> None:
    user = f"lat-{run}"
    recv = Receiver()
    conns = await connect_users(setup.users_node, [user], recv)
    try:
        await wait_routed(stub, [user], 20)
        await settle(setup)
        deadline = time.monotonic() + args.phase_deadline
        db0: dict[str, int] = {}
        t_start = time.perf_counter()
        for i in range(args.warmup + args.pushes):
            if time.monotonic() > deadline:
                out.notes.append(f"latency phase stopped at its deadline after {i} pushes")
                break
            fut: asyncio.Future[float] = asyncio.get_running_loop().create_future()
            recv.waiting = (i, fut)
            payload = json.dumps({"i": i}).encode()
            t0 = time.perf_counter()
            await stub.Push(
                push_pb2.PushRequest(user_ids=[user], payload=payload), metadata=AUTH, timeout=30
            )
            t1 = time.perf_counter()
            t2 = await asyncio.wait_for(fut, 30)
            if i == args.warmup - 1:
                db0 = setup.db_requests()
            if i == args.warmup:
                t_start = t0
            if i >= args.warmup:
                out.rpc.append(t1 - t0)
                out.e2e.append(t2 - t0)
        out.lat_seconds = time.perf_counter() - t_start
        out.lat_count = len(out.e2e)
        out.db_lat = _delta(db0, setup.db_requests())
        out.order_errors += recv.order_errors
    finally:
        await close_all(conns)


async def throughput(
    stub: push_pb2_grpc.PushServiceStub,
    setup: Setup,
    out: Outcome,
    args: argparse.Namespace,
    run: str,
) -> None:
    users = [f"tp-{run}-{u}" for u in range(args.users)]
    recv = Receiver()
    conns = await connect_users(setup.users_node, users, recv)
    loop = asyncio.get_running_loop()
    try:
        await wait_routed(stub, users, 20)
        await settle(setup)
        m = args.messages
        recv.expect = m
        recv.all_in = loop.create_future()
        sent_at: dict[int, float] = {}
        out.messages, out.streams = m, args.streams

        async def requests(stream: int) -> AsyncIterator[push_pb2.PushRequest]:
            for i in range(stream, m, args.streams):
                sent_at[i] = time.perf_counter()
                yield push_pb2.PushRequest(
                    user_ids=[users[i % len(users)]], payload=json.dumps({"i": i}).encode()
                )

        async def one_stream(stream: int) -> None:
            call = stub.PushStream(requests(stream), metadata=AUTH, timeout=args.phase_deadline)
            async for resp in call:
                out.responses += 1
                if resp.HasField("error"):
                    out.stream_errors += 1

        db0 = setup.db_requests()
        cpu0 = {k: cpu_seconds(pid) for k, pid in setup.pids.items()}
        t0 = time.perf_counter()
        try:
            await asyncio.wait_for(
                asyncio.gather(*(one_stream(s) for s in range(args.streams))), args.phase_deadline
            )
        except (TimeoutError, grpc.aio.AioRpcError) as exc:
            out.notes.append(f"stream ended early: {type(exc).__name__} {exc}"[:300])
        out.responses_seconds = time.perf_counter() - t0
        try:
            remaining = max(1.0, args.phase_deadline - out.responses_seconds)
            t_last = await asyncio.wait_for(recv.all_in, remaining)
        except TimeoutError:
            t_last = time.perf_counter()
            out.notes.append(f"only {recv.count} of {m} frames arrived before the deadline")
        out.frames_seconds = t_last - t0
        out.cpu = {k: cpu_seconds(pid) - cpu0[k] for k, pid in setup.pids.items()}
        out.db_tp = _delta(db0, setup.db_requests())
        out.frames = recv.count
        out.order_errors += recv.order_errors
        out.in_stream = [recv.arrival[i] - sent_at[i] for i in recv.arrival if i in sent_at]
        out.arrivals = sorted(t - t0 for t in recv.arrival.values())
    finally:
        await close_all(conns)


def _delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    skip = {"ismaster", "isMaster", "hello", "ping", "endSessions", "buildInfo"}
    return {
        k: after[k] - before.get(k, 0)
        for k in sorted(after)
        if k not in skip and after[k] - before.get(k, 0)
    }


def per_op(ops: dict[str, int], n: int) -> str:
    """DB commands per message, as 'insert 2, find 2.1, …'."""
    if not ops or not n:
        return "n/a"
    return ", ".join(f"{k} {v / n:.2g}" for k, v in ops.items())


async def run_setup(setup: Setup, args: argparse.Namespace) -> Outcome:
    out = Outcome(setup.name)
    run = os.urandom(3).hex()
    setup.start()
    try:
        async with grpc.aio.insecure_channel(setup.ingress.grpc_addr) as channel:
            stub = push_pb2_grpc.PushServiceStub(channel)
            if "latency" in args.phases:
                print(f"  {setup.name}: latency, {args.pushes} sequential pushes", flush=True)
                await latency(stub, setup, out, args, run)
            if "throughput" in args.phases:
                print(
                    f"  {setup.name}: PushStream of {args.messages} to {args.users} users",
                    flush=True,
                )
                await throughput(stub, setup, out, args, run)
    finally:
        setup.stop()
    for log in setup.logs():
        if log.exists():
            bad = [
                ln
                for ln in log.read_text(errors="replace").splitlines()
                if "Traceback" in ln or " ERROR " in ln
            ]
            if bad:
                out.notes.append(f"{len(bad)} error lines in {log.name}, first: {bad[0][:200]}")
    return out


def window_rate(arrivals: list[float], first: bool) -> float:
    """Frames per second over the first tenth of the frames received (from the first
    request) or over the last tenth: how the rate changes as the inbox grows."""
    window = len(arrivals) // 10
    if window < 10:
        return float("nan")
    if first:
        return window / arrivals[window - 1]
    return window / (arrivals[-1] - arrivals[-window - 1])


def report(outs: list[Outcome], args: argparse.Namespace) -> str:
    def row(label: str, fn: object) -> list[object]:
        assert callable(fn)
        return [label, *(fn(o) for o in outs)]

    def per_msg(o: Outcome, key: str) -> object:
        return o.cpu[key] / o.frames * MS if key in o.cpu and o.frames else "n/a"

    rows = [
        row("(a) sequential pushes measured", lambda o: o.lat_count),
        row("(a) Push RPC p50 (ms)", lambda o: percentile(o.rpc, 50) * MS),
        row("(a) Push RPC p99 (ms)", lambda o: percentile(o.rpc, 99) * MS),
        row("(a) end to end p50: sent → frame (ms)", lambda o: percentile(o.e2e, 50) * MS),
        row("(a) end to end p99 (ms)", lambda o: percentile(o.e2e, 99) * MS),
        row("(a) end to end max (ms)", lambda o: max(o.e2e, default=float("nan")) * MS),
        row(
            "(a) sequential pushes/s",
            lambda o: o.lat_count / o.lat_seconds if o.lat_seconds else float("nan"),
        ),
        row("(a) DB commands per push (FerretDB count)", lambda o: per_op(o.db_lat, o.lat_count)),
        row("(b) messages / streams", lambda o: f"{o.messages:,} / {o.streams}"),
        row("(b) responses (errors)", lambda o: f"{o.responses:,} ({o.stream_errors})"),
        row("(b) frames received", lambda o: o.frames),
        row("(b) seq order violations", lambda o: o.order_errors),
        row("(b) all responses in (s)", lambda o: o.responses_seconds),
        row("(b) all frames in (s)", lambda o: o.frames_seconds),
        row(
            "(b) throughput, msgs/s (frames / time)",
            lambda o: o.frames / o.frames_seconds if o.frames_seconds else float("nan"),
        ),
        row(
            "(b) msgs/s over the first 10% of frames", lambda o: window_rate(o.arrivals, first=True)
        ),
        row(
            "(b) msgs/s over the last 10% of frames", lambda o: window_rate(o.arrivals, first=False)
        ),
        row(
            "(b) in-stream latency p50 (ms, queueing incl.)",
            lambda o: percentile(o.in_stream, 50) * MS,
        ),
        row("(b) in-stream latency p99 (ms)", lambda o: percentile(o.in_stream, 99) * MS),
        row(
            "(b) CPU per message: ingress node (ms)",
            lambda o: per_msg(o, "node") if "node" in o.cpu else per_msg(o, "node A"),
        ),
        row("(b) CPU per message: users' node B (ms)", lambda o: per_msg(o, "node B")),
        row("(b) CPU per message: FerretDB (ms)", lambda o: per_msg(o, "FerretDB")),
        row("(b) DB commands per message (FerretDB count)", lambda o: per_op(o.db_tp, o.frames)),
    ]
    text = table(["measure", *(o.name for o in outs)], rows)
    notes = [f"- {o.name}: {n}" for o in outs for n in o.notes]
    if notes:
        text += "\n\nNotes:\n" + "\n".join(notes)
    return text


async def amain(args: argparse.Namespace) -> list[Outcome]:
    workdir = Path(tempfile.mkdtemp(prefix="pushsvc-bench-push-"))
    outs = []
    try:
        for name in args.stores.split(","):
            run_id = os.urandom(3).hex()
            setup: Setup = (
                Embedded(workdir, args.log_level)
                if name == "embedded"
                else Mongo(workdir, args.log_level, run_id)
            )
            print(setup.name, flush=True)
            t0 = time.monotonic()
            outs.append(await run_setup(setup, args))
            print(f"  done in {time.monotonic() - t0:.0f}s", flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return outs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stores", default="embedded,mongo", help="embedded,mongo")
    parser.add_argument("--phases", default="latency,throughput")
    parser.add_argument("--pushes", type=int, default=1000, help="(a) sequential pushes")
    parser.add_argument("--warmup", type=int, default=20, help="(a) pushes not counted")
    parser.add_argument("--messages", type=int, default=10_000, help="(b) messages")
    parser.add_argument("--users", type=int, default=100, help="(b) connected users")
    parser.add_argument("--streams", type=int, default=1, help="(b) concurrent PushStreams")
    parser.add_argument("--phase-deadline", type=float, default=45.0, help="seconds per phase")
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--record", action="store_true", help="append to bench/RESULTS.md")
    args = parser.parse_args()
    raise_nofile()
    outs = asyncio.run(amain(args))
    text = report(outs, args)
    print()
    print(text)
    if args.record:
        append_results(
            "Push latency and throughput through gRPC",
            f"(a) one user connected, {args.pushes} sequential Push calls (after {args.warmup} "
            f"warm-up), each waiting for its frame. (b) {args.messages:,} messages in "
            f"{args.streams} PushStream(s), message i to user i mod {args.users}, "
            f"{args.users} users connected; timed from the first request to the last frame. "
            "MongoDB: FerretDB 1.24 (SQLite backend) on the same machine, users on node B, "
            "pushes into node A (every message forwarded with NodeService.Deliver). Node log "
            f"level {args.log_level}; servers and load generator share the 2 cores.\n\n" + text,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
