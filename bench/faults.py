"""A fleet under faults, checked message by message.

A fleet of real nodes on a real FerretDB, subscribers on WebSocket (one
connection per user, reconnecting with ``since`` to the next node whenever
their connection ends) and pushers sending stored pushes over gRPC, while the
schedule of faults runs: the database paused (SIGSTOP) and resumed, the
database killed and restarted, a node killed with SIGKILL and restarted, a node
drained with SIGTERM. Then the pushers stop and every subscriber is given time
to catch up. Checked:

- every push that answered OK reached every one of its recipients;
- on every connection, seqs arrived strictly increasing and above its ``since``
  (nothing twice on a connection, nothing out of order);
- how many of a drained node's clients were welcomed by another node, and how
  fast.

``python -m bench.faults --record`` runs the full size (3 nodes, 2,000
connections, 1,000 of them on the node that is drained) and appends the counts
to ``bench/RESULTS.md``; ``tests/test_faults.py`` runs a small form in
``make test``. ``--backend postgresql`` puts FerretDB on PostgreSQL (a private
cluster that stays up while FerretDB is paused, killed and restarted) instead of
SQLite; FerretDB 1.24's SQLite backend stops answering when restarted under a
full-size fleet's load (bench/RESULTS.md, "Faults … none completed").
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import grpc.aio
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from bench.common import append_results, raise_nofile, table
from bench.ferretdb import FerretDB
from bench.nodeproc import API_KEY, CLUSTER_KEY, JWT_SECRET, NodeProcess
from pushsvc.auth import mint_token
from pushsvc.store.mongo_database import FERRETDB_UPDATE_STATEMENTS
from pushsvc_client.v1 import push_pb2, push_pb2_grpc

AUTH = (("authorization", f"Bearer {API_KEY}"),)
SQLITE_POOL = 100  # FerretDB 1.24's connections to its SQLite files


@dataclass
class Plan:
    nodes: int = 3
    connections: int = 2000
    drained_share: float = 0.5  # of the connections, on the node that is drained
    push_rate: float = 20.0  # stored pushes per second (each to 1 to 3 users)
    warmup: float = 5.0
    pause_db: float = 20.0
    gap: float = 5.0  # seconds between faults
    settle: float = 60.0  # seconds after the last fault for everyone to catch up
    db_pool: int = 4  # MongoDB connections per node (see ferretdb_pool)
    backend: str = "sqlite"  # FerretDB's: sqlite or postgresql

    def ferretdb_pool(self) -> int:
        """FerretDB's connections to its backend that the fleet can never take all
        of: each statement of an update command in progress holds one
        (pushsvc/store/mongo_database.py), so the nodes' connections times
        FERRETDB_UPDATE_STATEMENTS, and some to spare. FerretDB's SQLite pool is
        fixed at 100, so there the nodes' pools must be small."""
        return self.held_at_most() + 16

    def held_at_most(self) -> int:
        return self.nodes * self.db_pool * FERRETDB_UPDATE_STATEMENTS

    welcome_deadline: float = 30.0  # a drained client must be welcomed elsewhere within this


@dataclass
class Conn:
    since: int
    seqs: list[int] = field(default_factory=list)


@dataclass
class Subscriber:
    user: str
    home: int  # the node it connects to first
    last: int = 0  # highest seq processed (what it reconnects with)
    received: set[int] = field(default_factory=set)
    conns: list[Conn] = field(default_factory=list)
    welcomes: int = 0
    refused: int = 0
    close_codes: dict[int, int] = field(default_factory=dict)
    drained_at: float | None = None  # monotonic time its connection got 1012
    rewelcomed_after: float | None = None  # seconds from that 1012 to the next welcome
    online: bool = False  # welcomed on a connection that is still open


@dataclass
class Report:
    plan: Plan
    pushes_ok: int = 0
    pushes_failed: int = 0
    deliveries_expected: int = 0
    missing: dict[str, list[int]] = field(default_factory=dict)
    out_of_order: list[str] = field(default_factory=list)
    at_or_below_since: list[str] = field(default_factory=list)
    drained_clients: int = 0
    drained_welcomed: int = 0
    drained_welcome_p50: float = 0.0
    drained_welcome_max: float = 0.0
    reconnects: int = 0
    close_codes: dict[int, int] = field(default_factory=dict)
    events: list[tuple[float, str]] = field(default_factory=list)
    stuck: str = ""  # stacks of a node that did not exit after SIGTERM
    metrics: dict[int, dict[str, float]] = field(default_factory=dict)  # live nodes, at the end
    t0: float = field(default_factory=time.monotonic)
    #: (user, seq) of every OK'd push -> (message id, which node answered and when)
    oks: dict[tuple[str, int], tuple[str, str]] = field(default_factory=dict)
    missing_offline: int = 0  # of the missing deliveries, to subscribers not online at the end
    diagnosis: list[str] = field(default_factory=list)  # what the store holds of what is missing

    @property
    def lost(self) -> int:
        return sum(len(v) for v in self.missing.values())

    @property
    def welcomed_share(self) -> float:
        return self.drained_welcomed / self.drained_clients if self.drained_clients else 0.0

    @property
    def ok(self) -> bool:
        """Nothing OK'd was lost, nothing came twice or out of order on a connection,
        and at least 95 % of the drained node's clients were welcomed elsewhere in time."""
        return (
            not self.missing
            and not self.out_of_order
            and self.drained_clients > 0
            and self.welcomed_share >= 0.95
            and not self.stuck
        )


class Fleet:
    """FerretDB and the nodes, started and hurt on schedule."""

    def __init__(self, plan: Plan, workdir: Path) -> None:
        self.plan = plan
        if plan.backend == "sqlite" and plan.held_at_most() >= SQLITE_POOL:
            raise SystemExit(
                f"{plan.nodes} nodes x {plan.db_pool} connections could take all of FerretDB's "
                f"SQLite pool ({SQLITE_POOL}): use a smaller --db-pool or --backend postgresql"
                " or --backend postgresql"
            )
        self.db = FerretDB(backend=plan.backend, pool=plan.ferretdb_pool())
        name = self.db_name = f"faults_{uuid.uuid4().hex[:8]}"
        self.nodes = [
            NodeProcess(
                workdir / f"node{i}",
                {
                    # A bounded pool per node: see Plan.ferretdb_pool.
                    "PUSHSVC_MONGO_URI": f"{self.db.uri}?maxPoolSize={plan.db_pool}",
                    "PUSHSVC_MONGO_DB": name,
                    "PUSHSVC_CLUSTER_KEY": CLUSTER_KEY,
                    "PUSHSVC_JWT_SECRET": JWT_SECRET,
                    "PUSHSVC_API_KEYS": API_KEY,
                    "PUSHSVC_LOG_LEVEL": "info",
                    "PUSHSVC_HEARTBEAT_INTERVAL": "1",
                    "PUSHSVC_DRAIN_TIMEOUT": "30",
                    "PUSHSVC_POSITION_CHECK": "5",
                    "PUSHSVC_SWEEP_INTERVAL": "5",
                },
            )
            for i in range(plan.nodes)
        ]
        for node in self.nodes:
            node.data_dir.mkdir(parents=True, exist_ok=True)
        self.down: set[int] = set()

    def start(self) -> None:
        self.db.start()
        for node in self.nodes:
            node.start(timeout=60)

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.db.resume()
        for node in self.nodes:
            if node.proc is not None and node.proc.poll() is None:
                node.kill()
        self.db.cleanup()

    def ws_url(self, i: int) -> str:
        return self.nodes[i].ws_url

    def grpc_addr(self, i: int) -> str:
        return self.nodes[i].grpc_addr


async def subscriber_loop(
    sub: Subscriber, fleet: Fleet, stop: asyncio.Event, report: Report
) -> None:
    """One user's device: connect, process, ack; on any end, reconnect elsewhere."""
    tok = mint_token(JWT_SECRET, sub.user, 24 * 3600)
    target = sub.home
    attempt = 0
    while not stop.is_set():
        url = f"{fleet.ws_url(target)}?token={tok}&since={sub.last}"
        conn = Conn(sub.last)
        pause = random.uniform(0.05, 0.3)
        try:
            async with connect(url, open_timeout=15, ping_interval=None, close_timeout=5) as ws:
                sub.conns.append(conn)
                async for raw in ws:
                    frame = json.loads(raw)
                    kind = frame.get("type")
                    if kind == "welcome":
                        sub.online = True
                        sub.welcomes += 1
                        attempt = 0
                        if sub.drained_at is not None and sub.rewelcomed_after is None:
                            sub.rewelcomed_after = time.monotonic() - sub.drained_at
                    elif kind == "message":
                        seq = int(frame["seq"])
                        conn.seqs.append(seq)
                        sub.received.add(seq)
                        if seq > sub.last:
                            sub.last = seq
                            await ws.send(json.dumps({"type": "ack", "seq": seq}))
                    if stop.is_set():
                        break
        except ConnectionClosed as exc:
            sub.online = False
            code = exc.rcvd.code if exc.rcvd else 1006
            sub.close_codes[code] = sub.close_codes.get(code, 0) + 1
            if code == 1012 and sub.drained_at is None:
                sub.drained_at = time.monotonic()
            if code == 1013:
                pause = random.uniform(1.0, 5.0)  # what the close reason advises
        except (TimeoutError, InvalidStatus, OSError):
            sub.online = False
            sub.refused += 1
            pause = min(5.0, 0.2 * 2 ** min(attempt, 5)) * random.uniform(0.5, 1.0)
        attempt += 1
        target = (target + 1) % len(fleet.nodes)  # the next node (a load balancer's job)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), pause)


async def pusher(
    fleet: Fleet,
    users: Sequence[str],
    rate: float,
    stop: asyncio.Event,
    report: Report,
    committed: dict[str, set[int]],
) -> None:
    """Stored pushes at ``rate``/s to random live nodes; OK'd seqs are recorded."""
    channels = [grpc.aio.insecure_channel(fleet.grpc_addr(i)) for i in range(len(fleet.nodes))]
    stubs = [push_pb2_grpc.PushServiceStub(c) for c in channels]
    n = 0

    async def one(stub: push_pb2_grpc.PushServiceStub, recipients: list[str], k: int) -> None:
        t0 = report.t0
        request = push_pb2.PushRequest(
            user_ids=recipients, payload=json.dumps({"k": k}).encode(), ttl_seconds=3600
        )
        try:
            response = await stub.Push(request, metadata=AUTH, timeout=30)
        except grpc.aio.AioRpcError:
            report.pushes_failed += 1
            return
        report.pushes_ok += 1
        for user, seq in zip(recipients, response.seqs, strict=True):
            committed.setdefault(user, set()).add(int(seq))
            report.oks[(user, int(seq))] = (
                response.message_id,
                f"node{stubs.index(stub)} t={time.monotonic() - t0:.1f}",
            )

    tasks: set[asyncio.Task[None]] = set()
    started = time.monotonic()
    try:
        while not stop.is_set():
            n += 1
            recipients = random.sample(list(users), k=min(len(users), random.randint(1, 3)))
            live = [i for i in range(len(fleet.nodes)) if i not in fleet.down]
            stub = stubs[random.choice(live or [0])]
            task = asyncio.create_task(one(stub, recipients, n))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            delay = started + n / rate - time.monotonic()
            if delay > 0:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
        if tasks:
            await asyncio.wait(tasks, timeout=60)
    finally:
        for c in channels:
            await c.close(None)


def _diagnose(
    fleet: Fleet, missing: dict[str, list[int]], subs: list[Subscriber], report: Report
) -> list[str]:
    """For each missing delivery: the OK'd message, its body as the store has it
    now, the user's inbox entries, and where the subscriber stands."""
    import pymongo

    client: pymongo.MongoClient[dict[str, object]] = pymongo.MongoClient(
        fleet.db.uri, serverSelectionTimeoutMS=5000
    )
    db = client[fleet.db_name]
    by_user = {s.user: s for s in subs}
    out = []

    def body_state(message_id: object) -> str:
        b = db.messages.find_one({"_id": message_id}, {"pending": 1, "by": 1, "t": 1})
        state = "gone" if b is None else "pending" if b.get("pending") else "ok"
        return state + (f"/{b.get('by')}" if b and b.get("by") else "")

    try:
        # Subscribers connected at the end first: theirs are the deliveries that
        # were due, not waiting for a client to get back in.
        users = sorted(missing, key=lambda u: not by_user[u].online)
        for user in users[:20]:
            seqs = missing[user]
            sub = by_user[user]
            entries = [
                f"{e['seq']}:{str(e['message_id'])[6:18]}:{body_state(e['message_id'])}"
                for e in db.inbox.find({"user_id": user}).sort("seq", 1)
            ]
            for seq in seqs[:3]:
                mid, how = report.oks.get((user, seq), ("?", "?"))
                out.append(
                    f"{user} missing {seq} (OK'd as {str(mid)[6:18]} by {how}, body "
                    f"{body_state(mid)}): last={sub.last}; inbox {' '.join(entries)};"
                    f" welcomes={sub.welcomes} closes={sub.close_codes}"
                    f" {'online' if sub.online else 'offline'} at the end"
                )
    finally:
        client.close()
    return out


def _metrics(node: NodeProcess) -> dict[str, float]:
    """The node's /metrics samples (labelled ones as name{labels})."""
    try:
        status, text = node.admin_get("/metrics")
    except OSError:
        return {}
    out: dict[str, float] = {}
    for line in text.splitlines() if status == 200 else ():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def _stacks(pid: int) -> str:
    """Where a process is stuck (py-spy, when installed)."""
    try:
        out = subprocess.run(
            [str(Path(sys.executable).parent / "py-spy"), "dump", "--pid", str(pid)],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"(no stacks: {exc})"
    return out.stdout + out.stderr


def _signal(node: NodeProcess, sig: int) -> None:
    assert node.proc is not None
    node.proc.send_signal(sig)


async def faults(fleet: Fleet, plan: Plan, report: Report, started: float) -> None:
    """The schedule: pause the database, kill it, kill a node, drain a node."""
    loop = asyncio.get_running_loop()

    def note(what: str) -> None:
        report.events.append((round(time.monotonic() - started, 1), what))

    await asyncio.sleep(plan.warmup)  # the schedule's timing, not synchronisation
    note(f"database paused for {plan.pause_db:g} s")
    fleet.db.pause()
    await asyncio.sleep(plan.pause_db)
    fleet.db.resume()
    note("database resumed")
    await asyncio.sleep(plan.gap)
    note("database killed (SIGKILL) and restarted")
    await loop.run_in_executor(None, fleet.db.kill)
    await loop.run_in_executor(None, fleet.db.start)
    await asyncio.sleep(plan.gap)
    victim = len(fleet.nodes) - 1
    note(f"node {victim} killed (SIGKILL)")
    fleet.down.add(victim)
    await loop.run_in_executor(None, fleet.nodes[victim].kill)
    await asyncio.sleep(plan.gap)
    try:
        await loop.run_in_executor(None, fleet.nodes[victim].start, 180)
        note(f"node {victim} restarted")
    except TimeoutError:
        # Still starting (its store unreachable): the run goes on and counts what follows.
        note(f"node {victim} restarted, not ready within 180 s")
    fleet.down.discard(victim)
    await asyncio.sleep(plan.gap)
    note("node 0 drained (SIGTERM)")
    fleet.down.add(0)
    _signal(fleet.nodes[0], signal.SIGTERM)
    proc = fleet.nodes[0].proc
    assert proc is not None
    try:
        code = await loop.run_in_executor(None, proc.wait, 60)
    except subprocess.TimeoutExpired:
        report.stuck = _stacks(proc.pid)
        note("node 0 did not exit within 60 s of SIGTERM: killed")
        proc.kill()
        code = await loop.run_in_executor(None, proc.wait)
    note(f"node 0 exited with {code}")


async def run(plan: Plan, workdir: Path) -> Report:
    raise_nofile()
    report = Report(plan)
    fleet = Fleet(plan, workdir)
    await asyncio.get_running_loop().run_in_executor(None, fleet.start)
    try:
        drained = int(plan.connections * plan.drained_share)
        subs = [
            Subscriber(
                f"f-{i}-{uuid.uuid4().hex[:6]}",
                0 if i < drained else 1 + i % max(1, plan.nodes - 1),
            )
            for i in range(plan.connections)
        ]
        committed: dict[str, set[int]] = {}
        stop_subs, stop_push = asyncio.Event(), asyncio.Event()
        started = report.t0 = time.monotonic()
        sub_tasks = [
            asyncio.create_task(subscriber_loop(s, fleet, stop_subs, report)) for s in subs
        ]
        push_task = asyncio.create_task(
            pusher(fleet, [s.user for s in subs], plan.push_rate, stop_push, report, committed)
        )
        await faults(fleet, plan, report, started)
        await asyncio.sleep(plan.gap)
        stop_push.set()
        await push_task
        report.events.append((round(time.monotonic() - started, 1), "pushers stopped"))
        # Everyone gets the time to catch up: wait until each has what was OK'd.
        deadline = time.monotonic() + plan.settle
        while time.monotonic() < deadline:
            if all(committed.get(s.user, set()) <= s.received for s in subs):
                break
            await asyncio.sleep(0.2)  # polling a condition with a deadline
        report.events.append((round(time.monotonic() - started, 1), "checked"))
        report.metrics = {i: _metrics(n) for i, n in enumerate(fleet.nodes) if i not in fleet.down}
        stop_subs.set()
        await asyncio.wait(sub_tasks, timeout=30)
        for task in sub_tasks:
            task.cancel()
        _check(report, subs, committed, plan)
        if report.missing:
            report.diagnosis = _diagnose(fleet, report.missing, subs, report)
    finally:
        await asyncio.get_running_loop().run_in_executor(None, fleet.stop)
    return report


def _check(
    report: Report, subs: list[Subscriber], committed: dict[str, set[int]], plan: Plan
) -> None:
    for s in subs:
        want = committed.get(s.user, set())
        report.deliveries_expected += len(want)
        missing = sorted(want - s.received)
        if missing:
            report.missing[s.user] = missing
            if not s.online:
                report.missing_offline += len(missing)
        for c in s.conns:
            if any(b <= a for a, b in zip(c.seqs, c.seqs[1:], strict=False)):
                report.out_of_order.append(f"{s.user}: {c.seqs}")
            if c.seqs and c.seqs[0] <= c.since:
                report.at_or_below_since.append(f"{s.user}: since {c.since}, got {c.seqs[:5]}")
        report.reconnects += max(0, s.welcomes - 1)
        for code, n in s.close_codes.items():
            report.close_codes[code] = report.close_codes.get(code, 0) + n
        if s.drained_at is not None:
            report.drained_clients += 1
            if s.rewelcomed_after is not None and s.rewelcomed_after <= plan.welcome_deadline:
                report.drained_welcomed += 1
    waits = sorted(s.rewelcomed_after for s in subs if s.rewelcomed_after is not None)
    if waits:
        report.drained_welcome_p50 = waits[len(waits) // 2]
        report.drained_welcome_max = waits[-1]


def render(report: Report) -> str:
    p = report.plan
    share = report.welcomed_share
    rows = [
        ("nodes / connections", f"{p.nodes} / {p.connections}"),
        ("stored pushes answered OK / failed", f"{report.pushes_ok:,} / {report.pushes_failed:,}"),
        ("deliveries owed (OK'd push, per recipient)", f"{report.deliveries_expected:,}"),
        ("deliveries missing at the end", f"{report.lost:,}"),
        (
            "…of them to subscribers not connected at the end (never back in)",
            f"{report.missing_offline:,}",
        ),
        ("connections with a seq out of order or twice", f"{len(report.out_of_order)}"),
        (
            "connections replaying a seq at or below their since (the client dedupes)",
            f"{len(report.at_or_below_since)}",
        ),
        ("clients of the drained node (got 1012)", f"{report.drained_clients:,}"),
        (
            f"…welcomed by another node within {p.welcome_deadline:g} s",
            f"{report.drained_welcomed:,} ({share:.1%})",
        ),
        (
            "…time to that welcome, p50 / max (s)",
            f"{report.drained_welcome_p50:.2f} / {report.drained_welcome_max:.2f}",
        ),
        ("reconnects (all causes)", f"{report.reconnects:,}"),
        ("close codes seen", ", ".join(f"{c}: {n}" for c, n in sorted(report.close_codes.items()))),
    ]
    for i, m in sorted(report.metrics.items()):
        shed = {
            k.split('"')[1]: int(v)
            for k, v in m.items()
            if k.startswith("pushsvc_connects_shed_total{")
        }
        rows.append((f"node {i}: connections shed with 1013, by why", str(shed or "none")))
    timeline = "\n".join(f"- t={t:g} s: {what}" for t, what in report.events)
    out = table(["measure", "value"], rows) + "\n\nTimeline:\n\n" + timeline + "\n"
    if report.diagnosis:
        out += (
            "\nMissing deliveries, first of each user (`seq:state/writer` of the user's inbox "
            "after what it processed):\n\n" + "\n".join(f"- {d}" for d in report.diagnosis) + "\n"
        )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--push-rate", type=float, default=20.0)
    parser.add_argument("--pause-db", type=float, default=20.0)
    parser.add_argument("--settle", type=float, default=60.0)
    parser.add_argument(
        "--db-pool",
        type=int,
        help="MongoDB connections per node (default 4 on SQLite, 16 on PostgreSQL)",
    )
    parser.add_argument(
        "--drained-share", type=float, default=0.5, help="of the connections, on the drained node"
    )
    parser.add_argument(
        "--backend", choices=("sqlite", "postgresql"), default="sqlite", help="FerretDB's backend"
    )
    parser.add_argument("--logs", type=Path, help="copy the nodes' logs to this directory")
    parser.add_argument("--record", action="store_true", help="append to bench/RESULTS.md")
    args = parser.parse_args()
    plan = Plan(
        nodes=args.nodes,
        connections=args.connections,
        push_rate=args.push_rate,
        pause_db=args.pause_db,
        settle=args.settle,
        drained_share=args.drained_share,
        backend=args.backend,
        db_pool=args.db_pool or (16 if args.backend == "postgresql" else 4),
    )
    import tempfile

    with tempfile.TemporaryDirectory(prefix="pushsvc-faults-") as tmp:
        report = asyncio.run(run(plan, Path(tmp)))
        if args.logs:
            args.logs.mkdir(parents=True, exist_ok=True)
            for log in Path(tmp).glob("*.log"):
                shutil.copy(log, args.logs / log.name)
    body = render(report)
    print(body)
    if args.record:
        drained = int(plan.connections * plan.drained_share)
        append_results(
            f"Faults: {plan.nodes}-node fleet, {plan.connections:,} connections, "
            f"FerretDB on {'PostgreSQL' if plan.backend == 'postgresql' else 'SQLite'}",
            "FerretDB paused (SIGSTOP) then killed and restarted, a node killed with SIGKILL "
            f"and restarted, the node holding {drained:,} of the connections drained with "
            f"SIGTERM, all under continuous stored pushes ({plan.push_rate:g}/s, each to 1 to "
            "3 users); subscribers reconnect with `since` to the next node.\n\n" + body,
        )
    return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
