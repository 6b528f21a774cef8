"""Slowloris soak: 1,000 slow handshakes and 1,000 legitimate clients on one node.

Starts one pushsvc node (embedded store, default budgets: handshake_timeout 10 s)
and runs ``--rounds`` rounds of:

1. ``--slow`` sockets that hold a handshake open: most send a request head a
   header line at a time, one line every ``--drip`` seconds, the rest
   (``--silent``) send nothing at all;
2. while they hang on, ``--clients`` legitimate WebSocket clients (each its own
   user and token) connect, and one message is pushed to every one of them
   (Push calls of 1,000 user_ids);
3. every slow socket must be closed by the node at its deadline (never before),
   every legitimate client must be welcomed and get its message;
4. all clients leave; the node's RSS and open file descriptors are measured once
   its connection gauge is back to zero.

The first round warms the node up (its RSS after it is the baseline); the later
rounds show whether memory or descriptors are left behind. ``--record``
appends the table to bench/RESULTS.md.

    .venv/bin/python -m bench.slowloris --record
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from bench.common import append_results, percentile, raise_nofile, rss_bytes, table
from bench.nodeproc import API_KEY, JWT_SECRET, NodeProcess
from bench.wsload import WsConn, connect
from pushsvc.auth import mint_token
from pushsvc_client.v1 import push_pb2, push_pb2_grpc

OP_TEXT = 0x1
AUTH = (("authorization", f"Bearer {API_KEY}"),)
BATCH = 1000


class Node(NodeProcess):
    """A node with the soak's views of it: its metrics and its descriptors."""

    def metric(self, name: str) -> float:
        _, body = self.admin_get("/metrics")
        match = re.search(rf"^{re.escape(name)} (\S+)$", body, re.M)
        return float(match[1]) if match else float("nan")

    def rejected(self, status: str) -> float:
        _, body = self.admin_get("/metrics")
        pattern = rf'^pushsvc_handshakes_rejected_total{{status="{status}"}} (\S+)$'
        match = re.search(pattern, body, re.M)
        return float(match[1]) if match else 0.0

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))


def _same(conn: SlowConn) -> SlowConn:
    """The protocol factory of one connection: the object already made."""
    return conn


class SlowConn(asyncio.Protocol):
    """A handshake that never completes: the node must close it at its deadline."""

    def __init__(self, head: bytes, silent: bool) -> None:
        self.head = head
        self.silent = silent
        self.sent = 0
        self.transport: asyncio.Transport | None = None
        self.opened = 0.0
        self.closed_at: float | None = None
        self.answer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        if not self.silent:
            self.drip()

    def drip(self) -> None:
        if self.transport is None or self.transport.is_closing() or self.silent:
            return
        # The request line first, then one more header line each time: never the end.
        line_end = self.head.find(b"\n", self.sent) + 1
        if line_end <= 0:
            line_end = len(self.head)
        self.transport.write(self.head[self.sent : line_end])
        self.sent = line_end

    def data_received(self, data: bytes) -> None:
        self.answer += data

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed_at = time.monotonic()


@dataclass
class RoundResult:
    slow: list[SlowConn] = field(default_factory=list)
    clients_welcomed: int = 0
    clients_failed: int = 0
    connect_seconds: list[float] = field(default_factory=list)
    delivered: int = 0
    legit_done_at: float = 0.0  # monotonic: the last legitimate message received
    slow_open_while_legit: int = 0  # slow sockets still open when the legit work ended
    rss_peak: int = 0
    rss_after: int = 0
    fds_after: int = 0


async def run_round(node: Node, args: argparse.Namespace, round_no: int) -> RoundResult:
    loop = asyncio.get_running_loop()
    result = RoundResult()
    head = (
        f"GET /ws?token={mint_token(JWT_SECRET, 'slow', 3600)} HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{node.ws_port}\r\n"
    ).encode() + b"".join(b"X-Slow-%d: 1\r\n" % i for i in range(10_000))
    # 1. the slow sockets, opened as fast as the node accepts them
    for i in range(args.slow):
        conn = SlowConn(head, silent=i < args.silent)
        conn.opened = time.monotonic()  # before the node can have accepted it
        await loop.create_connection(functools.partial(_same, conn), "127.0.0.1", node.ws_port)
        result.slow.append(conn)

    async def dripper() -> None:
        while any(c.closed_at is None for c in result.slow):
            for c in result.slow:
                c.drip()
            await asyncio.sleep(args.drip)  # the attacker's pace, not synchronisation

    drip_task = asyncio.create_task(dripper())
    # 2. the legitimate clients, while the slow sockets hang on
    # The same users every round (unless --new-users): what a round leaves behind is
    # then the node's, not new users' stored messages and caches.
    users = [f"r{round_no if args.new_users else 0}-u{i}" for i in range(args.clients)]
    received: dict[str, float] = {}

    def on_text(conn: WsConn, payload: bytes, now: float) -> None:
        frame = json.loads(payload)
        if frame.get("type") == "message":
            received[users[conn.index]] = now
            # Ack it, as the protocol asks of a client: what a round leaves behind
            # is then the node's own, not a backlog replayed to each next round.
            if "seq" in frame:  # online-only messages have none
                conn.send(OP_TEXT, json.dumps({"type": "ack", "seq": frame["seq"]}).encode())

    async def one(i: int) -> WsConn | None:
        started = time.perf_counter()
        try:
            conn = await connect(
                "127.0.0.1",
                node.ws_port,
                "/ws",
                mint_token(JWT_SECRET, users[i], 3600),
                i,
                on_text=on_text,
                timeout=60,
            )
        except (TimeoutError, OSError):
            result.clients_failed += 1
            return None
        result.connect_seconds.append(time.perf_counter() - started)
        return conn

    semaphore = asyncio.Semaphore(100)

    async def limited(i: int) -> WsConn | None:
        async with semaphore:
            return await one(i)

    conns = [c for c in await asyncio.gather(*(limited(i) for i in range(args.clients))) if c]
    result.clients_welcomed = len(conns)
    result.rss_peak = rss_bytes(node.pid)
    welcomed = [users[c.index] for c in conns]
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{node.grpc_port}")
    stub = push_pb2_grpc.PushServiceStub(channel)
    payload = json.dumps({"round": round_no}).encode()
    await asyncio.gather(
        *(
            stub.Push(
                push_pb2.PushRequest(
                    user_ids=welcomed[i : i + BATCH],
                    payload=payload,
                    ttl_seconds=0 if args.online_only else None,
                ),
                metadata=AUTH,
                timeout=60,
            )
            for i in range(0, len(welcomed), BATCH)
        )
    )
    deadline = time.monotonic() + 60
    while len(received) < len(welcomed) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)  # polling a condition with a deadline
    await channel.close(grace=None)
    result.delivered = len(received)
    result.legit_done_at = time.monotonic()
    result.slow_open_while_legit = sum(1 for c in result.slow if c.closed_at is None)
    result.rss_peak = max(result.rss_peak, rss_bytes(node.pid))
    # 3. every slow socket closed by the node
    deadline = time.monotonic() + args.handshake_timeout + 60
    while any(c.closed_at is None for c in result.slow) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)  # polling a condition with a deadline
    drip_task.cancel()
    # 4. everyone leaves; the node settles
    for c in conns:
        c.close()
    for slow in result.slow:
        if slow.transport is not None:
            slow.transport.abort()
    deadline = time.monotonic() + 60
    while node.metric("pushsvc_connections") != 0 and time.monotonic() < deadline:
        await asyncio.sleep(0.1)  # polling a condition with a deadline
    await asyncio.sleep(args.settle)  # let closing handshakes and lingers finish
    result.rss_after = rss_bytes(node.pid)
    result.fds_after = node.fds()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--slow", type=int, default=1000, help="slow sockets per round")
    parser.add_argument("--silent", type=int, default=250, help="of which send nothing")
    parser.add_argument("--clients", type=int, default=1000, help="legitimate clients per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--drip", type=float, default=1.0, help="seconds between header lines")
    parser.add_argument("--handshake-timeout", type=float, default=10.0)
    parser.add_argument("--settle", type=float, default=5.0, help="seconds before measuring")
    parser.add_argument(
        "--new-users", action="store_true", help="new user ids every round (else the same)"
    )
    parser.add_argument(
        "--online-only",
        action="store_true",
        help="push online-only (ttl 0): nothing stored, so memory is the connections' alone",
    )
    parser.add_argument("--record", action="store_true", help="append to bench/RESULTS.md")
    args = parser.parse_args()
    raise_nofile()
    workdir = Path(tempfile.mkdtemp(prefix="pushsvc-slowloris-"))
    node = Node(
        workdir / "node",
        {"PUSHSVC_HANDSHAKE_TIMEOUT": str(args.handshake_timeout), "PUSHSVC_LOG_LEVEL": "info"},
    )
    node.start(timeout=60)
    try:
        rss_cold, fds_cold = rss_bytes(node.pid), node.fds()
        rounds = []
        for n in range(args.rounds):
            rounds.append(asyncio.run(run_round(node, args, n)))
            r = rounds[-1]
            print(
                f"round {n + 1}: {r.clients_welcomed}/{args.clients} welcomed, "
                f"{r.delivered} delivered, RSS after {r.rss_after / 2**20:.1f} MiB, "
                f"fds {r.fds_after}",
                flush=True,
            )
        rejected_408 = node.rejected("408")
        log = node.log()
    finally:
        code = node.stop(timeout=60)
    shutil.rmtree(workdir, ignore_errors=True)
    report(args, rounds, rss_cold, fds_cold, rejected_408, log, code)
    return 0


def report(
    args: argparse.Namespace,
    rounds: list[RoundResult],
    rss_cold: int,
    fds_cold: int,
    rejected_408: float,
    log: str,
    exit_code: int,
) -> None:
    mib = 2**20
    rows: list[list[object]] = []

    def row(name: str, values: list[object]) -> None:
        rows.append([name, *values])

    held = [[c.closed_at - c.opened for c in r.slow if c.closed_at is not None] for r in rounds]
    row("slow sockets (silent among them)", [f"{args.slow} ({args.silent})" for _ in rounds])
    row(
        "slow sockets still open when the legit work was done",
        [r.slow_open_while_legit for r in rounds],
    )
    row("slow sockets closed by the node", [len(h) for h in held])
    row("  held for, min (s)", [min(h) if h else float("nan") for h in held])
    row("  held for, p50 (s)", [percentile(h, 50) for h in held])
    row("  held for, max (s)", [max(h) if h else float("nan") for h in held])
    row(
        "  closed before the deadline",
        [sum(1 for x in h if x < args.handshake_timeout) for h in held],
    )
    row(
        "  answered 408 (JSON body)",
        [sum(1 for c in r.slow if c.answer.startswith(b"HTTP/1.1 408 ")) for r in rounds],
    )
    row("legitimate clients welcomed", [f"{r.clients_welcomed} / {args.clients}" for r in rounds])
    row("  connect p50 (ms)", [percentile(r.connect_seconds, 50) * 1000 for r in rounds])
    row("  connect p99 (ms)", [percentile(r.connect_seconds, 99) * 1000 for r in rounds])
    row("  got their message", [f"{r.delivered} / {r.clients_welcomed}" for r in rounds])
    row("node RSS peak (MiB)", [r.rss_peak / mib for r in rounds])
    row("node RSS after, all gone (MiB)", [r.rss_after / mib for r in rounds])
    row("node open fds after, all gone", [r.fds_after for r in rounds])
    body = table(["measure", *(f"round {i + 1}" for i in range(len(rounds)))], rows)
    baseline = rounds[0].rss_after
    drift = (rounds[-1].rss_after - baseline) / mib
    notes = [
        f"- node RSS at start {rss_cold / mib:.1f} MiB, {fds_cold} open fds; baseline = RSS "
        f"after round 1 (warm-up) {baseline / mib:.1f} MiB; after the last round "
        f"{rounds[-1].rss_after / mib:.1f} MiB ({drift:+.1f} MiB)",
        f'- pushsvc_handshakes_rejected_total{{status="408"}} = {rejected_408:.0f} '
        f"(slow sockets over all rounds: {args.slow * len(rounds)})",
        f"- tracebacks in the node's log: {log.count('Traceback')}; node exit code {exit_code}",
    ]
    intro = (
        f"One node, embedded store, handshake_timeout {args.handshake_timeout:g} s, other "
        f"budgets at their defaults, log level info; load generator in one asyncio process on "
        f"the same 2 cores. Per round: {args.slow} slow handshakes ({args.slow - args.silent} "
        f"send one header line every {args.drip:g} s, {args.silent} send nothing), then "
        f"{args.clients} legitimate clients connect (100 handshakes in flight) and get one "
        f"{'online-only' if args.online_only else 'stored'} pushed message each, which they "
        f"ack, while the slow sockets hang on; then everyone leaves and the node settles "
        f"{args.settle:g} s before RSS and fds are read."
    )
    text = intro + "\n\n" + body + "\n\n" + "\n".join(notes) + "\n"
    print(text)
    if args.record:
        append_results(
            f"Slowloris soak: {args.slow} slow handshakes + {args.clients} legitimate clients"
            + (", online-only pushes" if args.online_only else ""),
            text,
        )


if __name__ == "__main__":
    sys.exit(main())
